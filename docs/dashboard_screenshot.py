"""Take docs/dashboard.png: the Dask dashboard's status page while a small sample and describe
run on a LocalCluster (two workers), captured with headless Chromium.

The page draws its plots from data sent over a websocket after the page has loaded, which a
plain ``chromium --screenshot`` does not wait for; so Chromium runs with a DevTools port and
the picture is taken ``--after`` seconds after the first describe task has started, so
both task groups are on the page (``Page.captureScreenshot``).

Run: ``python docs/dashboard_screenshot.py [OUT.png] [--after 2]`` (needs ``chromium``; a
documentation aid only, not a dependency of the package).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from tornado.websocket import websocket_connect

from oamlm_dist.cluster import get_client
from oamlm_dist.describe import describe
from oamlm_dist.sample import MDSettings, sample

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,900", "--hide-scrollbars", "--remote-debugging-port=0",
         "--remote-allow-origins=http://127.0.0.1"]


def workload(store: str, client) -> None:
    """MD of alkanes C2-C7 (12 tasks), then SOAP rows in 2-frame blocks (many short tasks)."""
    sample(store, "alkanes:2-7", "xtb", {}, MDSettings(temperature=750, steps=60, timestep=1.0),
           runs=2, client=client)
    describe(store, "element", "r_cut=3,n_max=6,l_max=1", client, block_frames=2)


async def capture(page_ws: str, out: Path) -> None:
    conn = await websocket_connect(page_ws, max_message_size=64 << 20)
    conn.write_message(json.dumps({"id": 1, "method": "Page.captureScreenshot",
                                   "params": {"format": "png"}}))
    while True:
        message = json.loads(await conn.read_message())
        if message.get("id") == 1:
            break
    conn.close()
    out.write_bytes(base64.b64decode(message["result"]["data"]))


def describe_running(client) -> bool:
    """Whether describe tasks are running (the moment both task groups are on the page)."""
    return any(str(key).startswith("describe")
               for keys in client.processing().values() for key in keys)


def screenshot(url: str, out: Path, ready, after: float, timeout: float = 600.0) -> None:
    """Open ``url``; once ``ready()`` holds, wait ``after`` seconds and take the picture."""
    profile = Path(tempfile.mkdtemp(prefix="chromium-profile-"))
    browser = subprocess.Popen(["chromium", *FLAGS, f"--user-data-dir={profile}", url],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() > deadline:
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.2)
        port = port_file.read_text().split()[0]
        deadline = time.monotonic() + timeout
        while not ready() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(after)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as response:
            pages = [p for p in json.load(response) if p["type"] == "page"]
        asyncio.run(capture(pages[0]["webSocketDebuggerUrl"], out))
    finally:
        browser.terminate()
        browser.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description="screenshot of the Dask dashboard")
    parser.add_argument("out", nargs="?", default=str(Path(__file__).with_name("dashboard.png")))
    parser.add_argument("--after", type=float, default=2.0,
                        help="seconds after the first describe task starts (default 2)")
    args = parser.parse_args()
    store = str(Path(tempfile.mkdtemp(prefix="dashboard-")) / "store.zarr")
    with get_client(n_workers=2) as client:
        work = threading.Thread(target=workload, args=(store, client))
        work.start()
        screenshot(client.dashboard_link, Path(args.out), lambda: describe_running(client),
                   args.after)
        work.join()
    print(json.dumps({"screenshot": args.out, "bytes": Path(args.out).stat().st_size,
                      "dashboard": client.dashboard_link}))


if __name__ == "__main__":
    main()
