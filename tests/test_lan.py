"""LAN discovery with multicast beacons, between two network namespaces this test creates."""

import os
import secrets
import shutil
import subprocess
import time

import pytest

from kacheryfs.crypto import channel_key
from kacheryfs.net.lan_discovery import encode_beacon, match_beacon

from .conftest import write_random_file
from .mounting import KACHERYFS, cli_env


def test_beacon_tags_only_match_members():
    x, y = channel_key("x"), channel_key("y")
    beacon = encode_beacon("a" * 64, 4000, [x], stamp=1000)
    assert match_beacon(beacon, [y, x], "b" * 64) == ("a" * 64, 4000)
    assert match_beacon(beacon, [y], "b" * 64) is None
    assert match_beacon(beacon, [x], "a" * 64) is None  # our own
    assert b'"x"' not in beacon and x.hex().encode() not in beacon
    forged = beacon.replace(b"4000", b"4001")  # tags bind the port
    assert match_beacon(forged, [x], "b" * 64) is None
    for junk in (b"", b"{}", b"[1]", b"\xff" * 10, b'{"node": 1, "port": 2, "t": 3, "tags": []}', b"x" * 2000):
        assert match_beacon(junk, [x], "b" * 64) is None


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def two_namespaces():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2")
    tag = secrets.token_hex(3)
    a, b = f"kfs-{tag}-a", f"kfs-{tag}-b"
    va, vb = f"kfa{tag}", f"kfb{tag}"
    try:
        ip("netns", "add", a)
        ip("netns", "add", b)
        ip("link", "add", va, "type", "veth", "peer", "name", vb)
        ip("link", "set", va, "netns", a)
        ip("link", "set", vb, "netns", b)
        for ns, dev, addr in ((a, va, "10.77.0.1/24"), (b, vb, "10.77.0.2/24")):
            ip("-n", ns, "addr", "add", addr, "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", dev)
        yield a, b
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.mark.timeout(120)
def test_nodes_on_a_lan_find_each_other_without_a_server(two_namespaces, tmp_path):
    ns_a, ns_b = two_namespaces
    envs = {}
    for name in ("a", "b"):
        env = cli_env(tmp_path / name / "storage", tmp_path / name / "config", netns=True)
        env["KACHERYFS_DISCOVERY_DIR"] = str(tmp_path / name / "discovery")  # not shared: LAN only
        env["KACHERYFS_LAN_DISCOVERY"] = "1"
        envs[name] = env
    src = tmp_path / "data.bin"
    digest = write_random_file(src, 5 << 20, seed=21)
    uri = subprocess.run([KACHERYFS, "store", str(src)], env=envs["a"], check=True, capture_output=True,
                         text=True).stdout.strip()
    procs = []
    try:
        for name, ns in (("a", ns_a), ("b", ns_b)):
            log = open(tmp_path / f"{name}.log", "wb")
            procs.append(subprocess.Popen(
                ["ip", "netns", "exec", ns, KACHERYFS, "daemon", "--channel", "x", "--listen", "0.0.0.0:0"],
                env=envs[name], stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + 30
        while "connected <peer" not in (tmp_path / "b.log").read_text():
            assert time.monotonic() < deadline, (tmp_path / "b.log").read_text()
            time.sleep(0.1)
        assert "10.77.0.1" in (tmp_path / "b.log").read_text()  # dialled over the LAN
        dest = tmp_path / "out.bin"
        result = subprocess.run([KACHERYFS, "load", uri, "--dest", str(dest)], env=envs["b"],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        import hashlib

        assert hashlib.sha1(dest.read_bytes()).hexdigest() == digest
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
