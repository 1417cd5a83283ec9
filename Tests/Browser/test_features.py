"""What xterm.js 5 brings to the page, as a person meets it in Chromium against the real
server: wide characters where the shell counts them, links, search, images, the clipboard
set by programs (tmux included), and the key bar on a phone. Screenshots of each are kept in
.build/browser-screenshots/features/ (next to ttyd's page with the same output, when ttyd's
page is available) for a person to look at."""

import base64
import os
import re
import time
import unittest

import test_page
from test_page import SHOTS, TTYD_INDEX, PageTestCase
from served import Served

FEATURES = os.path.join(SHOTS, "features")
WIDE = "😀🚀|中文|"


def setUpModule():
    test_page.setUpModule()


def tearDownModule():
    test_page.tearDownModule()


class FeatureTestCase(PageTestCase):
    def shot(self, page, name):
        os.makedirs(FEATURES, exist_ok=True)
        page.screenshot(path=os.path.join(FEATURES, name + ".png"))

    def connected_page(self, **options):
        page = self.open_page(**options)
        self.wait_for_state(page, "connected")
        return page

    def cell_centre(self, page, column, row):
        """Page coordinates of a cell's centre, from the terminal's screen element."""
        return page.evaluate("""([column, row]) => {
          const t = window.cloister.terminal, r = t.element.querySelector('.xterm-screen').getBoundingClientRect();
          return [r.left + (column + 0.5) * r.width / t.cols, r.top + (row + 0.5) * r.height / t.rows];
        }""", [column, row])


class WideCharacterTests(FeatureTestCase):
    def test_emoji_and_cjk_take_two_cells_where_the_shell_counts_them(self):
        page = self.connected_page()
        # The prompt is cleared, the text printed without a newline: the cursor is where the
        # shell believes it is, after 2+2+1+2+2+1 cells.
        self.run_in_shell(page, f"clear; printf '{WIDE}'; sleep 30")
        self.wait_for_row(page, r"^😀🚀\|中文\|$")
        screen = self.screen(page)
        self.assertEqual((screen["x"], screen["y"]), (10, 0), "the cursor is after ten cells")
        widths = page.evaluate("""() => { const line = window.cloister.terminal.buffer.active.getLine(0), w = [];
          for (let x = 0; x < 10; x++) w.push(line.getCell(x).getWidth()); return w; }""")
        self.assertEqual(widths, [2, 0, 2, 0, 1, 2, 0, 2, 0, 1], "each wide character is two cells (the second of width 0)")
        page.wait_for_timeout(300)
        self.shot(page, "wide-cloister")
        page.keyboard.press("Control+C")

    @unittest.skipUnless(os.path.exists(TTYD_INDEX), "ttyd's page is not available")
    def test_ttyds_page_with_the_same_output(self):
        # For the side-by-side screenshot: ttyd's own page, served by Cloister with --index.
        server = Served(extra=("--index", TTYD_INDEX))
        try:
            page = self.open_page(server.url)
            self.wait_until(page, "!!(window.term && window.term.rows > 0)")
            page.locator(".xterm").click()
            self.run_in_shell(page, f"clear; printf '{WIDE}'; sleep 30")
            deadline = time.time() + 10
            while page.evaluate("window.term.buffer.active.getLine(0).translateToString(true)") != WIDE:
                self.assertLess(time.time(), deadline)
                time.sleep(0.05)
            page.wait_for_timeout(300)
            self.shot(page, "wide-ttyd")
            self.assertEqual(page.evaluate("window.term.buffer.active.cursorX"), 10, "ttyd's page counts ten cells too")
            page.keyboard.press("Control+C")
        finally:
            server.close()


