"""The page as a person meets it: headless Chromium (Debian's, driven by Playwright) against
the real `cloister serve`. What the terminal shows is read from xterm.js's buffer through
the page, not scraped from pixels. A failing test leaves a screenshot in
.build/browser-screenshots/."""

import os
import re
import signal
import time
import unittest
import uuid

from playwright.sync_api import sync_playwright

from served import ROOT, SCREEN, USER, PASSWORD, Served

CHROMIUM = "/usr/bin/chromium"
SHOTS = os.path.join(ROOT, ".build", "browser-screenshots")
TTYD_INDEX = os.path.abspath(os.path.join(ROOT, "..", "shared", "peers", "ttyd-index.html"))

def setUpModule():
    global playwright, browser
    if not os.access(CHROMIUM, os.X_OK):
        raise unittest.SkipTest(f"{CHROMIUM} is missing: `make browser-deps` installs Debian's chromium")
    playwright = sync_playwright().start()
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])


def tearDownModule():
    browser.close()
    playwright.stop()


class PageTestCase(unittest.TestCase):
    server_options = {}

    @classmethod
    def setUpClass(cls):
        cls.server = Served(**cls.server_options)

    @classmethod
    def tearDownClass(cls):
        cls.server.close()

    def setUp(self):
        self.pages = []
        self.problems = []

    def tearDown(self):
        # The result already holds this test's failure or error when tearDown runs.
        result = self._outcome.result
        failed = any(test is self for test, _ in result.failures + result.errors)
        for i, page in enumerate(self.pages):
            if failed:
                os.makedirs(SHOTS, exist_ok=True)
                page.screenshot(path=os.path.join(SHOTS, f"{self.id().split('.')[-1]}-{i}.png"))
            page.context.close()

    def open_page(self, url=None, size=(1000, 600), permissions=(), touch=False):
        # `touch`: a phone, as Chromium's device emulation makes one (a coarse pointer).
        context = browser.new_context(http_credentials={"username": USER, "password": PASSWORD},
                                      viewport={"width": size[0], "height": size[1]}, permissions=list(permissions),
                                      has_touch=touch, is_mobile=touch)
        page = context.new_page()
        page.on("console", lambda m: m.type == "error" and self.problems.append(m.text))
        page.on("pageerror", lambda e: self.problems.append(str(e)))
        page.goto(url or self.server.url)
        self.pages.append(page)
        return page

    def screen(self, page):
        return page.evaluate(SCREEN)

    def wait_for_row(self, page, pattern, timeout=10):
        """The first visible row matching `pattern` (a regular expression), waiting for it."""
        deadline = time.time() + timeout
        while True:
            for row in self.screen(page)["rows"]:
                match = re.search(pattern, row)
                if match:
                    return match
            if time.time() > deadline:
                self.fail(f"no row matches {pattern!r}; the screen:\n" + "\n".join(self.screen(page)["rows"]))
            time.sleep(0.05)

    def wait_until(self, page, expression, timeout=15):
        """Polls `expression` in the page. Playwright's wait_for_function compiles its predicate
        with eval, which the page's Content-Security-Policy rightly refuses."""
        deadline = time.time() + timeout
        while not page.evaluate(expression):
            if time.time() > deadline:
                self.fail(f"not true within {timeout} s: {expression}; state: "
                          + str(page.evaluate("[document.body.dataset.state, document.getElementById('state') && document.getElementById('state').textContent]")))
            time.sleep(0.05)

    def wait_for_state(self, page, state, timeout=15):
        self.wait_until(page, f"document.body.dataset.state === {state!r}", timeout)

    def run_in_shell(self, page, command):
        page.keyboard.type(command + "\n")


