"""Takes the PNG screenshots under docs/ with a headless Chromium, driven
over the DevTools protocol (the `websockets` package marimo already pulls
in), waiting in real time so a live page — a marimo app talking to its
kernel — has finished rendering.

    python docs/screenshot.py URL OUT.png [--width 1200] [--height 1800] [--wait 12]

Needs `chromium` (Debian: `apt-get install -y chromium`).
"""

import argparse
import asyncio
import base64
import json
import subprocess
import tempfile
import time
import urllib.request

import websockets


async def capture(ws_url: str, url: str, out: str, width: int, height: int, wait: float) -> None:
    async with websockets.connect(ws_url, max_size=64 * 1024 * 1024) as ws:
        seq = 0

        async def call(method, **params):
            nonlocal seq
            seq += 1
            await ws.send(json.dumps({"id": seq, "method": method, "params": params}))
            while True:
                msg = json.loads(await ws.recv())
                if msg.get("id") == seq:
                    return msg.get("result", {})

        await call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        await call("Page.enable")
        await call("Page.navigate", url=url)
        await asyncio.sleep(wait)
        shot = await call("Page.captureScreenshot", format="png", captureBeyondViewport=False)
        with open(out, "wb") as f:
            f.write(base64.b64decode(shot["data"]))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("out")
    p.add_argument("--width", type=int, default=1200)
    p.add_argument("--height", type=int, default=1800)
    p.add_argument("--wait", type=float, default=12)
    p.add_argument("--port", type=int, default=9333)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as profile:
        browser = subprocess.Popen(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                                    f"--remote-debugging-port={args.port}", f"--user-data-dir={profile}",
                                    "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(50):
                try:
                    targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{args.port}/json"))
                    page = next(t for t in targets if t["type"] == "page")
                    break
                except (OSError, StopIteration):
                    time.sleep(0.2)
            else:
                raise SystemExit("chromium did not start")
            asyncio.run(capture(page["webSocketDebuggerUrl"], args.url, args.out, args.width, args.height, args.wait))
        finally:
            browser.terminate()
            browser.wait()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