class LinkTests(FeatureTestCase):
    def test_osc8_links_and_plain_urls_open_in_a_new_tab_without_an_opener(self):
        page = self.connected_page()
        target = self.server.url + "xterm.css"
        self.run_in_shell(page, f"clear; printf '\\e]8;;{target}?osc8\\e\\\\osc8-link\\e]8;;\\e\\\\\\n{target}?plain\\n'; "
                                "printf 'js: \\e]8;;javascript:alert(1)\\e\\\\bad-link\\e]8;;\\e\\\\\\n'")
        self.wait_for_row(page, r"^osc8-link$")
        self.wait_for_row(page, r"^js: bad-link$")
        rows = self.screen(page)["rows"]
        for text, query in (("osc8-link", "osc8"), (target + "?plain", "plain")):
            row = next(i for i, r in enumerate(rows) if r.startswith(text))
            x, y = self.cell_centre(page, 3, row)
            page.mouse.move(x, y)
            page.wait_for_timeout(200)
            with page.context.expect_page(timeout=5000) as opened:
                page.mouse.click(x, y)
            tab = opened.value
            tab.wait_for_load_state()
            self.assertTrue(tab.url.endswith("xterm.css?" + query), tab.url)
            self.assertIsNone(tab.evaluate("window.opener"), "the new tab cannot reach the page (noopener)")
            tab.close()
        self.shot(page, "links")
        # A javascript: link opens nothing.
        row = next(i for i, r in enumerate(rows) if r.startswith("js: bad-link"))
        x, y = self.cell_centre(page, 6, row)
        page.mouse.move(x, y)
        page.mouse.click(x, y)
        page.wait_for_timeout(500)
        self.assertEqual(len(page.context.pages), 1, "nothing opened for javascript:")


class SearchTests(FeatureTestCase):
    def test_search_highlights_its_hits(self):
        page = self.connected_page()
        self.run_in_shell(page, "clear; for i in 1 2 3; do echo needle-$i; done; echo hay")
        self.wait_for_row(page, r"^hay$")
        page.keyboard.press("Control+Shift+F")
        self.wait_until(page, "!document.getElementById('search').hidden")
        page.keyboard.type("needle-")
        # The three lines of output (clear took the command line away).
        self.wait_until(page, "/^\\d+ of 3$/.test(document.querySelector('#search output').value)")
        first = page.evaluate("document.querySelector('#search output').value")
        page.keyboard.press("Enter")
        self.wait_until(page, f"document.querySelector('#search output').value !== {first!r}")
        self.assertEqual(page.evaluate("window.cloister.terminal.getSelection()"), "needle-")
        self.assertGreater(page.evaluate("document.querySelectorAll('.xterm-decoration').length"), 1, "the hits are decorated")
        self.shot(page, "search")
        page.keyboard.press("Escape")
        self.wait_until(page, "document.getElementById('search').hidden")
        self.run_in_shell(page, "echo after-search")
        self.wait_for_row(page, r"^after-search$")


class ImageTests(FeatureTestCase):
    def test_a_sixel_image_is_drawn(self):
        page = self.connected_page()
        # A red square 24 pixels wide and 12 high (two sixel rows).
        sixel = "\\ePq#0;2;100;0;0#0!24~-#0!24~\\e\\\\"
        self.run_in_shell(page, f"clear; printf '{sixel}'; echo; echo after-image")
        self.wait_for_row(page, r"^after-image$")
        pixel = page.evaluate("""() => {
          const canvas = document.querySelector('.xterm-image-layer') || document.querySelector('canvas.xterm-image-layer');
          if (!canvas) return null;
          const r = canvas.getContext('2d').getImageData(4, 4, 1, 1).data;
          return [r[0], r[1], r[2], r[3]];
        }""")
        self.assertIsNotNone(pixel, "the image addon has its layer")
        self.assertEqual(pixel, [255, 0, 0, 255], "the image's first pixels are red")
        self.shot(page, "sixel")


