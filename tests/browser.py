"""A real headless Chromium for the tests, driven over the DevTools protocol on a pipe
(`--remote-debugging-pipe`: commands in on fd 3, replies out on fd 4; no port, no network).

    with Chromium() as browser:
        page = browser.open("file:///.../routing.html", width=1600, height=1000)
        page.evaluate("document.title")
        page.console_errors, page.requests, page.screenshot()

`find_chromium()` looks for Debian's `chromium` (apt-get install chromium); tests skip without it,
except under CI=true, where a missing browser is a failure (tests/conftest.py's `chromium` fixture).
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-extensions", "--disable-default-apps",
         "--mute-audio", "--hide-scrollbars", "--remote-debugging-pipe")


def find_chromium() -> str | None:
    """The path of a Chromium-family browser on PATH, or None."""
    for name in NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class BrowserError(RuntimeError):
    pass


class Page:
    """One tab: what it logged, what it requested, and commands to it."""

    def __init__(self, browser: "Chromium", session: str):
        self.browser, self.session = browser, session
        self.console_errors: list[str] = []
        self.requests: list[str] = []

    def send(self, method: str, **params):
        return self.browser.send(method, params, self.session)

    def evaluate(self, expression: str):
        reply = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in reply:
            raise BrowserError(f"script failed: {reply['exceptionDetails'].get('text')} "
                               f"{reply['exceptionDetails'].get('exception', {}).get('description', '')}")
        return reply["result"].get("value")

    def screenshot(self) -> bytes:
        """A PNG of the viewport."""
        return base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])

    def resize(self, width: int, height: int):
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def close(self):
        self.browser.send("Target.closeTarget", {"targetId": self.target})


class Chromium:
    """A headless Chromium process; a context manager that stops it on exit."""

    def __init__(self, executable: str | None = None, timeout: float = 30.0):
        self.executable = executable or find_chromium()
        if not self.executable:
            raise BrowserError("no Chromium on PATH (apt-get install chromium)")
        self.timeout = timeout
        self._next = 0
        self._buffer = b""
        self._events: list[dict] = []
        self.pages: dict[str, Page] = {}

    def __enter__(self):
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()
        # The browser expects its pipe on fds 3 and 4: move both ends high first, so dup2 cannot clobber them.
        high_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 100)
        high_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 100)
        os.close(to_browser_r)
        os.close(from_browser_w)

        def child_fds():
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self._profile = tempfile.TemporaryDirectory(prefix="ecdit-chromium-")
        self.process = subprocess.Popen(
            [self.executable, *FLAGS, f"--user-data-dir={self._profile.name}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=child_fds, close_fds=False)     # fds 3 and 4 are made in the child, after the fork
        os.close(high_r)
        os.close(high_w)
        self._write, self._read = to_browser_w, from_browser_r
        return self

    def __exit__(self, *exc):
        try:
            self.send("Browser.close", {})
        except Exception:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self._write, self._read):
            try:
                os.close(fd)
            except OSError:
                pass
        self._profile.cleanup()

    # --- the protocol -------------------------------------------------------------------------
    def send(self, method: str, params: dict, session: str | None = None) -> dict:
        self._next += 1
        message = {"id": self._next, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        want = self._next
        deadline = time.monotonic() + self.timeout
        while True:
            for i, m in enumerate(self._events):
                if m.get("id") == want:
                    self._events.pop(i)
                    if "error" in m:
                        raise BrowserError(f"{method}: {m['error'].get('message')}")
                    return m.get("result", {})
            self._pump(deadline, method)

    def _pump(self, deadline: float, waiting_for: str):
        left = deadline - time.monotonic()
        if left <= 0:
            raise BrowserError(f"no reply from Chromium to {waiting_for} within {self.timeout} s")
        ready, _, _ = select.select([self._read], [], [], left)
        if not ready:
            return
        chunk = os.read(self._read, 1 << 20)
        if not chunk:
            raise BrowserError(f"Chromium closed its pipe while waiting for {waiting_for}")
        self._buffer += chunk
        while b"\0" in self._buffer:
            raw, self._buffer = self._buffer.split(b"\0", 1)
            message = json.loads(raw)
            if "method" in message:
                self._record(message)
            self._events.append(message)

    def _record(self, event: dict):
        page = self.pages.get(event.get("sessionId"))
        if page is None:
            return
        method, p = event["method"], event.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            page.console_errors.append(f"exception: {d.get('text')} {d.get('exception', {}).get('description', '')}")
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert", "warning"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            page.console_errors.append(f"console.{p['type']}: {text}")
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") in ("error", "warning"):
            e = p["entry"]
            page.console_errors.append(f"{e.get('source')} {e.get('level')}: {e.get('text')} {e.get('url', '')}")
        elif method == "Network.requestWillBeSent":
            page.requests.append(p.get("request", {}).get("url", ""))

    def wait_for(self, session: str, method: str):
        deadline = time.monotonic() + self.timeout
        while True:
            for i, m in enumerate(self._events):
                if m.get("method") == method and m.get("sessionId") == session:
                    self._events.pop(i)
                    return m
            self._pump(deadline, method)

    # --- pages --------------------------------------------------------------------------------
    def open(self, url: str, width: int = 1600, height: int = 1000) -> Page:
        """A new tab of the given viewport, navigated to `url` and loaded."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        page.target = target
        self.pages[session] = page
        for domain in ("Page", "Runtime", "Log", "Network"):
            page.send(f"{domain}.enable")
        page.resize(width, height)
        self._events = [m for m in self._events if m.get("sessionId") != session or m.get("method") != "Page.loadEventFired"]
        page.send("Page.navigate", url=url)
        self.wait_for(session, "Page.loadEventFired")
        return page
