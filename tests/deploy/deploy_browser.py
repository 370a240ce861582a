"""Headless Chromium driven over the DevTools protocol (CDP), for looking at the Prefect UI.

:class:`Browser` starts Debian's ``chromium`` headless with a throw-away profile, no network
services of its own (no sync, component updates, background networking), and talks CDP over the
page's WebSocket (``websockets`` is a Prefect dependency, so nothing else is installed).
``open(url)`` navigates, ``wait_text(*needles)`` polls ``document.body.innerText`` until all
needles show (or times out with the text seen), ``screenshot(path)`` writes a PNG.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    def __init__(self, width: int = 1600, height: int = 1000) -> None:
        exe = find_chromium()
        if exe is None:
            raise RuntimeError("chromium not found")
        self.profile = tempfile.mkdtemp(prefix="vmkeep-chromium-")
        self.process = subprocess.Popen(
            [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--disable-background-networking", "--disable-component-update", "--no-first-run",
             "--disable-sync", "--disable-extensions", "--disable-default-apps",
             "--metrics-recording-only", "--mute-audio", "--disable-breakpad",
             "--disable-crash-reporter", f"--window-size={width},{height}",
             f"--user-data-dir={self.profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            start_new_session=True,
            # its own temporary files (the org.chromium.Chromium.* singleton folder) inside the
            # profile, removed with it, instead of one folder left in /tmp per run
            env=dict(os.environ, TMPDIR=self.profile),
        )
        port = self._devtools_port()
        deadline = time.monotonic() + 300  # a hang guard on a loaded machine
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                pages = [p for p in json.load(r) if p.get("type") == "page"]
            if pages or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=64 << 20,
                          open_timeout=300)
        self._ids = itertools.count(1)
        self.call("Page.enable")
        self.call("Runtime.enable")

    def _devtools_port(self) -> int:
        assert self.process.stderr is not None
        deadline = time.monotonic() + 300  # a hang guard on a loaded machine
        seen = b""
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            seen += line
            m = re.search(rb"DevTools listening on ws://[^:]+:(\d+)/", line)
            if m:
                return int(m.group(1))
            if not line and self.process.poll() is not None:
                break
        raise RuntimeError(f"chromium did not start: {seen.decode(errors='replace')[-1000:]}")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                result: dict[str, Any] = msg.get("result", {})
                return result

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def text(self) -> str:
        result = self.call("Runtime.evaluate", expression="document.body.innerText",
                           returnByValue=True)
        return str(result.get("result", {}).get("value") or "")

    def click_text(self, label: str) -> bool:
        """Click the innermost visible element whose text is exactly ``label``."""
        script = (
            "(() => { const want = WANT; let best = null;"
            " const sel = 'button, a, [role=tab], li, span, div';"
            " for (const el of document.querySelectorAll(sel)) {"
            "  if (el.offsetParent === null) continue;"
            "  if ((el.innerText || '').trim() === want) best = el; }"
            " if (best) { best.click(); return true; } return false; })()"
        ).replace("WANT", json.dumps(label))
        result = self.call("Runtime.evaluate", expression=script, returnByValue=True)
        return bool(result.get("result", {}).get("value"))

    def wait_text(self, *needles: str, timeout: float = 300.0) -> str:
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.text()
            if all(n in text for n in needles):
                return text
            time.sleep(0.5)
        missing = [n for n in needles if n not in text]
        raise AssertionError(f"UI never showed {missing}; page text: {text[:1500]!r}")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGTERM)
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(self.process.pid, signal.SIGKILL)
                    self.process.wait()
            shutil.rmtree(self.profile, ignore_errors=True)
