"""The one source of truth for configuration: a frozen dataclass built from flags and environment."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

DEFAULT_STORAGE_DIR = "~/kachery-storage"
DEFAULT_CONFIG_DIR = "~/.kachery-p2p"
# A fixed port (not a random one): firewall rules and port forwards are written once, and the
# address a node registers stays valid across restarts. 14507 is the port kachery-p2p's daemons used
# (UDP) by default; unassigned by IANA. Taken (a second daemon here)? The default falls back to any
# free port with a warning; an explicit --listen that is taken is an error.
DEFAULT_LISTEN_PORT = 14507
DEFAULT_LISTEN = f"0.0.0.0:{DEFAULT_LISTEN_PORT}"
DEFAULT_FIND_TIMEOUT = 3.0
DEFAULT_CACHE_SIZE = 100 << 30  # copies fetched from peers; stored-here files are never evicted
DEFAULT_DHT_LISTEN = "0.0.0.0:0"
DEFAULT_MAX_PEERS = 16  # sessions a node dials; it accepts up to twice that

DEFAULT_DISCOVERY_DIR = Path("/tmp/kacheryfs-discovery")  # shared by every local user's nodes
API_SOCKET = "api.sock"  # in the config dir: the running daemon's local API (api/messages.py)
FEEDS_DB = "feeds.sqlite3"  # in the storage dir
FEED_KEYS_DIR = "feeds"  # in the config dir: private keys of owned feeds
# Connections that have not proved anything yet (net/admission.py): see docs/security.md.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0  # seconds to complete a handshake, however idle or slow the peer
DEFAULT_MAX_HANDSHAKES = 256  # handshakes in progress at once, from everyone
DEFAULT_MAX_HANDSHAKES_PER_IP = 16  # handshakes in progress at once from one address
DEFAULT_MAX_INBOUND_PER_IP = 128  # inbound connections (handshaking or not) from one address



@dataclass(frozen=True)
class Config:
    storage_dir: Path
    config_dir: Path
    channels: tuple[str, ...] = field(default_factory=tuple)
    channel_secret_files: tuple[tuple[str, Path], ...] = ()  # (channel name, file holding its secret)
    listen: str | None = DEFAULT_LISTEN  # None: accept no inbound connections
    listen_fallback: bool = False  # the default address: if its port is taken, listen on any free port
    bootstraps: tuple[str, ...] = ()
    find_timeout: float = DEFAULT_FIND_TIMEOUT
    discovery_dir: Path = DEFAULT_DISCOVERY_DIR  # KACHERYFS_DISCOVERY_DIR
    running_dir: Path = Path(DEFAULT_CONFIG_DIR).expanduser() / "running"  # this user's running daemons (running.py)
    cache_size: int = DEFAULT_CACHE_SIZE  # bytes of cached copies kept (LRU)
    lan_discovery: bool = True  # multicast beacons when no bootstrap; KACHERYFS_LAN_DISCOVERY=0 turns off
    serve_rate_limit: float | None = None  # bytes/s this node serves at most; KACHERYFS_TEST_SERVE_RATE (benchmarks)
    dht: bool = False  # discovery through the mainline DHT: --dht, KACHERYFS_DHT=1, or any --dht-bootstrap
    dht_bootstrap: tuple[str, ...] = ()  # DHT nodes to join through; none: the public mainline routers
    dht_listen: str = DEFAULT_DHT_LISTEN  # UDP address of the DHT node; KACHERYFS_DHT_LISTEN
    max_peers: int = DEFAULT_MAX_PEERS  # sessions a node opens by itself; KACHERYFS_MAX_PEERS
    swarming: bool = True  # serve objects while downloading them; KACHERYFS_SWARM=0 (benchmark baseline)
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT  # KACHERYFS_HANDSHAKE_TIMEOUT
    max_handshakes: int = DEFAULT_MAX_HANDSHAKES  # KACHERYFS_MAX_HANDSHAKES
    max_handshakes_per_ip: int = DEFAULT_MAX_HANDSHAKES_PER_IP  # KACHERYFS_MAX_HANDSHAKES_PER_IP
    max_inbound_per_ip: int = DEFAULT_MAX_INBOUND_PER_IP  # KACHERYFS_MAX_INBOUND_PER_IP
    relay_limits: "RelayLimits | None" = None  # a bootstrap's relay limits (--relay-* flags); None: defaults
    http: tuple[str, int] | None = None  # the HTTP gateway's address (--http); None: no gateway
    allow_other: bool = False  # other local users may read the mount (--allow-other)
    http_env: str | None = None  # KACHERY_P2P_API_PORT, unparsed: the gateway's port when --http is not given

    def http_for_daemon(self) -> tuple[tuple[str, int] | None, bool]:
        """(address of the HTTP gateway or None, whether it is required). ``--http`` is required: a
        taken port is an error. KACHERY_P2P_API_PORT is a default: a taken port is a warning."""
        if self.http is not None:
            return self.http, True
        if self.http_env is None:
            return None, False
        text = self.http_env.strip()
        if not text.isdigit() or not 1 <= int(text) <= 65535:
            raise ConfigError(f"KACHERY_P2P_API_PORT={self.http_env!r} is not a port number (1-65535); "
                              "it sets the HTTP gateway's loopback port (unset it to serve no HTTP)")
        return ("127.0.0.1", int(text)), False

    @classmethod
    def from_env(
        cls,
        storage_dir: str | os.PathLike | None = None,
        config_dir: str | os.PathLike | None = None,
        channels: tuple[str, ...] | list[str] = (),
        environ: dict[str, str] | None = None,
        channel_secret_files: tuple[str, ...] | list[str] = (),
        listen: str | None = None,  # None: the default (DEFAULT_LISTEN); "none": no listening
        bootstraps: tuple[str, ...] | list[str] = (),
        find_timeout: float = DEFAULT_FIND_TIMEOUT,
        cache_size: str | int | None = None,
        dht: bool | None = None,
        dht_bootstrap: tuple[str, ...] | list[str] = (),
        dht_listen: str | None = None,
        max_peers: int | None = None,
        relay_circuit_bytes: str | int | None = None,
        relay_circuit_seconds: float | None = None,
        relay_node_circuits: int | None = None,
        relay_node_bytes: str | int | None = None,
        http: str | None = None,
        allow_other: bool = False,
    ) -> "Config":
        """Flags win over environment variables, which win over defaults."""
        env = os.environ if environ is None else environ
        storage = storage_dir or env.get("KACHERY_STORAGE_DIR") or DEFAULT_STORAGE_DIR
        listen_label = "--listen"
        if listen is None and env.get("KACHERYFS_LISTEN"):
            listen, listen_label = env["KACHERYFS_LISTEN"], "KACHERYFS_LISTEN"
        config = config_dir or env.get("KACHERY_P2P_CONFIG_DIR") or DEFAULT_CONFIG_DIR
        # KACHERY_P2P_API_PORT was kachery-p2p's local HTTP port, which web tools talked to: here it is
        # the HTTP gateway's loopback port when --http is not given (checked only where a daemon starts,
        # so a bad value never breaks commands that do not serve; see http_for_daemon).
        return cls(
            storage_dir=_expand(storage, env),
            config_dir=_expand(config, env),
            channels=tuple(dict.fromkeys(channels)),
            channel_secret_files=_pair_secret_files(tuple(channels), tuple(channel_secret_files)),
            listen=_listen(listen, listen_label),
            listen_fallback=listen is None,
            bootstraps=tuple(_checked_address(b, "--bootstrap", zero_port=False) for b in bootstraps),
            find_timeout=find_timeout,
            cache_size=parse_size(cache_size) if cache_size is not None else DEFAULT_CACHE_SIZE,
            discovery_dir=Path(env.get("KACHERYFS_DISCOVERY_DIR") or DEFAULT_DISCOVERY_DIR),
            running_dir=_running_dir(env),
            lan_discovery=env.get("KACHERYFS_LAN_DISCOVERY", "1") not in ("0", "no", "false", "off"),
            serve_rate_limit=_positive_float(env.get("KACHERYFS_TEST_SERVE_RATE"), "KACHERYFS_TEST_SERVE_RATE"),
            dht=_dht_on(dht, dht_bootstrap, env),
            dht_bootstrap=tuple(_check_hostport(b, "--dht-bootstrap") for b in dht_bootstrap),
            dht_listen=_check_hostport(dht_listen or env.get("KACHERYFS_DHT_LISTEN") or DEFAULT_DHT_LISTEN,
                                       "--dht-listen"),
            max_peers=_max_peers(max_peers, env),
            swarming=env.get("KACHERYFS_SWARM", "1") not in ("0", "no", "false", "off"),
            handshake_timeout=_positive_float(env.get("KACHERYFS_HANDSHAKE_TIMEOUT"), "KACHERYFS_HANDSHAKE_TIMEOUT")
            or DEFAULT_HANDSHAKE_TIMEOUT,
            max_handshakes=_positive_int(env, "KACHERYFS_MAX_HANDSHAKES", DEFAULT_MAX_HANDSHAKES),
            max_handshakes_per_ip=_positive_int(env, "KACHERYFS_MAX_HANDSHAKES_PER_IP", DEFAULT_MAX_HANDSHAKES_PER_IP),
            max_inbound_per_ip=_positive_int(env, "KACHERYFS_MAX_INBOUND_PER_IP", DEFAULT_MAX_INBOUND_PER_IP),
            relay_limits=_relay_limits(relay_circuit_bytes, relay_circuit_seconds, relay_node_circuits,
                                       relay_node_bytes),
            http=parse_http_bind(http) if http else None,
            http_env=None if http else (env.get("KACHERY_P2P_API_PORT") or None),
            allow_other=allow_other,
        )

    @property
    def mounts_dir(self) -> Path:
        """Where running mounts register themselves (one JSON file per daemon pid)."""
        return self.config_dir / "mounts"

    @property
    def feeds_db(self) -> Path:
        return self.storage_dir / FEEDS_DB

    @property
    def feed_keys_dir(self) -> Path:
        return self.config_dir / FEED_KEYS_DIR

    def channel_keys(self) -> dict[str, tuple[str, bytes]]:
        """channel id -> (name, key) for every channel joined; private ones read their secret file."""
        from .crypto import channel_id, channel_key

        secrets = dict(self.channel_secret_files)
        out = {}
        for name in self.channels:
            secret = _read_secret(secrets[name]) if name in secrets else None
            key = channel_key(name, secret)
            out[channel_id(key)] = (name, key)
        return out


def _running_dir(env) -> Path:
    """Where this user's daemons register, whatever their config dirs, so the CLI and Python find
    one started with other flags: KACHERYFS_RUNTIME_DIR, $XDG_RUNTIME_DIR/kacheryfs, else
    ~/.kachery-p2p/running (the default config dir)."""
    if env.get("KACHERYFS_RUNTIME_DIR"):
        return _expand(env["KACHERYFS_RUNTIME_DIR"], env)
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "kacheryfs"
    return _expand(DEFAULT_CONFIG_DIR, env) / "running"


def _expand(path: str | os.PathLike, env) -> Path:
    """``~`` is the HOME of the environment given (the process's when none is)."""
    text = os.fspath(path)
    if (text == "~" or text.startswith("~/")) and env.get("HOME"):
        text = env["HOME"] + text[1:]
    return Path(text).expanduser().absolute()


def _relay_limits(circuit_bytes, circuit_seconds, node_circuits, node_bytes):
    from .protocol.relay_limits import RelayLimits

    defaults = RelayLimits()
    limits = RelayLimits(
        circuit_bytes=parse_size(circuit_bytes) if circuit_bytes is not None else defaults.circuit_bytes,
        circuit_seconds=circuit_seconds if circuit_seconds is not None else defaults.circuit_seconds,
        node_circuits=node_circuits if node_circuits is not None else defaults.node_circuits,
        node_bytes=parse_size(node_bytes) if node_bytes is not None else defaults.node_bytes)
    if min(limits.circuit_bytes, limits.circuit_seconds, limits.node_circuits, limits.node_bytes) <= 0:
        raise ConfigError("relay limits must be positive")
    return limits


def parse_hostport(text: str, what: str = "address", zero_port: bool = True) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` (an empty host is 0.0.0.0); the port must fit in 16 bits
    (1 and up where a port to dial is meant: ``zero_port=False``)."""
    host, sep, port = str(text).strip().rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"{what} {text!r}: expected HOST:PORT (e.g. 0.0.0.0:{DEFAULT_LISTEN_PORT})")
    lowest = 0 if zero_port else 1
    if not lowest <= int(port) <= 65535:
        raise ConfigError(f"{what} {text!r}: the port must be {lowest} to 65535")
    return host.strip("[]") or "0.0.0.0", int(port)


def _checked_address(text: str, what: str, zero_port: bool = True) -> str:
    parse_hostport(text, what, zero_port)
    return str(text).strip()


def _listen(text: str | None, label: str = "--listen") -> str | None:
    if text is None:
        return DEFAULT_LISTEN
    if text.strip().lower() == "none":
        return None
    return _checked_address(text, label)


def parse_size(text: str | int) -> int:
    """'500M', '50G', '1T' or a number of bytes."""
    if isinstance(text, int):
        return text
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    raw = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        value = int(float(raw[:-1]) * units[raw[-1]]) if raw and raw[-1] in units else int(raw)
    except ValueError:
        raise ConfigError(f"{text!r} is not a size (e.g. 500M, 50G)") from None
    if value < 0:
        raise ConfigError(f"{text!r} is not a size (e.g. 500M, 50G)")
    return value


def parse_http_bind(text: str) -> tuple[str, int]:
    """``PORT`` (loopback), ``HOST:PORT`` or ``[IPv6]:PORT``: any other address than loopback only
    when one is written out."""
    host, sep, port = text.strip().rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text.strip()
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--http {text!r}: expected PORT or HOST:PORT (e.g. 127.0.0.1:8080)")
    return host, int(port)


def _dht_on(flag: bool | None, bootstrap, env) -> bool:
    if flag is not None:
        if flag is False and bootstrap:
            raise ConfigError("--no-dht with --dht-bootstrap: choose one")
        return flag
    return bool(bootstrap) or env.get("KACHERYFS_DHT", "0") in ("1", "yes", "true", "on")


def _check_hostport(text: str, what: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{what} wants HOST:PORT, got {text!r}")
    return text


def _max_peers(flag: int | None, env) -> int:
    text = str(flag) if flag is not None else env.get("KACHERYFS_MAX_PEERS") or str(DEFAULT_MAX_PEERS)
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"max peers {text!r} is not a number") from None
    if value < 1:
        raise ConfigError("max peers must be at least 1")
    return value


def _positive(text: str, name: str, kind: type, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not {what}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be positive")
    return value


def _positive_float(text: str | None, name: str) -> float | None:
    return _positive(text, name, float, "a number") if text else None


def _positive_int(env, name: str, default: int) -> int:
    text = env.get(name)
    return _positive(text, name, int, "a whole number") if text else default


def _pair_secret_files(channels: tuple[str, ...], specs: tuple[str, ...]) -> tuple[tuple[str, Path], ...]:
    """``NAME=FILE``, or just ``FILE`` when exactly one channel is given."""
    pairs = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            if len(channels) != 1:
                raise ConfigError("with several --channel, write --channel-secret-file NAME=FILE")
            name, path = channels[0], spec
        if name not in channels:
            raise ConfigError(f"--channel-secret-file names channel {name!r}, which is not joined")
        pairs.append((name, Path(path).expanduser()))
    return tuple(pairs)


def _read_secret(path: Path) -> bytes:
    try:
        data = path.read_bytes().strip()
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"cannot read channel secret file {path}: {exc.strerror}") from None
    if not data:
        raise ConfigError(f"channel secret file {path} is empty")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        import logging

        logging.getLogger(__name__).warning("channel secret file %s is readable by others (chmod 600 it)", path)
    return data
