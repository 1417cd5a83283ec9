"""deploy/nginx-cloister.conf as shipped, with only its addresses and certificate changed:
Debian's nginx terminates TLS with a certificate made here, and Chromium drives a session
through it to `cloister serve --base-path /terminal`."""

import base64
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

from playwright.sync_api import sync_playwright

from served import ROOT, SCREEN, USER, PASSWORD, Served
from test_page import CHROMIUM

NGINX = "/usr/sbin/nginx"
EXAMPLE = os.path.join(ROOT, "deploy", "nginx-cloister.conf")


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NginxTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.access(NGINX, os.X_OK):
            raise unittest.SkipTest(f"{NGINX} is missing: `make browser-deps` installs Debian's nginx")
        cls.server = Served(extra=("--base-path", "/terminal"))
        upstream = re.search(r"http://(127\.0\.0\.1:\d+)", cls.server.url).group(1)
        cls.directory = tempfile.mkdtemp(prefix="cloister-nginx-")
        key, cert = os.path.join(cls.directory, "key.pem"), os.path.join(cls.directory, "cert.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost", "-keyout", key, "-out", cert],
                       check=True, capture_output=True)
        cls.port = free_port()
        with open(EXAMPLE) as f:
            site = f.read()
        # Only what names this machine changes; every proxy setting is the example's own.
        for old, new in [("listen 443 ssl;", f"listen 127.0.0.1:{cls.port} ssl;"), ("listen [::]:443 ssl;", ""),
                         ("server_name terminal.example.org;", "server_name localhost;"),
                         ("/etc/ssl/certs/terminal.example.org.pem", cert),
                         ("/etc/ssl/private/terminal.example.org.key", key),
                         ("proxy_pass http://127.0.0.1:7681;", f"proxy_pass http://{upstream};")]:
            assert old in site, f"the example no longer has {old!r}"
            site = site.replace(old, new)
        with open(os.path.join(cls.directory, "site.conf"), "w") as f:
            f.write(site)
        with open(os.path.join(cls.directory, "nginx.conf"), "w") as f:
            f.write(f"""worker_processes 1;
pid {cls.directory}/nginx.pid;
error_log {cls.directory}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {cls.directory}/access.log;
    client_body_temp_path {cls.directory}/body;
    proxy_temp_path {cls.directory}/proxy;
    include {cls.directory}/site.conf;
}}
""")
        os.chmod(cls.directory, 0o755)  # nginx's worker runs as nobody and reads nothing else here
        cls.nginx = subprocess.Popen([NGINX, "-p", cls.directory, "-c", os.path.join(cls.directory, "nginx.conf"),
                                      "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 10
        while not os.path.exists(os.path.join(cls.directory, "nginx.pid")):
            if cls.nginx.poll() is not None or time.time() > deadline:
                raise RuntimeError("nginx did not start: " + cls.nginx.stderr.read().decode(errors="replace"))
            time.sleep(0.05)
        # Chromium trusts this one certificate by its key's hash (for the page and the
        # WebSocket alike), and nothing else it would otherwise refuse.
        public_key = subprocess.run(["openssl", "x509", "-in", cert, "-noout", "-pubkey"], check=True, capture_output=True).stdout
        der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=public_key, check=True, capture_output=True).stdout
        spki = base64.b64encode(hashlib.sha256(der).digest()).decode()
        cls.playwright = sync_playwright().start()
        cls.browser = cls.playwright.chromium.launch(executable_path=CHROMIUM,
                                                     args=["--no-sandbox", f"--ignore-certificate-errors-spki-list={spki}"])

    @classmethod
    def tearDownClass(cls):
        cls.browser.close()
        cls.playwright.stop()
        cls.nginx.send_signal(signal.SIGQUIT)
        cls.nginx.wait(10)
        cls.server.close()
        shutil.rmtree(cls.directory, ignore_errors=True)

    def rows(self, page):
        return page.evaluate(SCREEN)["rows"]

    def test_a_session_through_nginx_with_tls(self):
        context = self.browser.new_context(http_credentials={"username": USER, "password": PASSWORD},
                                           viewport={"width": 900, "height": 500})
        try:
            page = context.new_page()
            # The bare prefix redirects to prefix/, as the example says.
            page.goto(f"https://localhost:{self.port}/terminal")
            self.assertEqual(page.url, f"https://localhost:{self.port}/terminal/")
            deadline = time.time() + 15
            while page.evaluate("document.body.dataset.state") != "connected":
                self.assertLess(time.time(), deadline, "not connected through nginx; its access log:\n" + self.log("access.log")
                                + "\ncloister:\n" + self.server.output()[-3000:])
                time.sleep(0.05)
            page.keyboard.type("echo through-$((6*7)) $(tty)\n")
            deadline = time.time() + 10
            while not any(re.match(r"^through-42 /dev/pts/\d+$", row) for row in self.rows(page)):
                self.assertLess(time.time(), deadline, "\n".join(self.rows(page)))
                time.sleep(0.05)
            self.assertEqual(page.evaluate("location.protocol"), "https:")
        finally:
            context.close()
        # The WebSocket went through nginx: once closed, its access log has the upgrade (101)
        # under the prefix.
        deadline = time.time() + 10
        while not re.search(r'"GET /terminal/ws HTTP/1\.1" 101 ', self.log("access.log")):
            self.assertLess(time.time(), deadline, self.log("access.log"))
            time.sleep(0.05)

    def log(self, name):
        try:
            with open(os.path.join(self.directory, name), errors="replace") as f:
                return f.read()
        except OSError:
            return ""


if __name__ == "__main__":
    unittest.main()
