"""sdcpu serve's web page in a real headless Chromium: a prompt is submitted through the form, the streamed previews
show, then the image.

Chromium is driven over its DevTools protocol on a pipe (--remote-debugging-pipe: NUL-separated JSON on file
descriptors 3 and 4), so no WebDriver or browser-automation package is needed."""

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from serving import Server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--remote-debugging-pipe")

# slow: Chromium starts and drives the page while the server generates (about a minute on 2 cores)
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package")]


def _above_4(fd: int) -> int:
    """FD moved above 4, so that placing the child's ends on 3 and 4 cannot close or overwrite one of them."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class DevTools:
    """A Chromium started with its DevTools protocol on a pipe, and one page attached."""

    def __init__(self, url: str, profile_dir):
        to_browser_r, self.to_browser = map(_above_4, os.pipe())
        self.from_browser, from_browser_w = map(_above_4, os.pipe())
        # a Python trampoline puts the pipe ends on 3 and 4, where --remote-debugging-pipe expects them (Debian's
        # /usr/bin/chromium is a dash script, and dash cannot redirect descriptors above 9)
        move = (f"import os, sys; os.dup2({to_browser_r}, 3); os.dup2({from_browser_w}, 4); "
                f"os.close({to_browser_r}); os.close({from_browser_w}); os.execv(sys.argv[1], sys.argv[1:])")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", move, CHROMIUM, *FLAGS, f"--user-data-dir={profile_dir}", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(to_browser_r, from_browser_w))
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.next_id, self.buffer = 0, b""
        target = next(t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", targetId=target["targetId"], flatten=True)["sessionId"]

    def send(self, method: str, session=None, **params) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self.buffer:
                chunk = os.read(self.from_browser, 1 << 16)
                assert chunk, "chromium closed its DevTools pipe"
                self.buffer += chunk
            raw, self.buffer = self.buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self.next_id:
                assert "error" not in reply, reply["error"]
                return reply["result"]

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", self.session, expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.2)
        raise TimeoutError(f"{expression} stayed false for {timeout} s")

    def close(self):
        self.proc.kill()
        self.proc.wait()


def test_the_page_generates_an_image_in_a_headless_browser(sdcpu_home, tmp_path):
    server = Server(home=sdcpu_home)
    browser = DevTools(f"{server.url}/", tmp_path / "chromium-profile")
    try:
        browser.wait_for("document.readyState === 'complete' && !!document.getElementById('go')", 30)
        browser.evaluate("""
            document.getElementById('prompt').value = 'a lighthouse at dusk';
            document.getElementById('size').value = '256x256';
            document.getElementById('steps').value = '4';
            document.getElementById('seed').value = '7';
            document.getElementById('go').click();""")
        shown = "(() => { const img = document.getElementById('image'); " \
                "return img.dataset.final === 'true' && img.complete && img.naturalWidth > 0 ? " \
                "[img.naturalWidth, img.naturalHeight] : null })()"
        assert browser.wait_for(shown, 180) == [256, 256]
        assert browser.evaluate("document.getElementById('error').textContent") == ""
        assert browser.evaluate("document.getElementById('image').dataset.partials") == "3"  # after steps 1, 2, 3
        timing = browser.evaluate("document.getElementById('timing').textContent")
        assert timing.startswith("256x256, 4 steps, seed 7:") and " s generating" in timing
    finally:
        browser.close()
        assert server.stop() == 0
