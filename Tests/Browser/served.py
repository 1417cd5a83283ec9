"""A real `cloister serve` for the browser tests: an ephemeral loopback port, the shipped
policies and page, a credential, a control socket; stopped (SIGTERM, then SIGKILL) and its
directory removed on close."""

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
USER, PASSWORD = "tester", "browser-pass"

# The visible rows of Cloister's page (xterm.js 5's public buffer API), and the cursor.
SCREEN = """() => {
  const t = window.cloister.terminal, b = t.buffer.active, rows = [];
  for (let y = 0; y < t.rows; y++) rows.push(b.getLine(b.viewportY + y).translateToString(true));
  return {rows: rows, x: b.cursorX, y: b.cursorY, cols: t.cols, height: t.rows};
}"""


def executable():
    # make test sets CLOISTER_EXECUTABLE to the release build, the one make install installs.
    given = os.environ.get("CLOISTER_EXECUTABLE")
    if given:
        if not (os.path.isabs(given) and os.access(given, os.X_OK)):
            raise RuntimeError("CLOISTER_EXECUTABLE=%s is not an absolute path to an executable" % given)
        return given
    for build in ("debug", "release"):
        path = os.path.join(ROOT, ".build", build, "cloister")
        if os.access(path, os.X_OK):
            return path
    raise RuntimeError("no cloister binary under .build/: run `swift build` first")


class Served:
    def __init__(self, command=("/bin/bash", "--norc", "--noprofile"), workers=2, extra=()):
        self.directory = tempfile.mkdtemp(prefix="cloister-browser-")
        os.chmod(self.directory, 0o700)
        self.control_socket = os.path.join(self.directory, "control.sock")
        self.log_path = os.path.join(self.directory, "output")
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [executable(), "serve", "--listen", "127.0.0.1:0", "--workers", str(workers),
             "--credential", f"{USER}:{PASSWORD}", "--control-socket", self.control_socket,
             "--policy-dir", os.path.join(ROOT, "policies"), "--web-dir", os.path.join(ROOT, "web"),
             "--drain-timeout", "1", *extra, "--", *command],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            match = re.search(r"listening on (https?://127\.0\.0\.1:\d+\S*)", self.output())
            if match and self.running(workers):
                self.url = match.group(1)
                return
            if self.process.poll() is not None:
                raise RuntimeError("cloister serve exited:\n" + self.output())
            time.sleep(0.05)
        self.close()
        raise RuntimeError("cloister serve did not start within 60 s:\n" + self.output())

    def output(self):
        with open(self.log_path, "r", errors="replace") as f:
            return f.read()

    def control(self, request):
        result = subprocess.run([executable(), "ctl", request, "--json", "--socket", self.control_socket],
                                capture_output=True, text=True, timeout=10)
        return json.loads(result.stdout)

    def running(self, workers):
        try:
            status = self.control("status")
        except (ValueError, subprocess.SubprocessError):
            return False
        return status.get("running") == workers and status.get("vault", {}).get("state") == "running"

    def serving_worker_pids(self):
        return [w["pid"] for w in self.control("workers")["workers"] if w.get("connections", 0) > 0 and w.get("pid")]

    def close(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        shutil.rmtree(self.directory, ignore_errors=True)
