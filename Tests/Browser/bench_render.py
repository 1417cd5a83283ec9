"""Rendering throughput as a user meets it: 30 MB of base64 (`head -c 22500000 /dev/urandom |
base64`) typed into the page as a command, the time until the page shows the line the shell
prints after it (every byte drawn, the shell ready), then the time for a next command's
answer, and the longest the page's main thread was unavailable meanwhile (the gap between
ticks of a 50 ms timer: what a user would feel as a frozen tab).

Pages, in the same headless Chromium against the same `cloister serve`, runs alternating:
Cloister's page with the renderer it picks (renderer.js: canvas where WebGL is a software
one, as here), Cloister's page with WebGL forced (`--client-option rendererType=webgl`),
ttyd 1.7.7's page (`--index`, when ../shared/peers has it; WebGL, its default), and with
OLD=DIR, a build of an earlier Cloister (DIR holds its binary at .build/release/cloister and
its web/), to compare against the page it served.

    make browser-deps && .build/browser-venv/bin/python Tests/Browser/bench_render.py [RUNS]
"""

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from served import ROOT, USER, PASSWORD, Served  # noqa: E402
import served  # noqa: E402

from playwright.sync_api import sync_playwright  # noqa: E402

TTYD_INDEX = os.path.abspath(os.path.join(ROOT, "..", "shared", "peers", "ttyd-index.html"))
COMMAND = "head -c 22500000 /dev/urandom | base64; echo done-$((6*7))"
TERMINAL = "(window.cloister ? window.cloister.terminal : window.term)"
# The last rows of whichever xterm.js the page has (3 has no public buffer API).
LAST_ROWS = """() => {
  const t = %s;
  if (t.buffer && t.buffer.active) {
    const b = t.buffer.active, rows = [];
    for (let y = Math.max(0, b.length - t.rows); y < b.length; y++) rows.push(b.getLine(y).translateToString(true));
    return rows.join('\\n');
  }
  const b = t._core.buffer, rows = [];
  for (let y = 0; y < t.rows; y++) rows.push(b.translateBufferLineToString(b.ydisp + y, true));
  return rows.join('\\n');
}""" % TERMINAL
PROBE = """() => {
  window.__stall = { max: 0, last: performance.now() };
  setInterval(() => { const now = performance.now(); window.__stall.max = Math.max(window.__stall.max, now - window.__stall.last);
    window.__stall.last = now; }, 50);
}"""


def wait_for(page, text, timeout):
    deadline = time.time() + timeout
    while text not in page.evaluate(LAST_ROWS):
        if time.time() > deadline:
            raise RuntimeError(f"{text!r} did not appear within {timeout} s")
        time.sleep(0.1)


def run(browser, url):
    context = browser.new_context(http_credentials={"username": USER, "password": PASSWORD}, viewport={"width": 1200, "height": 700})
    page = context.new_page()
    page.goto(url)
    deadline = time.time() + 20
    while not page.evaluate(f"!!({TERMINAL} && {TERMINAL}.rows > 0)"):
        if time.time() > deadline:
            raise RuntimeError("the page did not start")
        time.sleep(0.1)
    time.sleep(1.5)
    page.locator(".xterm").click()
    renderer = page.evaluate("window.cloister ? window.cloister.renderer || 'xterm.js 3' : 'ttyd'")
    page.evaluate(PROBE)
    page.keyboard.type(COMMAND)
    started = time.time()
    page.keyboard.press("Enter")
    wait_for(page, "\ndone-42", 300)
    output = time.time() - started
    page.keyboard.type("echo next-$((1+1))")
    started = time.time()
    page.keyboard.press("Enter")
    wait_for(page, "\nnext-2", 60)
    answer = time.time() - started
    stall = page.evaluate("window.__stall.max") / 1000
    context.close()
    return output, answer, stall, renderer


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    old = os.environ.get("OLD")
    servers = {"Cloister (its pick)": Served(workers=1), "Cloister (WebGL)": Served(workers=1, extra=("--client-option", "rendererType=webgl"))}
    if os.path.exists(TTYD_INDEX):
        servers["ttyd 1.7.7's page"] = Served(workers=1, extra=("--index", TTYD_INDEX))
    if old:
        os.environ["CLOISTER_EXECUTABLE"] = os.path.join(old, ".build", "release", "cloister")
        saved = served.ROOT
        served.ROOT = old
        servers["Cloister before (xterm.js 3)"] = Served(workers=1)
        served.ROOT = saved
    results = {name: [] for name in servers}
    renderers = {}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            for i in range(runs):
                for name, server in (servers.items() if i % 2 == 0 else reversed(list(servers.items()))):
                    output, answer, stall, renderer = run(browser, server.url)
                    results[name].append((output, answer, stall))
                    renderers[name] = renderer
                    print(f"run {i + 1}: {name} ({renderer}): {output:.1f} s + {answer:.2f} s, longest stall {stall:.2f} s", flush=True)
            browser.close()
    finally:
        for server in servers.values():
            server.close()
    print(f"\n30 MB of base64 typed into the page, medians of {runs} runs (lowest-highest):\n")
    print("| page (renderer) | output shown | next command's answer | longest main-thread stall |")
    print("|---|---|---|---|")
    for name, rows in results.items():
        column = lambda k: (statistics.median(r[k] for r in rows), min(r[k] for r in rows), max(r[k] for r in rows))
        o, a, s = column(0), column(1), column(2)
        print(f"| {name} ({renderers[name]}) | {o[0]:.1f} s ({o[1]:.1f}-{o[2]:.1f}) | {a[0]:.2f} s ({a[1]:.2f}-{a[2]:.2f}) "
              f"| {s[0]:.2f} s ({s[1]:.2f}-{s[2]:.2f}) |")


if __name__ == "__main__":
    main()
