"""A NAT topology in network namespaces the test creates, for hole-punching tests and benchmarks.

    LAN 1 192.168.77.0/24            "public" 198.51.100.0/24             LAN 2 192.168.78.0/24
    A .10 --+                                                                +-- B .10
            br -- r1 (NAT) 198.51.100.2 ---- pub .1 / .5 ---- 198.51.100.6 r2 (NAT) -- br
    C .11 --+                    (the bootstrap runs in pub, at 198.51.100.1)

Routers MASQUERADE their LAN behind their WAN address (Linux conntrack keeps the source port when
it is free: an endpoint-independent mapping, so a punch can work) and, like a home router, drop
unsolicited new connections arriving on the WAN side (no RST that would abort a punch). With
``symmetric=("r2",)`` that router maps every connection to a random port (``masquerade
fully-random``), so the peer's punch goes to a port nobody holds and punching fails.
Optional ``rate_mbit`` puts a tbf rate limit on the WAN links (both directions). With ``nat=False``
the routers only route (no MASQUERADE, no firewall; pub routes each LAN to its router): the same
links and hops, with every host plainly reachable (the benchmark's direct-session control).

Every name carries a random tag; ``nat_topology()`` removes all of it in a ``finally`` (processes
started through ``Topology.popen`` first) and ``leaks(tag)`` says what would remain. Commands run
in a host with ``nsenter --net``: only the network namespace changes, so a FUSE mount made inside
is visible to the test (``ip netns exec`` would unshare the mount namespace too).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
from dataclasses import dataclass, field

PUBLIC_ADDR = "198.51.100.1"  # the bootstrap's address, in pub
WAN_ADDR = {"r1": "198.51.100.2", "r2": "198.51.100.6"}
HOST_ADDR = {"a": "192.168.77.10", "c": "192.168.77.11", "b": "192.168.78.10"}
ROUTER_OF = {"a": "r1", "c": "r1", "b": "r2"}


def available() -> str | None:
    """None if the topology can be built here, else why not (for pytest.skip)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft", "nsenter", "tc"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (bash scripts/setup.sh installs it)"
    return None


def _run(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, input=input)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {result.stderr.strip()}")
    return result


