"""Connection admission limits and log throttling (pure: no sockets)."""

from kacheryfs.config import Config
from kacheryfs.net.admission import Admission, Limits, LogThrottle, Ticket


def test_per_address_handshake_limit_and_release():
    gate = Admission(Limits(max_handshakes=100, max_handshakes_per_ip=2, max_inbound_per_ip=3))
    t1, t2 = gate.admit("10.0.0.1"), gate.admit("10.0.0.1")
    assert isinstance(t1, Ticket) and isinstance(t2, Ticket)
    assert "handshakes from 10.0.0.1" in gate.admit("10.0.0.1")
    assert isinstance(gate.admit("10.0.0.2"), Ticket)  # another address is not affected
    t1.authenticated()  # a session now: no longer a handshake, still a connection
    t3 = gate.admit("10.0.0.1")
    assert isinstance(t3, Ticket)
    t3.authenticated()
    assert "connections from 10.0.0.1" in gate.admit("10.0.0.1")  # 3 connections is the cap
    for t in (t1, t2, t3, t1):  # release is idempotent
        t.release()
    assert gate.handshaking.get("10.0.0.1", 0) == 0 and gate.inbound.get("10.0.0.1", 0) == 0
    assert gate.refused == 2


def test_global_handshake_limit():
    gate = Admission(Limits(max_handshakes=3, max_handshakes_per_ip=10, max_inbound_per_ip=10))
    tickets = [gate.admit(f"10.0.0.{i}") for i in range(3)]
    assert "3 handshakes in progress" in gate.admit("10.0.0.9")
    tickets[0].release()
    assert isinstance(gate.admit("10.0.0.9"), Ticket)


def test_limits_come_from_the_config():
    env = {"KACHERYFS_HANDSHAKE_TIMEOUT": "2.5", "KACHERYFS_MAX_HANDSHAKES_PER_IP": "4"}
    limits = Limits.from_config(Config.from_env("/tmp/s", "/tmp/c", environ=env))
    assert limits.handshake_timeout == 2.5 and limits.max_handshakes_per_ip == 4
    assert limits.max_inbound_per_ip == Limits().max_inbound_per_ip
    import pytest

    from kacheryfs.config import ConfigError

    with pytest.raises(ConfigError, match="whole number"):
        Config.from_env("/tmp/s", "/tmp/c", environ={"KACHERYFS_MAX_INBOUND_PER_IP": "lots"})
    with pytest.raises(ConfigError, match="positive"):
        Config.from_env("/tmp/s", "/tmp/c", environ={"KACHERYFS_HANDSHAKE_TIMEOUT": "-1"})


def test_log_throttle_allows_a_burst_then_counts_what_it_skips():
    throttle = LogThrottle(burst=3, rate=1.0)
    assert [throttle.allow(0.0) for _ in range(5)] == [0, 0, 0, None, None]
    assert throttle.allow(1.0) == 2  # one token back after a second; two lines were skipped
    assert throttle.allow(1.0) is None
