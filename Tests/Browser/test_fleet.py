"""The page behind deploy/haproxy-fleet.cfg as shipped, its addresses changed to two hosts on
loopback (h3's to a port nobody listens on): a session's page resumes on its own host when its
worker dies; when its host dies, the page says that the host holding the session cannot be
reached (told by the other host, where the balancer sent the resume)."""

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

import test_page
from served import ROOT, Served
from test_page import SHOTS, PageTestCase

HAPROXY = "/usr/sbin/haproxy"
CONFIG = os.path.join(ROOT, "deploy", "haproxy-fleet.cfg")


def setUpModule():
    test_page.setUpModule()


def tearDownModule():
    test_page.tearDownModule()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FleetPageTests(PageTestCase):
    @classmethod
    def setUpClass(cls):
        if not os.access(HAPROXY, os.X_OK):
            raise unittest.SkipTest(f"{HAPROXY} is missing: `make browser-deps` installs Debian's haproxy")
        cls.health = {name: free_port() for name in ("h1", "h2")}
        cls.hosts = {name: Served(extra=("--host-id", name, "--health-listen", f"127.0.0.1:{port}"))
                     for name, port in cls.health.items()}
        cls.server = cls.hosts["h1"]  # what PageTestCase stops; h2 is stopped below
        cls.directory = tempfile.mkdtemp(prefix="cloister-fleet-page-")
        cls.port = free_port()
        with open(CONFIG) as f:
            config = f.read()
        replacements = [("bind :443 ssl crt /etc/haproxy/cloister.pem alpn http/1.1", f"bind 127.0.0.1:{cls.port}"),
                        ("inter 1s fall 2 rise 2", "inter 200ms fall 1 rise 1"),
                        ("log stdout format raw local0 info", "log stderr format raw local0 warning"),
                        ("10.0.0.3:7681 check port 7682", f"127.0.0.1:{free_port()} check port {free_port()}")]
        for i, name in enumerate(("h1", "h2")):
            port = re.search(r":(\d+)/", cls.hosts[name].url).group(1)
            replacements.append((f"10.0.0.{i + 1}:7681 check port 7682", f"127.0.0.1:{port} check port {cls.health[name]}"))
        for old, new in replacements:
            assert old in config, f"the shipped configuration no longer has {old!r}"
            config = config.replace(old, new)
        path = os.path.join(cls.directory, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(config)
        cls.log = open(os.path.join(cls.directory, "haproxy.log"), "wb")
        cls.balancer = subprocess.Popen([HAPROXY, "-db", "-f", path], stdout=cls.log, stderr=subprocess.STDOUT)
        cls.url = f"http://127.0.0.1:{cls.port}/"
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", cls.port), timeout=1):
                    break
            except OSError:
                time.sleep(0.05)
        time.sleep(0.5)  # both hosts' first checks

    @classmethod
    def tearDownClass(cls):
        cls.balancer.send_signal(signal.SIGTERM)
        cls.balancer.wait(10)
        cls.log.close()
        shutil.rmtree(cls.directory, ignore_errors=True)
        cls.hosts["h2"].close()
        super().tearDownClass()

    def session_of(self, page):
        page.wait_for_function("() => window.cloister && window.cloister.session && window.cloister.session.id")
        return page.evaluate("() => window.cloister.session.id")

    def test_the_page_resumes_on_its_host_and_says_when_its_host_is_gone(self):
        page = self.open_page(self.url)
        session = self.session_of(page)
        host = session.split(".")[0]
        self.assertIn(host, ("h1", "h2"))
        page.keyboard.type("echo pid=$$.\n")
        shell = self.wait_for_row(page, r"pid=(\d+)\.").group(1)

        # Its worker dies: the page resumes through the balancer on its own host, same shell.
        for pid in self.hosts[host].serving_worker_pids():
            os.kill(pid, signal.SIGKILL)
        page.wait_for_function("() => document.body.dataset.state === 'connected'", timeout=20000)
        page.keyboard.type("clear; echo again=$$.\n")
        self.assertEqual(self.wait_for_row(page, r"again=(\d+)\.", timeout=20).group(1), shell)

        # Its host dies: the page says why it cannot go on, and keeps trying.
        self.kill_host(host)
        page.wait_for_function(
            "() => document.getElementById('state').textContent.includes('the host that holds this session cannot be reached')",
            timeout=30000)
        label = page.evaluate("() => document.getElementById('state').textContent")
        self.assertIn("reconnecting in", label)
        os.makedirs(SHOTS, exist_ok=True)
        page.screenshot(path=os.path.join(SHOTS, "fleet-host-gone.png"))
        self.assertEqual(self.problems, [], "no script error")

    def kill_host(self, name):
        """Every process of that host (the supervisor, its roles, its shells): switched off."""
        served = self.hosts[name]
        root = served.process.pid
        pids = {root}
        for _ in range(3):
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    try:
                        with open(f"/proc/{entry}/stat") as f:
                            parent = int(f.read().rsplit(")", 1)[1].split()[1])
                    except (OSError, ValueError, IndexError):
                        continue
                    if parent in pids:
                        pids.add(int(entry))
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        served.process.wait()
