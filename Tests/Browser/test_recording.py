"""A session typed through the page of a server that records (--record --record-input): the
page shows the notice first; `asciinema cat` of the recording reproduces the terminal's output
the page received, which the page shows; a password read with `read -s` is not in it; the
window's resize is; `cloister recordings verify` passes it."""

import glob
import json
import os
import shutil
import subprocess
import tempfile
import time

import test_page
from served import ROOT, Served, executable
from test_page import SHOTS, PageTestCase

ASCIINEMA = os.path.join(ROOT, ".build", "browser-venv", "bin", "asciinema")


def setUpModule():
    test_page.setUpModule()


def tearDownModule():
    test_page.tearDownModule()


class RecordedPageTests(PageTestCase):
    @classmethod
    def setUpClass(cls):
        cls.directory = tempfile.mkdtemp(prefix="cloister-recorded-page-")
        cls.recordings = os.path.join(cls.directory, "recordings")
        cls.server = Served(extra=("--record", cls.recordings, "--record-input"))

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        shutil.rmtree(cls.directory, ignore_errors=True)

    def test_the_page_says_it_is_recorded_and_the_recording_holds_what_it_showed(self):
        page = self.open_page(size=(1000, 600))
        self.wait_for_state(page, "connected")
        self.wait_for_row(page, r"^This session is recorded\.$")
        os.makedirs(SHOTS, exist_ok=True)
        page.screenshot(path=os.path.join(SHOTS, "recorded-notice.png"))
        self.run_in_shell(page, "echo page-rec-$((6*7)) caf\u00e9")
        self.wait_for_row(page, r"^page-rec-42 café$")
        page.set_viewport_size({"width": 700, "height": 400})
        self.wait_until(page, "window.cloister.terminal.cols < 80")
        columns, rows = page.evaluate("[window.cloister.terminal.cols, window.cloister.terminal.rows]")
        self.run_in_shell(page, "read -s -p 'Password: ' PW; echo; echo got-${#PW}")
        self.wait_for_row(page, r"Password: ")
        time.sleep(0.3)
        page.keyboard.type("page-secret-9\n")
        self.wait_for_row(page, r"^got-13$")
        self.run_in_shell(page, "exit 3")
        self.wait_until(page, "document.body.dataset.state !== 'connected'")

        deadline = time.time() + 15
        while time.time() < deadline:
            files = glob.glob(os.path.join(self.recordings, "*.cast"))
            if files:
                with open(files[0], encoding="utf-8") as f:
                    if "cloister-chain-end" in f.read():
                        break
            time.sleep(0.1)
        self.assertEqual(len(files), 1, files)
        with open(files[0], encoding="utf-8") as f:
            text = f.read()
        self.assertNotIn("page-secret", text, "the password typed with echo off is not recorded")
        events = [json.loads(line) for line in text.splitlines()[1:]]
        self.assertIn([columns, rows], [[int(n) for n in e[2].split("x")] for e in events if e[1] == "r"], "the resize is recorded")
        typed = "".join(e[2] for e in events if e[1] == "i")
        self.assertIn("echo page-rec-$((6*7)) café\r", typed)
        self.assertIn(["m", "exit status 3"], [e[1:] for e in events])
        verified = subprocess.run([executable(), "recordings", "verify", self.recordings], capture_output=True, text=True)
        self.assertEqual(verified.returncode, 0, verified.stdout + verified.stderr)
        if os.access(ASCIINEMA, os.X_OK):
            cat = subprocess.run([ASCIINEMA, "cat", files[0]], capture_output=True, env={"LANG": "C.UTF-8", "HOME": self.recordings})
            self.assertEqual(cat.returncode, 0, cat.stderr)
            output = "".join(e[2] for e in events if e[1] == "o").encode()
            self.assertEqual(cat.stdout, output)
            self.assertIn(b"page-rec-42 caf\xc3\xa9\r\n", cat.stdout)
            self.assertTrue(cat.stdout.startswith(b"\x1b[1mThis session is recorded.\x1b[0m\r\n"))
        self.assertEqual([p for p in self.problems if "favicon" not in p], [])