class TerminalTests(PageTestCase):
    def test_vi_runs_full_screen(self):
        page = self.open_page()
        self.wait_for_state(page, "connected")
        name = f"/tmp/cloister-vi-{uuid.uuid4().hex[:8]}"
        self.run_in_shell(page, f"vi {name}")
        # vi's status line names the file on the terminal's last row.
        deadline = time.time() + 10
        while name not in self.screen(page)["rows"][-1]:
            self.assertLess(time.time(), deadline, "vi's status line is not on the last row:\n"
                            + "\n".join(self.screen(page)["rows"]))
            time.sleep(0.05)
        page.keyboard.type("ihello from vi")
        self.wait_for_row(page, r"^hello from vi$")
        screen = self.screen(page)
        self.assertEqual(screen["rows"][0], "hello from vi", "typed text is on vi's first line")
        self.assertEqual((screen["x"], screen["y"]), (len("hello from vi"), 0), "the cursor follows the text")
        page.keyboard.press("Escape")
        self.run_in_shell(page, ":q!")
        # vi restores the terminal with TCSAFLUSH, which drops what was typed meanwhile.
        self.wait_for_row(page, rf"vi {name}$")
        self.wait_until(page, "window.cloister.terminal.buffer.active.type === 'normal'")
        time.sleep(0.3)
        self.run_in_shell(page, "echo vi-left-$((6*7))")
        self.wait_for_row(page, r"^vi-left-42$")
        self.assertEqual([p for p in self.problems if "favicon" not in p], [],
                         "no errors and no Content-Security-Policy violations on the page")

    def test_colours_arrive_as_colours(self):
        page = self.open_page()
        self.wait_for_state(page, "connected")
        self.run_in_shell(page, r"printf '\033[31m%s\033[0m %s\n' RED PLAIN")
        match = self.wait_for_row(page, r"^RED PLAIN$")
        self.assertTrue(match, "the escape sequences are not printed as text")
        colours = page.evaluate("""() => {
          const b = window.cloister.terminal.buffer.active;
          for (let y = 0; y < b.length; y++) {
            const line = b.getLine(y);
            if (line.translateToString(true) === 'RED PLAIN') {
              const fg = x => { const c = line.getCell(x); return c.isFgPalette() ? c.getFgColor() : -1; };
              return [fg(0), fg(4)];
            }
          }
          return null;
        }""")
        self.assertEqual(colours[0], 1, "RED is drawn in palette colour 1 (red)")
        self.assertNotEqual(colours[1], 1, "PLAIN is not")

    def test_resizing_the_window_resizes_the_terminal(self):
        page = self.open_page(size=(1000, 600))
        self.wait_for_state(page, "connected")
        sizes = []
        for width, height in ((1000, 600), (640, 360)):
            page.set_viewport_size({"width": width, "height": height})
            page.wait_for_timeout(200)
            screen = self.screen(page)
            marker = uuid.uuid4().hex[:6]
            self.run_in_shell(page, f"echo {marker}-$(stty size | tr ' ' x)")
            match = self.wait_for_row(page, rf"^{marker}-(\d+)x(\d+)$")
            self.assertEqual((int(match.group(1)), int(match.group(2))), (screen["height"], screen["cols"]),
                             f"stty size in the shell follows the page at {width}x{height}")
            sizes.append((screen["height"], screen["cols"]))
        self.assertNotEqual(sizes[0], sizes[1], "a smaller window gives a smaller terminal")


class ClipboardTests(PageTestCase):
    def test_paste_and_copy_with_ctrl_shift(self):
        page = self.open_page(permissions=("clipboard-read", "clipboard-write"))
        self.wait_for_state(page, "connected")
        # bash asks for bracketed paste: the pasted line, newline and all, is text for the
        # line editor until Enter is pressed, so a pasted command never runs by itself.
        self.wait_until(page, "window.cloister.terminal.modes.bracketedPasteMode")
        page.evaluate("() => navigator.clipboard.writeText('echo pasted-$((6*7))\\r')")
        page.keyboard.press("Control+Shift+V")
        self.wait_for_row(page, r"echo pasted-\$\(\(6\*7\)\)$")
        time.sleep(0.5)
        self.assertFalse(any(row == "pasted-42" for row in self.screen(page)["rows"]), "the paste did not run")
        page.keyboard.press("Enter")
        self.wait_for_row(page, r"^pasted-42$")
        page.evaluate("() => window.cloister.terminal.selectAll()")
        page.keyboard.press("Control+Shift+C")
        # The clipboard held the pasted command, which has no "pasted-42" in it.
        copied = page.evaluate("() => navigator.clipboard.readText()")
        self.assertIn("pasted-42", copied, "the selection reached the clipboard")


