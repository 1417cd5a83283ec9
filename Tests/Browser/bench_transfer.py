"""Throughput of a 20 MiB file through the terminal, each way, with trzsz (trz/tsz from PyPI)
and with ZMODEM (rz/sz from lrzsz): Cloister's page on `cloister serve`, and ttyd's own page on
ttyd 1.7.7 (`-t enableTrzsz=true -t enableZmodem=true`) with the same Chromium and the same
shell tools, runs alternating. ttyd's page is tried once per protocol: where it answers the
upload without a file chooser the automation can see, only Cloister's figures are given, with
the reason.

    make browser-deps && .build/browser-venv/bin/python Tests/Browser/bench_transfer.py [RUNS]
"""

import hashlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from served import ROOT, USER, PASSWORD, Served  # noqa: E402

from playwright.sync_api import sync_playwright  # noqa: E402

TTYD = os.path.abspath(os.path.join(ROOT, "..", "shared", "peers", "ttyd"))
BIN = os.path.join(ROOT, ".build", "browser-venv", "bin")
SIZE = 20 << 20


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait(predicate, timeout, what):
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise RuntimeError("timed out: " + what)
        time.sleep(0.02)


def one_way(browser, url, directory, source, settle, tools, chooser_timeout=30000):
    """Seconds for the upload (chooser set to the file being on disk whole) and for the
    download (tsz typed to the browser's download finished)."""
    context = browser.new_context(http_credentials={"username": USER, "password": PASSWORD}, accept_downloads=True)
    page = context.new_page()
    page.goto(url)
    time.sleep(settle)
    work = tempfile.mkdtemp(dir=directory)
    page.keyboard.type(f"cd {work} && export PATH={BIN}:$PATH\n")
    time.sleep(0.5)
    try:
        with page.expect_file_chooser(timeout=chooser_timeout) as chooser:
            page.keyboard.type(tools[0] + "\n")
    finally:
        if not chooser.is_done():
            context.close()
    started = time.time()
    chooser.value.set_files(source)
    target = os.path.join(work, os.path.basename(source))
    wait(lambda: os.path.exists(target) and os.path.getsize(target) == SIZE, 300, "upload")
    up = time.time() - started
    time.sleep(1.5)
    with page.expect_download(timeout=300000) as download:
        started = time.time()
        page.keyboard.type(f"{tools[1]} {os.path.basename(source)}\n")
    saved = os.path.join(work, "back.bin")
    download.value.save_as(saved)
    down = time.time() - started
    same = hashlib.sha256(open(saved, "rb").read()).digest() == hashlib.sha256(open(source, "rb").read()).digest()
    context.close()
    shutil.rmtree(work, ignore_errors=True)
    if not same:
        raise RuntimeError("the file came back different")
    return up, down


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    directory = tempfile.mkdtemp(prefix="cloister-bench-transfer-")
    source = os.path.join(directory, "payload.bin")
    with open(source, "wb") as f:
        f.write(os.urandom(SIZE))
    cloister = Served()
    port = free_port()
    ttyd = subprocess.Popen([TTYD, "-i", "lo", "-p", str(port), "-W", "-c", f"{USER}:{PASSWORD}", "-t", "enableTrzsz=true", "-t", "enableZmodem=true",
                             "bash", "--norc", "--noprofile"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    protocols = (("trzsz", ("trz", "tsz")), ("ZMODEM", ("rz", "sz")))
    results = {(p, side): [] for p, _ in protocols for side in ("Cloister", "ttyd")}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            for _ in range(runs):
                for protocol, tools in protocols:
                    results[(protocol, "Cloister")].append(one_way(browser, cloister.url, directory, source, 1.0, tools))
                    if results[(protocol, "ttyd")] is not None:
                        try:
                            results[(protocol, "ttyd")].append(
                                one_way(browser, f"http://127.0.0.1:{port}/", directory, source, 2.0, tools, 10000))
                        except Exception as error:  # noqa: BLE001 — reported, not hidden
                            print(f"ttyd's page not measured with {protocol}: {type(error).__name__}: {str(error).splitlines()[0]}")
                            results[(protocol, "ttyd")] = None
        finally:
            browser.close()
            ttyd.terminate()
            cloister.close()
            shutil.rmtree(directory, ignore_errors=True)
    mb = SIZE / 1e6
    print(f"20 MiB of random bytes, medians of {runs} runs (lowest-highest), MB/s")
    print("| protocol, direction | Cloister | ttyd | ratio |")
    print("|---|---|---|---|")
    for protocol, tools in protocols:
        for index, name in ((0, f"upload ({tools[0]})"), (1, f"download ({tools[1]})")):
            ours = [mb / r[index] for r in results[(protocol, "Cloister")]]
            line = f"| {protocol}, {name} | {statistics.median(ours):.1f} ({min(ours):.1f}-{max(ours):.1f}) | "
            theirs_runs = results[(protocol, "ttyd")]
            if theirs_runs:
                theirs = [mb / r[index] for r in theirs_runs]
                line += f"{statistics.median(theirs):.1f} ({min(theirs):.1f}-{max(theirs):.1f}) | {statistics.median(ours) / statistics.median(theirs):.2f} |"
            else:
                line += "not measured | |"
            print(line)


if __name__ == "__main__":
    main()
