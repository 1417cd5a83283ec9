"""Files through the terminal, as a user meets it: trzsz's `trz` and `tsz` (from PyPI, in the
test's virtualenv) and ZMODEM's `rz` and `sz` (lrzsz, from Debian) in the shell of a real
`cloister serve`, the page in headless Chromium answering them, files picked in the browser's
chooser and saved as downloads."""

import hashlib
import os
import re
import shutil
import signal
import tempfile
import time
import unittest

from served import ROOT, SCREEN, USER, PASSWORD, Served

CHROMIUM = "/usr/bin/chromium"
SHOTS = os.path.join(ROOT, ".build", "browser-screenshots")
BIN = os.path.join(ROOT, ".build", "browser-venv", "bin")


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def setUpModule():
    global playwright, browser
    if not os.access(CHROMIUM, os.X_OK):
        raise unittest.SkipTest(f"{CHROMIUM} is missing")
    if not os.access(os.path.join(BIN, "trz"), os.X_OK) or not os.access("/usr/bin/rz", os.X_OK):
        raise unittest.SkipTest("trzsz or lrzsz is missing: `make browser-deps` installs them")
    from playwright.sync_api import sync_playwright
    playwright = sync_playwright().start()
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])


def tearDownModule():
    browser.close()
    playwright.stop()


