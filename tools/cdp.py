"""Headless Chromium driven over the DevTools protocol, for the screenshot scripts that are
run by hand (tools/comfyui/screenshot.py, tools/a1111/screenshot.py). Needs chromium on PATH
and aiohttp."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.read()
        except Exception:
            time.sleep(1)
    raise TimeoutError(url)


@contextlib.contextmanager
def chromium():
    """A headless chromium with a throw-away profile; yields its DevTools port."""
    port, profile = free_port(), tempfile.mkdtemp(prefix="es-chrome-")
    proc = subprocess.Popen(
        [shutil.which("chromium") or shutil.which("chromium-browser"), "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--remote-debugging-port={port}", f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/json/version", 60)
        yield port
    finally:
        stop(proc)
        shutil.rmtree(profile, ignore_errors=True)


def stop(proc: subprocess.Popen, grace: float = 15) -> None:
    """Ask a process to end; kill it if it has not within `grace` seconds."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()


class Page:
    """The first page of a chromium: `call` a DevTools method, evaluate `js`."""

    def __init__(self, ws):
        self.ws, self.counter = ws, 0

    async def call(self, method, **params):
        self.counter += 1
        await self.ws.send_json({"id": self.counter, "method": method, "params": params})
        async for msg in self.ws:
            data = json.loads(msg.data)
            if data.get("id") == self.counter:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                return data.get("result", {})

    async def js(self, expr):
        res = await self.call("Runtime.evaluate", expression=expr, awaitPromise=True, returnByValue=True)
        if res.get("exceptionDetails"):
            raise RuntimeError(json.dumps(res["exceptionDetails"])[:2000])
        return res.get("result", {}).get("value")


@contextlib.asynccontextmanager
async def page(cdp_port: int):
    import aiohttp
    async with aiohttp.ClientSession() as http:
        pages = await (await http.get(f"http://127.0.0.1:{cdp_port}/json/list")).json()
        ws_url = next(p for p in pages if p["type"] == "page")["webSocketDebuggerUrl"]
        async with http.ws_connect(ws_url, max_msg_size=0) as ws:
            yield Page(ws)