@dataclass
class Topology:
    tag: str
    symmetric: tuple[str, ...] = ()
    rate_mbit: float | None = None
    nat: bool = True
    procs: list[subprocess.Popen] = field(default_factory=list)

    def ns(self, name: str) -> str:
        """The namespace of 'pub', 'r1', 'r2', 'a', 'b' or 'c'."""
        return f"kfs-{self.tag}-{name}"

    def prefix(self, name: str) -> list[str]:
        """Prefix a command with this to run it in host ``name``'s network namespace."""
        return ["nsenter", f"--net=/run/netns/{self.ns(name)}"]

    def run(self, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return _run(*self.prefix(name), *args, check=check)

    def popen(self, name: str, args: list[str], **kw) -> subprocess.Popen:
        """A process in ``name``'s namespace, killed (with its process group) at teardown."""
        proc = subprocess.Popen([*self.prefix(name), *args], start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def addr(self, name: str) -> str:
        return PUBLIC_ADDR if name == "pub" else HOST_ADDR.get(name) or WAN_ADDR[name]

    def nft(self, router: str, rules: str) -> None:
        _run(*self.prefix(router), "nft", "-f", "-", input=rules)

    def forward_port(self, router: str, port: int, host: str, host_port: int) -> None:
        """A port forward on ``router``'s WAN address to ``host`` (the plain-TCP baseline)."""
        wan = f"w{router[1]}{self.tag}"
        self.nft(router, f"""
            table ip kfsfwd_{self.tag} {{
                chain pre {{ type nat hook prerouting priority dstnat; policy accept;
                    iifname "{wan}" tcp dport {port} dnat to {self.addr(host)}:{host_port}
                }}
            }}""")

    def block(self, router: str, addr: str) -> None:
        """Drop everything ``router`` receives to or from ``addr`` before conntrack sees it (a punch
        through it fails; the relay's path through pub is untouched). ``unblock`` lifts it."""
        self.nft(router, f"""
            table ip kfsblk_{self.tag} {{
                chain pre {{ type filter hook prerouting priority raw; policy accept;
                    ip daddr {addr} drop
                    ip saddr {addr} drop
                }}
            }}""")

    def unblock(self, router: str) -> None:
        self.run(router, "nft", "delete", "table", "ip", f"kfsblk_{self.tag}", check=False)

    def conntrack(self, router: str) -> str:
        return self.run(router, "cat", "/proc/net/nf_conntrack", check=False).stdout

    # ---- building ----------------------------------------------------------------------------
    def build(self) -> None:
        t = self.tag
        for name in ("pub", "r1", "r2", "a", "b", "c"):
            _run("ip", "netns", "add", self.ns(name))
            self.run(name, "ip", "link", "set", "lo", "up")
        for name in ("pub", "r1", "r2"):
            self.run(name, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        # WAN links: pub <-> r1, pub <-> r2 (/30 each)
        for i, router, pub_addr in ((1, "r1", "198.51.100.1/30"), (2, "r2", "198.51.100.5/30")):
            wan, pub_side = f"w{i}{t}", f"p{i}{t}"
            _run("ip", "link", "add", pub_side, "netns", self.ns("pub"), "type", "veth",
                 "peer", "name", wan, "netns", self.ns(router))
            self.run("pub", "ip", "addr", "add", pub_addr, "dev", pub_side)
            self.run(router, "ip", "addr", "add", f"{WAN_ADDR[router]}/30", "dev", wan)
            for ns, dev in (("pub", pub_side), (router, wan)):
                self.run(ns, "ip", "link", "set", dev, "up")
                if self.rate_mbit:
                    self.run(ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate",
                             f"{self.rate_mbit}mbit", "burst", "256kb", "latency", "50ms")
            self.run(router, "ip", "route", "add", "default", "via", pub_addr.split("/")[0])
            if not self.nat:  # plain routing: pub reaches each LAN through its router
                self.run("pub", "ip", "route", "add", f"192.168.{76 + i}.0/24", "via", WAN_ADDR[router])
                continue
            # the routers' own firewall and NAT
            mode = " fully-random" if router in self.symmetric else ""
            self.nft(router, f"""
                table ip kfsnat_{t} {{
                    chain post {{ type nat hook postrouting priority srcnat; policy accept;
                        oifname "{wan}" masquerade{mode}
                    }}
                }}
                table inet kfsfw_{t} {{
                    chain input {{ type filter hook input priority filter; policy accept;
                        iifname "{wan}" ct state new drop
                    }}
                    chain forward {{ type filter hook forward priority filter; policy accept;
                        iifname "{wan}" ct status dnat accept
                        iifname "{wan}" ct state new drop
                    }}
                }}""")
        # LANs: a bridge in each router, one veth per host
        for i, router in ((1, "r1"), (2, "r2")):
            br = f"l{i}{t}"
            self.run(router, "ip", "link", "add", br, "type", "bridge", "mcast_snooping", "0")
            self.run(router, "ip", "addr", "add", f"192.168.{76 + i}.1/24", "dev", br)
            self.run(router, "ip", "link", "set", br, "up")
        for host in ("a", "c", "b"):
            router = ROUTER_OF[host]
            inside, outside = f"e{host}{t}", f"v{host}{t}"
            _run("ip", "link", "add", inside, "netns", self.ns(host), "type", "veth",
                 "peer", "name", outside, "netns", self.ns(router))
            self.run(router, "ip", "link", "set", outside, "master", f"l{router[1]}{t}")
            self.run(router, "ip", "link", "set", outside, "up")
            self.run(host, "ip", "addr", "add", f"{HOST_ADDR[host]}/24", "dev", inside)
            self.run(host, "ip", "link", "set", inside, "up")
            gateway = HOST_ADDR[host].rsplit(".", 1)[0] + ".1"
            self.run(host, "ip", "route", "add", "default", "via", gateway)
            self.run(host, "ip", "route", "add", "224.0.0.0/4", "dev", inside)  # LAN beacons

    def teardown(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
        for name in ("a", "b", "c", "r1", "r2", "pub"):  # veths, bridges and nft tables go with them
            _run("ip", "netns", "del", self.ns(name), check=False)


def leaks(tag: str) -> list[str]:
    """Namespaces or links carrying ``tag`` that still exist (in the root namespace)."""
    names = _run("ip", "netns", "list").stdout.split()
    links = _run("ip", "-o", "link").stdout
    return [n for n in names if tag in n] + [line.split(":")[1].strip() for line in links.splitlines()
                                             if tag in line]


@contextlib.contextmanager
def nat_topology(symmetric: tuple[str, ...] = (), rate_mbit: float | None = None, nat: bool = True):
    """Build the topology, yield it, and always remove it (also when building fails half way)."""
    topo = Topology(secrets.token_hex(3), symmetric=symmetric, rate_mbit=rate_mbit, nat=nat)
    try:
        topo.build()
        yield topo
    finally:
        topo.teardown()
        left = leaks(topo.tag)
        if left:
            raise RuntimeError(f"NAT topology left behind: {left}")