class TrzszTests(unittest.TestCase):
    # The shell's commands: trzsz's by default, ZMODEM's in the subclass; and how the cancel
    # test cancels (the bar's button, or Ctrl+C).
    upload, download = "trz", "tsz"
    cancel_with_key = False

    @classmethod
    def setUpClass(cls):
        cls.server = Served()
        cls.directory = tempfile.mkdtemp(prefix="cloister-transfer-")
        # A name with spaces and UTF-8, 20 MiB that do not compress.
        cls.name = "données à envoyer.bin"
        cls.source = os.path.join(tempfile.mkdtemp(prefix="cloister-source-"), cls.name)
        with open(cls.source, "wb") as f:
            f.write(os.urandom(20 << 20))
        # Several files at once: a second, small one beside it.
        cls.second = os.path.join(os.path.dirname(cls.source), "second file.txt")
        with open(cls.second, "wb") as f:
            f.write(b"the second file\n" * 100)
        cls.big_ring = Served(extra=("--session-ring", str(64 << 20)))

    @classmethod
    def tearDownClass(cls):
        cls.server.close()
        cls.big_ring.close()
        shutil.rmtree(cls.directory, ignore_errors=True)
        shutil.rmtree(os.path.dirname(cls.source), ignore_errors=True)

    def setUp(self):
        self.pages = []

    def tearDown(self):
        result = self._outcome.result
        failed = any(test is self for test, _ in result.failures + result.errors)
        for i, page in enumerate(self.pages):
            if failed:
                os.makedirs(SHOTS, exist_ok=True)
                page.screenshot(path=os.path.join(SHOTS, f"{self.id().split('.')[-1]}-{i}.png"))
            page.context.close()

    def open_page(self, url=None):
        context = browser.new_context(http_credentials={"username": USER, "password": PASSWORD},
                                      viewport={"width": 1100, "height": 650}, accept_downloads=True)
        page = context.new_page()
        page.goto(url or self.server.url)
        self.pages.append(page)
        self.wait_until(page, "document.body.dataset.state === 'connected' || document.body.dataset.state === 'readonly'")
        return page

    def wait_until(self, page, expression, timeout=30):
        deadline = time.time() + timeout
        while not page.evaluate(expression):
            self.assertLess(time.time(), deadline, f"not true within {timeout} s: {expression}")
            time.sleep(0.05)

    def wait_for_row(self, page, pattern, timeout=60):
        deadline = time.time() + timeout
        while not any(re.search(pattern, row) for row in page.evaluate(SCREEN)["rows"]):
            self.assertLess(time.time(), deadline, f"no row matches {pattern!r}:\n" + "\n".join(page.evaluate(SCREEN)["rows"]))
            time.sleep(0.1)

    def wait_for_prompt(self, page, timeout=60):
        """The shell's prompt on the last row that has text, and then a moment: trzsz reads
        and drops its input for half a second as it ends."""
        deadline = time.time() + timeout
        while True:
            rows = [row for row in page.evaluate(SCREEN)["rows"] if row.strip()]
            if rows and re.search(r"[#$] ?$", rows[-1]):
                break
            self.assertLess(time.time(), deadline, "no prompt:\n" + "\n".join(rows))
            time.sleep(0.1)
        time.sleep(1)

    def shell(self, page, command):
        page.keyboard.type(command + "\n")

    def test_upload_and_download_keep_every_byte(self):
        page = self.open_page()
        self.shell(page, f"cd {self.directory} && export PATH={BIN}:$PATH && echo ready-$((6*7))")
        self.wait_for_row(page, r"^ready-42$")
        # Upload: trz opens the chooser.
        with page.expect_file_chooser() as chooser:
            self.shell(page, self.upload)
        chooser.value.set_files([self.source, self.second])
        self.wait_until(page, "document.querySelector('#transfer progress').value > 0", timeout=30)
        os.makedirs(SHOTS, exist_ok=True)
        page.screenshot(path=os.path.join(SHOTS, f"transfer-progress-{self.upload}.png"))
        uploaded = os.path.join(self.directory, self.name)
        second = os.path.join(self.directory, "second file.txt")
        deadline = time.time() + 120
        while not (os.path.exists(uploaded) and os.path.getsize(uploaded) == 20 << 20
                   and os.path.exists(second) and os.path.getsize(second) == os.path.getsize(self.second)
                   and page.evaluate("document.getElementById('transfer').hidden")):
            self.assertLess(time.time(), deadline, "the upload did not finish:\n" + "\n".join(page.evaluate(SCREEN)["rows"]))
            time.sleep(0.2)
        self.assertEqual(sha256(uploaded), sha256(self.source))
        self.assertEqual(sha256(second), sha256(self.second))
        self.wait_for_prompt(page)
        self.shell(page, "echo up-$((6*7))")
        self.wait_for_row(page, r"^up-42$")
        # Download it back: tsz saves it in the browser.
        # Typed as a glob: the keyboard types ASCII; the name itself is UTF-8 with spaces.
        with page.expect_download(timeout=120000) as download:
            self.shell(page, self.download + " ./donn*.bin")
        self.assertEqual(download.value.suggested_filename, self.name)
        saved = os.path.join(self.directory, "downloaded.bin")
        download.value.save_as(saved)
        self.assertEqual(sha256(saved), sha256(self.source))
        self.wait_for_prompt(page)
        self.shell(page, "echo down-$((6*7))")
        self.wait_for_row(page, r"^down-42$")
        # Nothing of the protocol stayed on the screen.
        self.assertFalse(any("#DATA:" in row or "TRZSZ" in row for row in page.evaluate(SCREEN)["rows"]), page.evaluate(SCREEN)["rows"])

    def test_a_cancelled_upload_leaves_the_shell_at_its_prompt(self):
        page = self.open_page()
        work = tempfile.mkdtemp(prefix="cloister-cancel-", dir=self.directory)
        self.shell(page, f"cd {work} && export PATH={BIN}:$PATH && echo ready-$((6*7))")
        self.wait_for_row(page, r"^ready-42$")
        with page.expect_file_chooser() as chooser:
            self.shell(page, self.upload)
        chooser.value.set_files(self.source)
        # Half-way or so: some progress, then cancel.
        self.wait_until(page, "document.querySelector('#transfer progress').value > 2 * 1024 * 1024", timeout=60)
        if self.cancel_with_key:
            page.keyboard.press("Control+C")
        else:
            page.click("#transfer button")
        self.wait_until(page, "document.getElementById('transfer').hidden", timeout=10)
        self.wait_until(page, "document.getElementById('transfer-note').textContent.includes('cancelled')", timeout=10)
        self.wait_for_prompt(page)
        self.shell(page, "echo after-$((6*7))")
        self.wait_for_row(page, r"^after-42$", timeout=30)

    def test_a_viewer_downloads_what_the_writer_sends_and_cannot_upload(self):
        writer = self.open_page()
        self.shell(writer, f"cd {self.directory} && export PATH={BIN}:$PATH && head -c 300000 /dev/urandom > small.bin && echo ready-$((6*7))")
        self.wait_for_row(writer, r"^ready-42$")
        writer.click("#share-toggle")
        link = writer.input_value("#share-reader")
        writer.click("#share-toggle")
        writer.click("#terminal")
        viewer = self.open_page(link)
        self.wait_until(viewer, "document.body.dataset.state === 'readonly'")
        with viewer.expect_download(timeout=60000) as seen, writer.expect_download(timeout=60000) as sent:
            self.shell(writer, self.download + " small.bin")
        for download in (seen.value, sent.value):
            path = os.path.join(self.directory, "copy-" + str(id(download)))
            download.save_as(path)
            self.assertEqual(sha256(path), sha256(os.path.join(self.directory, "small.bin")))
        # An upload the writer starts: the viewer's page says it cannot take part.
        self.wait_for_prompt(writer)
        with writer.expect_file_chooser() as chooser:
            self.shell(writer, self.upload)
        self.wait_until(viewer, "document.getElementById('transfer-note').textContent.includes('only watches')", timeout=10)
        chooser.value.set_files([])
        self.wait_for_prompt(writer)
        self.shell(writer, "echo end-$((6*7))")
        self.wait_for_row(writer, r"^end-42$", timeout=30)


    def test_a_download_goes_on_when_the_worker_is_killed(self):
        """The session's output resumes at the byte the page had (a ring larger than what is in
        flight): a download under way picks up where it was on the new connection, and the
        file arrives whole."""
        page = self.open_page(self.big_ring.url)
        self.shell(page, f"cd {self.directory} && export PATH={BIN}:$PATH && echo ready-$((6*7))")
        self.wait_for_row(page, r"^ready-42$")
        source = os.path.join(self.directory, "resumed.bin")
        with open(source, "wb") as f:
            f.write(os.urandom(8 << 20))
        with page.expect_download(timeout=120000) as download:
            self.shell(page, self.download + " resumed.bin")
            self.wait_until(page, "document.querySelector('#transfer progress').value > 1024 * 1024", timeout=60)
            for pid in self.big_ring.serving_worker_pids():
                os.kill(pid, signal.SIGKILL)
        saved = os.path.join(self.directory, "resumed-" + self.download + ".bin")
        download.value.save_as(saved)
        self.assertEqual(sha256(saved), sha256(source))
        self.wait_for_prompt(page)
        self.shell(page, "echo resumed-$((6*7))")
        self.wait_for_row(page, r"^resumed-42$")


class ZmodemTests(TrzszTests):
    upload, download = "rz", "sz"
    cancel_with_key = True


if __name__ == "__main__":
    unittest.main()