class ClipboardFromProgramsTests(FeatureTestCase):
    def read_clipboard(self, page):
        return page.evaluate("() => navigator.clipboard.readText()")

    def test_osc52_and_tmux_set_the_clipboard_and_cannot_read_it(self):
        page = self.connected_page(permissions=("clipboard-read", "clipboard-write"))
        page.evaluate("() => navigator.clipboard.writeText('before')")
        encoded = base64.b64encode("from osc52 ✓".encode()).decode()
        self.run_in_shell(page, f"printf '\\e]52;c;{encoded}\\a'; echo sent-1")
        self.wait_for_row(page, r"^sent-1$")
        self.wait_until(page, "navigator.clipboard.readText().then(t => t === 'from osc52 ✓')")
        # A query gets no answer: nothing of the clipboard is typed into the shell.
        self.run_in_shell(page, "printf '\\e]52;c;?\\a'; echo sent-2")
        self.wait_for_row(page, r"^sent-2$")
        self.assertEqual(self.read_clipboard(page), "from osc52 ✓")
        # tmux with set-clipboard on sends OSC 52 with an empty target.
        self.run_in_shell(page, "tmux -L cloister-test -f /dev/null new-session")
        self.wait_until(page, "window.cloister.terminal.buffer.active.type === 'alternate'")
        time.sleep(0.5)
        self.run_in_shell(page, "tmux set -g set-clipboard on; tmux set-buffer -w from-tmux-$((6*7)); echo set")
        self.wait_until(page, "navigator.clipboard.readText().then(t => t === 'from-tmux-42')", timeout=10)
        self.shot(page, "clipboard-tmux")
        self.run_in_shell(page, "tmux kill-server")
        self.wait_until(page, "window.cloister.terminal.buffer.active.type === 'normal'")


class KeyBarTests(FeatureTestCase):
    def test_the_key_bar_sends_ctrl_c_and_arrows_on_a_phone(self):
        page = self.connected_page(size=(390, 844), touch=True)
        self.assertFalse(page.evaluate("document.getElementById('keys').hidden"), "the key bar is shown on a touch screen")
        bar = page.evaluate("document.getElementById('keys').getBoundingClientRect().toJSON()")
        self.assertEqual((bar["bottom"], bar["width"]), (844, 390), "it spans the bottom of the viewport")
        self.assertLessEqual(page.evaluate("window.cloister.terminal.element.getBoundingClientRect().bottom"), bar["top"],
                             "the terminal ends above it")
        # Ctrl (sticky, once) then "c" from the phone's keyboard: an interrupt.
        self.run_in_shell(page, "sleep 30; echo not-interrupted")
        page.wait_for_timeout(300)
        page.tap("#keys button[data-modifier=ctrl]")
        self.assertEqual(page.evaluate("document.querySelector('#keys [data-modifier=ctrl]').dataset.state"), "once")
        page.keyboard.type("c")
        self.wait_for_row(page, r"\^C$")
        self.assertEqual(page.evaluate("document.querySelector('#keys [data-modifier=ctrl]').dataset.state"), "off")
        # ↑ recalls the last command line.
        self.run_in_shell(page, "echo arrow-$((20+1))")
        self.wait_for_row(page, r"^arrow-21$")
        page.tap("#keys button[aria-label=up]")
        self.wait_for_row(page, r"[#$] echo arrow-\$\(\(20\+1\)\)$")
        page.keyboard.press("Enter")
        deadline = time.time() + 10
        while sum(1 for row in self.screen(page)["rows"] if row == "arrow-21") < 2:
            self.assertLess(time.time(), deadline, "\n".join(self.screen(page)["rows"]))
            time.sleep(0.05)
        self.assertFalse(any(row == "not-interrupted" for row in self.screen(page)["rows"]))
        self.shot(page, "keybar-phone")

    def test_no_key_bar_with_a_mouse(self):
        page = self.connected_page()
        self.assertTrue(page.evaluate("document.getElementById('keys').hidden"))


if __name__ == "__main__":
    unittest.main()