class ResumeTests(PageTestCase):
    def test_the_page_resumes_its_session_after_its_worker_is_killed(self):
        page = self.open_page()
        self.wait_for_state(page, "connected")
        self.run_in_shell(page, "echo before-$$")
        shell = self.wait_for_row(page, r"^before-(\d+)$").group(1)
        before = [row for row in self.screen(page)["rows"] if row]
        offset = page.evaluate("window.cloister.session.offset")
        victims = self.server.serving_worker_pids()
        self.assertTrue(victims, "a worker serves the page")
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        self.wait_until(page, f"window.cloister.session.offset > {offset} || document.body.dataset.state !== 'connected'")
        self.wait_for_state(page, "connected", timeout=30)
        after = [row for row in self.screen(page)["rows"] if row]
        self.assertEqual(after[:len(before)], before, "the screen still shows what it showed")
        self.run_in_shell(page, "echo after-$$")
        self.assertEqual(self.wait_for_row(page, r"^after-(\d+)$").group(1), shell, "typing goes on in the same shell")
        rows = self.screen(page)["rows"]
        self.assertEqual(sum(1 for row in rows if row == f"before-{shell}"), 1, "no output was replayed twice")

    def test_the_page_keeps_its_shell_and_keystrokes_when_the_vault_is_killed(self):
        page = self.open_page()
        self.wait_for_state(page, "connected")
        self.run_in_shell(page, "stty -echo; echo before-$$")
        shell = self.wait_for_row(page, r"^before-(\d+)$").group(1)
        vault = self.server.control("status")["vault"]["pid"]
        os.kill(vault, signal.SIGKILL)
        # Typed while the vault is gone: kept by the page, sent again once it is back.
        self.run_in_shell(page, "echo typed-$((40+2))-$$")
        self.wait_for_state(page, "connected", timeout=30)
        self.assertNotEqual(self.server.control("status")["vault"]["pid"], vault, "a new vault serves")
        self.wait_for_row(page, rf"^typed-42-{shell}$")
        self.run_in_shell(page, "echo after-$$")
        self.assertEqual(self.wait_for_row(page, r"^after-(\d+)$").group(1), shell, "the same shell")
        rows = self.screen(page)["rows"]
        self.assertEqual(sum(1 for row in rows if row == f"typed-42-{shell}"), 1, "the keystrokes ran once: " + "\n".join(rows))
        self.assertEqual(sum(1 for row in rows if row == f"before-{shell}"), 1, "no output was replayed twice")
        # A reconnection while the vault is down is answered 503 (retried), which Chromium
        # logs; any other problem, a 401 above all, fails.
        self.assertEqual([p for p in self.problems if "status of 503" not in p], [])

    def test_a_read_only_link_shows_output_and_cannot_type(self):
        writer = self.open_page()
        self.wait_for_state(writer, "connected")
        writer.click("#share-toggle")
        reader_link = writer.input_value("#share-reader")
        writer_link = writer.input_value("#share-writer")
        self.assertIn("#session=", reader_link)
        self.assertIn("readonly=1", reader_link)
        self.assertNotEqual(reader_link.split("secret=")[1].split("&")[0], writer_link.split("secret=")[1].split("&")[0],
                            "the read-only link carries the read secret, not the writer's")
        writer.click("#share-toggle")
        writer.locator("#terminal").click()
        reader = self.open_page(reader_link)
        self.wait_for_state(reader, "readonly")
        self.assertEqual(reader.evaluate("location.hash"), "", "the secret is taken out of the address bar")
        self.run_in_shell(writer, "echo shared-$((40+2))")
        self.wait_for_row(reader, r"^shared-42$")
        reader.locator("#terminal").click()
        self.run_in_shell(reader, "echo from-reader")
        self.run_in_shell(writer, "echo sync-$((1+1))")
        self.wait_for_row(reader, r"^sync-2$")
        for page in (writer, reader):
            self.assertFalse(any("from-reader" in row for row in self.screen(page)["rows"]), "the reader's typing went nowhere")


