"""`kacheryfs status` and `find` as a new user reads them: channel names, the bootstrap shown as a
bootstrap, current rates (not bytes over the session's age), files without their chunk
manifests, and --json for scripts. Pure parts first, then real daemons over 127.0.0.1."""

from __future__ import annotations

import json

import pytest

from kacheryfs.cli_status import status_lines
from kacheryfs.net.rates import RateMeter

from .conftest import write_random_file
from .test_mount_network import LOCAL, start_bootstrap, wait_until_connected


def test_rate_is_over_the_last_seconds_not_the_session():
    meter = RateMeter(started=1000.0)
    meter.add(10 << 20, 1000.5)  # a burst in the first second
    assert meter.rate(1001.0) == pytest.approx(10 << 20, rel=0.01)  # over the 1 s the session has lived
    for t in range(1001, 1005):
        meter.add(1 << 20, t + 0.5)  # then 1 MiB/s
    assert meter.rate(1005.0) == pytest.approx((4 << 20) / 4.0, rel=0.01)  # the burst has left the window
    assert meter.rate(1100.0) == 0  # idle now: 0, whatever was sent an hour ago


PEER = {"node": "b" * 64, "role": "peer", "remote": "127.0.0.1:4000", "direction": "outbound", "path": "direct",
        "channels": ["lab"], "sent": 3 << 20, "received": 5 << 30, "rate_in": 2 << 20, "rate_out": 0, "seconds": 3600}
BOOT = {**PEER, "node": "c" * 64, "role": "bootstrap", "remote": "127.0.0.1:7000", "channels": [],
        "received": 1000, "rate_in": 10}
INFO = {"storage_dir": "/s", "objects": 2, "bytes": 3 << 20, "cached_bytes": 0, "names": 1, "disk_free": 1 << 30,
        "disk_total": 2 << 30, "mounts": [],
        "daemon": {"node_id": "a" * 64, "listen": ["0.0.0.0:4000"], "channels": ["lab", "ephys"],
                   "fetched_bytes": 0, "peers": [BOOT, PEER]}}


def test_status_text():
    text = "\n".join(status_lines(INFO))
    assert "objects:  2 files (3.0 MiB" in text
    assert "channels: lab, ephys" in text
    assert f"bootstrap: {'c' * 16}  127.0.0.1:7000" in text
    assert "peers:    1\n" in text  # the bootstrap is not a peer
    assert f"{'b' * 16}  direct       127.0.0.1:4000" in text
    assert "lab  in 2.0 MiB/s  out 0 B/s  (total in 5.0 GiB, out 3.0 MiB)" in text
    no_channel = {**INFO, "daemon": {**INFO["daemon"], "channels": [], "peers": []}}
    assert "channels: none (join one with --channel NAME" in "\n".join(status_lines(no_channel))
    assert "daemon:   not running" in status_lines({**INFO, "daemon": None})


@pytest.mark.timeout(120)
def test_status_and_find_between_real_daemons(stack, tmp_path):
    _mount, daemon = stack
    boot, port = start_bootstrap(daemon)
    via = ["--bootstrap", f"127.0.0.1:{port}"]
    a = daemon("a", "daemon", "--channel", "lab", "--channel", "ephys", *LOCAL, *via)
    b = daemon("b", "daemon", "--channel", "lab", *LOCAL, *via)
    a.wait_log("listening on")
    wait_until_connected(b, a)
    big = tmp_path / "big.bin"
    write_random_file(big, 24 << 20, seed=1)
    from .test_directories import run

    uri = run(a.env, "store", str(big)).stdout.decode().strip()
    found = json.loads(run(b.env, "find", uri, "--json").stdout)
    assert found["sha1"] == uri[7:47] and len(found["providers"]) == 1 and found["providers"][0]["size"] == 24 << 20
    missing = run(b.env, "find", "0" * 40, "--json", check=False)
    assert missing.returncode == 1 and json.loads(missing.stdout)["providers"] == []
    run(b.env, "load", uri)

    status = json.loads(run(b.env, "status", "--json").stdout)
    node = status["daemon"]
    assert node["channels"] == ["lab"]
    roles = sorted(p["role"] for p in node["peers"])
    assert roles == ["bootstrap", "peer"], node["peers"]
    peer = next(p for p in node["peers"] if p["role"] == "peer")
    assert peer["channels"] == ["lab"]  # the channels it shares with this node, by name
    assert peer["received"] > 24 << 20
    assert peer["rate_in"] > 1 << 20  # just now: a current rate
    assert status["objects"] == 1  # the file, not its chunk manifest
    text = run(b.env, "status").stdout.decode()
    assert "channels: lab\n" in text and "bootstrap: " in text and "peers:    1\n" in text
    a_status = json.loads(run(a.env, "status", "--json").stdout)["daemon"]
    assert a_status["channels"] == ["lab", "ephys"]
    boot_text = run(boot.env, "status").stdout.decode()
    assert "(a bootstrap)" in boot_text and "nodes:    2 connected" in boot_text
