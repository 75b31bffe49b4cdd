"""The gateway in a real browser: headless Chromium loads a page (from a test server on another
origin, so CORS is exercised) that reads a byte range of a .npy held by a channel peer and follows a
feed's live events; the page reports what it saw by POSTing it back to the test server."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from .mounting import KACHERYFS
from .test_gateway import gateway_url
from .test_mount_network import wait_until_connected

PAGE = """<!doctype html>
<html><body><script>
const gateway = %(gateway)s, sha1 = %(sha1)s, feed = %(feed)s, first = %(first)d, count = %(count)d;
const report = (obj) => fetch("/result", {method: "POST", body: JSON.stringify(obj)});
async function main() {
  // the .npy header, then only the bytes of rows first..first+count (a remote file: fetched lazily)
  let r = await fetch(`${gateway}/sha1/${sha1}`, {headers: {Range: "bytes=0-127"}});
  const head = new Uint8Array(await r.arrayBuffer());
  const magic = String.fromCharCode(...head.slice(1, 6));
  const headerLen = head[8] | (head[9] << 8);
  const header = new TextDecoder().decode(head.slice(10, 10 + headerLen));
  const start = 10 + headerLen + first * 8, end = start + count * 8 - 1;
  r = await fetch(`${gateway}/sha1/${sha1}`, {headers: {Range: `bytes=${start}-${end}`}});
  const values = Array.from(new Float64Array(await r.arrayBuffer()));
  await report({stage: "range", status: r.status, contentRange: r.headers.get("content-range"),
                etag: r.headers.get("etag"), magic, header, values});
  const events = new EventSource(`${gateway}/feeds/${feed}/queue?follow=1`);
  events.onmessage = (e) => report({stage: "event", id: e.lastEventId, data: JSON.parse(e.data)});
  events.onerror = () => report({stage: "error", readyState: events.readyState});
}
main().catch((e) => report({stage: "exception", message: String(e)}));
</script></body></html>
"""


class PageServer:
    """Serves the page and collects what it POSTs to /result (a thread: test code only)."""

    def __init__(self, page: str):
        self.results: queue.Queue = queue.Queue()
        results = self.results

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = page.encode()
                self.send_response(200)
                self.send_header("content-type", "text/html")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                results.put(json.loads(self.rfile.read(int(self.headers["content-length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def next(self, stage: str, timeout: float = 30) -> dict:
        while True:
            result = self.results.get(timeout=timeout)
            assert result["stage"] not in ("exception",), result
            if result["stage"] == stage:
                return result


def start_chromium(url: str, profile) -> subprocess.Popen:
    chromium = shutil.which("chromium")
    assert chromium, "chromium is missing: run bash scripts/setup.sh"
    return subprocess.Popen(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}", url],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


@pytest.mark.timeout(120)
def test_browser_reads_a_remote_npy_range_and_live_feed_events(stack, tmp_path):
    _mount, daemon = stack
    a = daemon("a", "daemon", "--channel", "x", "--listen", "127.0.0.1:0")
    b = daemon("b", "daemon", "--channel", "x", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0")
    a.wait_log("listening on")
    arr = np.random.default_rng(1).standard_normal(500_000)  # 4 MB: several chunks, remote to B
    np.save(tmp_path / "signal.npy", arr)

    def on_a(*args: str) -> str:
        out = subprocess.run([KACHERYFS, *args], env=a.env, capture_output=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout.decode().strip()

    sha1 = on_a("store", str(tmp_path / "signal.npy"))[7:47]
    feed_id = on_a("feed", "create", "--label", "jobs")
    on_a("feed", "append", feed_id, "queue", '{"job": 1}')
    url = gateway_url(b)
    wait_until_connected(b, a)

    first, count = 300_000, 16
    page = PAGE % {"gateway": json.dumps(url), "sha1": json.dumps(sha1), "feed": json.dumps(feed_id),
                   "first": first, "count": count}
    with PageServer(page) as server:
        browser = start_chromium(server.url, tmp_path / "chromium-profile")
        try:
            seen = server.next("range")
            assert seen["status"] == 206 and seen["etag"] == f'"{sha1}"', seen
            assert seen["magic"] == "NUMPY" and "'<f8'" in seen["header"], seen
            assert seen["contentRange"].endswith(f"/{os.path.getsize(tmp_path / 'signal.npy')}")
            assert seen["values"] == arr[first:first + count].tolist()
            assert server.next("event") == {"stage": "event", "id": "0", "data": {"job": 1}}  # the backlog
            on_a("feed", "append", feed_id, "queue", '{"job": 2}')  # then live, pushed A -> B -> page
            assert server.next("event") == {"stage": "event", "id": "1", "data": {"job": 2}}
        finally:
            os.killpg(browser.pid, signal.SIGKILL)
            browser.wait(timeout=10)
    assert "Traceback" not in b.read_log()