class ServeOptionTests(PageTestCase):
    server_options = {"extra": ("--base-path", "/sub/term", "--client-option", "fontSize=21",
                                "--client-option", 'theme={"background": "#102030"}', "--client-option", "cursorStyle=underline")}

    def test_the_page_works_under_a_base_path(self):
        base = self.server.url.rstrip("/")
        self.assertTrue(base.endswith("/sub/term"), "the address printed at start has the prefix: " + self.server.url)
        page = self.open_page(base)  # the bare prefix redirects to prefix/
        self.assertEqual(page.url, base + "/")
        self.wait_for_state(page, "connected")
        self.run_in_shell(page, "echo under-$((40+2))")
        self.wait_for_row(page, r"^under-42$")

    def test_client_options_reach_the_terminal(self):
        page = self.open_page()
        self.wait_for_state(page, "connected")
        options = page.evaluate("""() => { const t = window.cloister.terminal;
          return [t.options.fontSize, t.options.theme.background, t.options.cursorStyle]; }""")
        self.assertEqual(options, [21, "#102030", "underline"], "the numbers arrive as numbers, the theme as an object")


class ReadOnlyServerTests(PageTestCase):
    server_options = {"extra": ("--read-only",)}

    def test_a_read_only_server_shows_output_and_takes_no_input(self):
        page = self.open_page()
        self.wait_for_state(page, "readonly")
        self.assertEqual(page.text_content("#state"), "read-only")
        self.wait_for_row(page, r"bash.*[#$]")  # the shell's prompt: output arrives
        page.locator("#terminal").click()
        self.run_in_shell(page, "echo typed-$((40+2))")
        time.sleep(1)
        self.assertFalse(any("typed-42" in row for row in self.screen(page)["rows"]), "nothing typed reaches the shell")


@unittest.skipUnless(os.path.exists(TTYD_INDEX), f"ttyd's page is not at {TTYD_INDEX} (see ../shared/peers/README.md)")
class TtydPageTests(PageTestCase):
    server_options = {"extra": ("--index", TTYD_INDEX)}

    def ttyd_rows(self, page):
        return page.evaluate("""() => {
          const b = window.term.buffer.active, rows = [];
          for (let y = 0; y < window.term.rows; y++) rows.push(b.getLine(b.viewportY + y).translateToString(true));
          return rows;
        }""")

    def wait_for_ttyd_row(self, page, pattern, timeout=10):
        deadline = time.time() + timeout
        while True:
            for row in self.ttyd_rows(page):
                match = re.search(pattern, row)
                if match:
                    return match
            if time.time() > deadline:
                self.fail(f"no row matches {pattern!r}:\n" + "\n".join(self.ttyd_rows(page)))
            time.sleep(0.05)

    def test_ttyds_own_page_logs_in_types_and_resizes(self):
        page = self.open_page(size=(1000, 600))
        self.wait_until(page, "!!(window.term && window.term.rows > 0)")
        page.locator(".xterm").click()
        self.run_in_shell(page, "echo ttyd-page-$((6*7))")
        self.wait_for_ttyd_row(page, r"^ttyd-page-42$", timeout=15)
        for width, height in ((1000, 600), (700, 420)):
            page.set_viewport_size({"width": width, "height": height})
            page.wait_for_timeout(400)
            size = page.evaluate("[window.term.rows, window.term.cols]")
            marker = uuid.uuid4().hex[:6]
            self.run_in_shell(page, f"echo {marker}-$(stty size | tr ' ' x)")
            match = self.wait_for_ttyd_row(page, rf"^{marker}-(\d+)x(\d+)$")
            self.assertEqual([int(match.group(1)), int(match.group(2))], size, f"ttyd's page resized the terminal at {width}x{height}")


if __name__ == "__main__":
    unittest.main()
