"""The NAT topology itself (tests/nat_topology.py): raw TCP simultaneous open through two
port-preserving MASQUERADE routers works, through a random-port (symmetric) one it does not, and
nothing the topology made survives it, also when the test body fails."""

import subprocess
import sys
import time

import pytest

from .nat_topology import HOST_ADDR, PUBLIC_ADDR, WAN_ADDR, available, leaks, nat_topology

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))

# One end of a raw punch: listen on PORT (SO_REUSEPORT), connect from PORT to an observer in pub
# (this creates the NAT mapping and tells us our observed address), then at START connect from PORT
# to the peer's observed address. Prints one JSON line.
PUNCH = r"""
import json, socket, sys, time
port, observer, start, tries = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
def bound():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("0.0.0.0", port))
    return s
listener = bound(); listener.listen()
o = bound(); o.connect((observer, 9000)); o.sendall(b"?")
observed = json.loads(o.recv(100)); print(json.dumps({"observed": observed}), flush=True)
peer = json.loads(sys.stdin.readline())
time.sleep(max(0.0, start - time.time()))
for attempt in range(tries):
    s = bound(); s.settimeout(1.5)
    try:
        s.connect(tuple(peer)); s.sendall(b"hi"); ok = s.recv(2) == b"hi"
        print(json.dumps({"punched": ok, "attempt": attempt}), flush=True); break
    except OSError as exc:
        s.close()
else:
    print(json.dumps({"punched": False}), flush=True)
"""

OBSERVER = r"""
import json, socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 9000)); s.listen()
for _ in range(2):
    c, addr = s.accept(); c.recv(1); c.sendall(json.dumps(addr).encode()); c.close()
"""


def raw_punch(topo) -> tuple[dict, dict]:
    import json

    topo.popen("pub", [sys.executable, "-c", OBSERVER])
    time.sleep(0.3)
    start = time.time() + 0.5
    ends = {}
    for host in ("a", "b"):
        ends[host] = topo.popen(host, [sys.executable, "-c", PUNCH, "40000", PUBLIC_ADDR, str(start), "2"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    observed = {h: json.loads(p.stdout.readline())["observed"] for h, p in ends.items()}
    ends["a"].stdin.write(json.dumps(observed["b"]) + "\n"); ends["a"].stdin.flush()
    ends["b"].stdin.write(json.dumps(observed["a"]) + "\n"); ends["b"].stdin.flush()
    results = {h: json.loads(p.stdout.readline()) for h, p in ends.items()}
    return observed, results


@pytest.mark.timeout(60)
def test_simultaneous_open_punches_through_two_masquerading_routers():
    with nat_topology() as topo:
        tag = topo.tag
        observed, results = raw_punch(topo)
        # the bootstrap sees each router's WAN address, and the port is kept (endpoint-independent)
        assert observed["a"] == [WAN_ADDR["r1"], 40000]
        assert observed["b"] == [WAN_ADDR["r2"], 40000]
        assert results["a"]["punched"] and results["b"]["punched"]
        # unsolicited connections from outside are dropped: B cannot dial A's LAN address or router
        probe = topo.run("b", sys.executable, "-c", "import socket; socket.create_connection(('%s', 40001), 1)"
                         % WAN_ADDR["r1"], check=False)
        assert probe.returncode != 0 and "timed out" in probe.stderr
    assert leaks(tag) == []


@pytest.mark.timeout(60)
def test_random_port_nat_defeats_the_punch():
    with nat_topology(symmetric=("r2",)) as topo:
        observed, results = raw_punch(topo)
        assert observed["a"] == [WAN_ADDR["r1"], 40000]
        assert observed["b"][0] == WAN_ADDR["r2"]
        assert not results["a"]["punched"] and not results["b"]["punched"]


def test_hosts_on_one_lan_reach_each_other_and_everything_is_removed_after_a_failure():
    tag = None
    with pytest.raises(ZeroDivisionError):
        with nat_topology() as topo:
            tag = topo.tag
            topo.popen("c", ["sleep", "60"])  # a process still running in a namespace at teardown
            probe = topo.run("a", sys.executable, "-c", "import socket; socket.create_connection(('%s', 9), 1)"
                             % HOST_ADDR["c"], check=False)
            assert "refused" in probe.stderr  # C answered (RST): same LAN, no NAT in between
            1 / 0
    assert tag and leaks(tag) == []
