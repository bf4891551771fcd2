"""Headless Chromium driven over the Chrome DevTools Protocol (websocket via aiohttp, no extra package).

Used to load the shipped UI-format workflows in the frontend the ComfyUI server really serves
(tests/test_frontend_workflows.py) and to build those files (vap_headless/build_workflows.py).
Needs Debian's ``chromium`` (``apt-get install -y chromium``) or ``CHROMIUM=/path/to/chrome``.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--no-default-browser-check", "--hide-scrollbars",
         "--mute-audio", "--disable-dev-shm-usage"]


def find_chromium() -> str | None:
    env = os.environ.get("CHROMIUM")
    if env:
        return env if os.path.isfile(env) else None
    for path in CHROMIUM_CANDIDATES:
        if os.path.isfile(path):
            return path
    return None


class CDPError(RuntimeError):
    pass


class Browser:
    """One headless Chromium with one page; ``evaluate`` runs JavaScript in it and returns JSON values."""

    def __init__(self, chromium: str, width: int = 1600, height: int = 1000, timeout: float = 60):
        self.profile = tempfile.mkdtemp(prefix="vap_chromium_")
        self.console: list[dict] = []
        self.exceptions: list[dict] = []
        self._events: queue.Queue = queue.Queue()
        self.process = subprocess.Popen(
            [chromium, *FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-port=0",
             "--remote-debugging-address=127.0.0.1", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.monotonic() + timeout
        while not (os.path.isfile(port_file) and open(port_file).read().count("\n") >= 1):
            if self.process.poll() is not None:
                raise CDPError(f"chromium exited with {self.process.returncode} while starting")
            if time.monotonic() > deadline:
                self.close()
                raise CDPError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(open(port_file).read().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            pages = [t for t in json.load(r) if t.get("type") == "page"]
        if not pages:
            raise CDPError("chromium has no page target")
        self._ws_url = pages[0]["webSocketDebuggerUrl"]
        self._next_id = 0
        self._pending: dict[int, asyncio.Future] = {}
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._run(),), daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error:
            raise CDPError(f"could not attach to chromium: {self._error}")
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                          "deviceScaleFactor": 1, "mobile": False})

    async def _run(self):
        import aiohttp
        try:
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(self._ws_url, max_msg_size=0) as ws:
                    self._ws = ws
                    self._ready.set()
                    async for msg in ws:
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            break
                        data = json.loads(msg.data)
                        if "id" in data and data["id"] in self._pending:
                            self._pending.pop(data["id"]).set_result(data)
                        else:
                            self._on_event(data)
        except BaseException as e:  # noqa: BLE001
            self._error = e
            self._ready.set()
        finally:
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(CDPError("connection to chromium closed"))

    def _on_event(self, data: dict):
        method, params = data.get("method"), data.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.console.append({"level": params.get("type"), "text": text})
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.exceptions.append({"text": details.get("text"),
                                    "description": (details.get("exception") or {}).get("description")})
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            self.console.append({"level": entry.get("level"), "text": entry.get("text"), "url": entry.get("url")})
        self._events.put(data)

    async def _send(self, method, params):
        self._next_id += 1
        fut = self._loop.create_future()
        self._pending[self._next_id] = fut
        await self._ws.send_str(json.dumps({"id": self._next_id, "method": method, "params": params or {}}))
        return await fut

    def send(self, method: str, params: dict | None = None, timeout: float = 120) -> dict:
        reply = asyncio.run_coroutine_threadsafe(self._send(method, params), self._loop).result(timeout)
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def evaluate(self, expression: str, timeout: float = 120):
        """Run JavaScript (may use ``await``) and return its JSON-serialisable value."""
        result = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                "returnByValue": True, "userGesture": True}, timeout=timeout)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise CDPError((details.get("exception") or {}).get("description") or details.get("text"))
        return result.get("result", {}).get("value")

    def goto(self, url: str, timeout: float = 60):
        self.send("Page.navigate", {"url": url})
        self.wait_for("document.readyState === 'complete'", timeout)

    def wait_for(self, js_condition: str, timeout: float = 60, interval: float = 0.2):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.evaluate(f"!!({js_condition})"):
                    return
            except CDPError:
                pass
            time.sleep(interval)
        raise CDPError(f"timed out waiting for: {js_condition}")

    def screenshot(self, path: str, clip: dict | None = None) -> str:
        params = {"format": "png"}
        if clip:
            params["clip"] = {**clip, "scale": clip.get("scale", 1)}
        data = self.send("Page.captureScreenshot", params)["data"]
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        return path

    def close(self):
        try:
            if getattr(self, "_ws", None) is not None and not self._ws.closed:
                asyncio.run_coroutine_threadsafe(self._ws.close(), self._loop).result(5)
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
