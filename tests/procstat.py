"""What the fault tests read about a running daemon: memory, open files, listening port, counters."""

from __future__ import annotations

import json
import os
import re
import time


def rss_bytes(pid: int) -> int:
    return _status_kib(pid, "VmRSS") * 1024


def peak_rss_bytes(pid: int) -> int:
    """The highest resident size the process has had (VmHWM)."""
    return _status_kib(pid, "VmHWM") * 1024


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_fds_at_most(pid: int, limit: int, timeout: float) -> int:
    """Polls until the process has at most ``limit`` open fds; returns the last count."""
    deadline = time.monotonic() + timeout
    while True:
        count = open_fds(pid)
        if count <= limit or time.monotonic() > deadline:
            return count
        time.sleep(0.2)


def listen_port(log_text: str) -> int:
    found = re.search(r"listening on 127\.0\.0\.1:(\d+)", log_text)
    assert found, log_text
    return int(found.group(1))


def node_status(mountpoint) -> dict:
    """The node's counters, from the mount root's stats attribute."""
    return json.loads(os.getxattr(mountpoint, "user.kachery.stats"))
