"""TLS as clients meet it: Python's ssl with the websockets library, and the page in headless
Chromium over https://, against `cloister serve --tls-cert --tls-key` (a certificate the test
makes with openssl, RSA and ECDSA)."""

import base64
import json
import os
import re
import shutil
import ssl
import subprocess
import tempfile
import time
import unittest

from served import ROOT, SCREEN, USER, PASSWORD, Served

CHROMIUM = "/usr/bin/chromium"
SHOTS = os.path.join(ROOT, ".build", "browser-screenshots")


def make_pair(directory, newkey):
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", newkey, "-nodes", "-keyout", key, "-out", cert, "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    os.chmod(key, 0o600)
    return cert, key


class TLSSessionTests(unittest.TestCase):
    """A session over wss:// with Python's ssl (the chain verified against the certificate,
    TLS 1.3 and HTTP/1.1 by ALPN) for each key type."""

    def run_session(self, newkey):
        import websockets.sync.client
        directory = tempfile.mkdtemp(prefix="cloister-tls-")
        try:
            if newkey == "ec":
                params = os.path.join(directory, "p256.pem")
                subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-out", params], check=True, capture_output=True)
                newkey = "ec:" + params
            cert, key = make_pair(directory, newkey)
            server = Served(workers=1, extra=("--tls-cert", cert, "--tls-key", key))
            try:
                self.assertTrue(server.url.startswith("https://"), server.url)
                context = ssl.create_default_context(cafile=cert)
                context.set_alpn_protocols(["http/1.1"])
                token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                url = server.url.replace("https://", "wss://").rstrip("/") + "/ws"
                with websockets.sync.client.connect(url, ssl=context, subprotocols=["tty"], open_timeout=10,
                                                    additional_headers={"Authorization": "Basic " + token}) as ws:
                    tls = ws.socket
                    self.assertEqual(tls.version(), "TLSv1.3")
                    self.assertEqual(tls.selected_alpn_protocol(), "http/1.1")
                    ws.send(json.dumps({"AuthToken": token, "columns": 80, "rows": 24}))
                    ws.send(b"0echo tls-$((6*7))\r")
                    seen, deadline = b"", time.time() + 10
                    while b"tls-42" not in seen:
                        self.assertLess(time.time(), deadline, seen)
                        message = ws.recv(timeout=10)
                        if isinstance(message, bytes) and message[:1] == b"0":
                            seen += message[1:]
                workers = server.control("workers")["workers"]
                self.assertGreaterEqual(sum(w.get("signatures", 0) for w in workers), 1, workers)
                self.assertNotIn("sandbox violation", server.output())
            finally:
                server.close()
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def test_rsa(self):
        self.run_session("rsa:2048")

    def test_ecdsa(self):
        self.run_session("ec")


class PageOverHTTPSTests(unittest.TestCase):
    """The page in Chromium over https://: it loads, logs in and runs a command."""

    def test_the_page_works_over_https(self):
        if not os.access(CHROMIUM, os.X_OK):
            self.skipTest(f"{CHROMIUM} is missing")
        from playwright.sync_api import sync_playwright
        directory = tempfile.mkdtemp(prefix="cloister-tls-")
        cert, key = make_pair(directory, "rsa:2048")
        server = Served(workers=1, extra=("--tls-cert", cert, "--tls-key", key))
        playwright = sync_playwright().start()
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context(ignore_https_errors=True, http_credentials={"username": USER, "password": PASSWORD})
        page = context.new_page()
        try:
            page.goto(server.url)
            deadline = time.time() + 15
            while page.evaluate("document.body.dataset.state") != "connected":
                self.assertLess(time.time(), deadline, "the page did not connect over wss://")
                time.sleep(0.05)
            page.keyboard.type("echo https-$((6*7))\n")
            deadline = time.time() + 10
            while not any(re.search(r"^https-42$", row) for row in page.evaluate(SCREEN)["rows"]):
                self.assertLess(time.time(), deadline, "\n".join(page.evaluate(SCREEN)["rows"]))
                time.sleep(0.05)
            self.assertEqual(page.evaluate("location.protocol"), "https:")
            os.makedirs(SHOTS, exist_ok=True)
            page.screenshot(path=os.path.join(SHOTS, "page-over-https.png"))
            self.assertNotIn("sandbox violation", server.output())
        finally:
            context.close()
            browser.close()
            playwright.stop()
            server.close()
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
