"""Hole-punch coordination and relay limits, pure: messages, state machines, the bootstrap's checks."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kacheryfs.protocol.messages import (
    Observed, PeersJoined, PunchIncoming, PunchReady, PunchReply, PunchRequest, PunchSync, RemoteProtocolError,
    decode_message,
)
from kacheryfs.protocol.punch import (
    PUNCH_ATTEMPTS, RETRY_DELAYS, Dial, InitiatorPunch, PunchBroker, Punched, PunchFailed, PunchRefused, ResponderPunch,
    SendSync,
)
from kacheryfs.protocol.relay_limits import RelayLimitExceeded, RelayLimits, RelayTable

from .test_protocol import connect

A, B, C = "a" * 64, "b" * 64, "c" * 64
A_OBS, B_OBS = "198.51.100.2:4000", "198.51.100.6:4001"

PUNCH_MESSAGES = [
    Observed(addr=A_OBS),
    Observed(addr="[2001:db8::1]:443"),
    PunchRequest(req=3, target=B, addrs=[A_OBS]),
    PunchIncoming(punch=1, peer=A, addrs=[A_OBS, "192.168.77.10:4000"]),
    PunchReply(punch=1, addrs=[B_OBS]),
    PunchReply(punch=1, addrs=[], accept=False),
    PunchReady(req=3, punch=1, addrs=[B_OBS]),
    PunchSync(punch=1, attempt=2),
    PeersJoined(peers=[{"node": A, "addrs": [A_OBS], "channel_id": "0" * 32, "observed": A_OBS, "nat": True}]),
]


# ---- messages ----------------------------------------------------------------------------------
@pytest.mark.parametrize("msg", PUNCH_MESSAGES, ids=lambda m: type(m).__name__)
def test_punch_messages_round_trip(msg):
    assert decode_message(msg.encode()) == msg


@pytest.mark.parametrize("byte_by_byte", [False, True])
def test_punch_messages_through_a_connection(byte_by_byte):
    a, b, _ea, _eb = connect()
    for msg in PUNCH_MESSAGES:
        data = a.send(msg)
        pieces = [data[i:i + 1] for i in range(len(data))] if byte_by_byte else [data]
        events = []
        for piece in pieces:
            b.receive_data(piece)
            while (event := b.next_event()) is not None:
                events.append(event)
        assert [e.message for e in events] == [msg]


@pytest.mark.parametrize("bad", [
    Observed(addr="example.org:80"),            # names, not IP literals
    Observed(addr="198.51.100.2"),              # no port
    Observed(addr="198.51.100.2:0"),
    Observed(addr="198.51.100.2:70000"),
    PunchRequest(req=1, target=B, addrs=[]),    # nowhere to dial
    PunchRequest(req=1, target="b" * 63, addrs=[A_OBS]),
    PunchRequest(req=1, target=B, addrs=[A_OBS] * 5),
    PunchRequest(req=-1, target=B, addrs=[A_OBS]),
    PunchIncoming(punch=0, peer=A, addrs=[A_OBS]),
    PunchReply(punch=1, addrs=[]),              # accepting needs addresses
    PunchSync(punch=1, attempt=0),
    PunchSync(punch=1, attempt=17),
    PeersJoined(peers=[{"node": A}] * 513),
], ids=lambda m: type(m).__name__)
def test_bad_punch_messages_are_protocol_errors(bad):
    with pytest.raises(RemoteProtocolError):
        decode_message(bad.encode())


VALID = [m.encode() for m in PUNCH_MESSAGES]


@settings(max_examples=5_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.tuples(st.sampled_from(VALID), st.integers(0, 120), st.integers(0, 255)).map(
    lambda t: t[0][:t[1]] + bytes([t[2]]) + t[0][t[1] + 1:]))
def test_fuzzed_punch_messages_only_raise_protocol_errors(raw):
    try:
        decode_message(raw)
    except RemoteProtocolError:
        pass


# ---- state machines ----------------------------------------------------------------------------
def test_initiator_waits_half_the_relay_round_trip_then_dials():
    p = InitiatorPunch(now=10.0)
    assert p.ready(10.2, [B_OBS]) == [SendSync(1), Dial((B_OBS,), pytest.approx(0.1), 1)]
    assert p.ready(10.3, [B_OBS]) == []  # a second ready changes nothing
    assert p.dial_result(True) == [Punched(1, pytest.approx(0.2))]
    assert p.state == "punched"
    assert p.dial_result(False) == []


def test_initiator_retries_a_bounded_number_of_times():
    p = InitiatorPunch(now=0.0, attempts=3)
    events = p.ready(0.05, [B_OBS])
    attempts = [events[0].attempt]
    while not any(isinstance(e, PunchFailed) for e in events):
        events = p.dial_result(False)
        attempts += [e.attempt for e in events if isinstance(e, SendSync)]
        assert len(attempts) <= 3
    assert attempts == [1, 2, 3] and p.state == "failed"


def test_initiator_refused_or_no_addresses_fails_at_once():
    assert InitiatorPunch(0.0).refused("rate-limited") == [PunchFailed("rate-limited")]
    assert isinstance(InitiatorPunch(0.0).ready(1.0, [])[0], PunchFailed)
    slow = InitiatorPunch(0.0)
    assert slow.ready(60.0, [B_OBS])[1].delay <= 1.0  # a huge relay RTT is capped


def test_responder_dials_on_each_sync_in_order_and_ignores_the_rest():
    r = ResponderPunch(1, A, [A_OBS])
    assert r.sync(2) == []  # out of order
    assert r.sync(1) == [Dial((A_OBS,), 0.0, 1)]
    assert r.sync(1) == []  # duplicate while dialling
    assert r.dial_result(False) == []  # wait for the next sync
    assert r.sync(2) == [Dial((A_OBS,), 0.0, 2)]
    assert r.dial_result(True) == [Punched(2, None)]
    assert r.sync(3) == []


def test_responder_gives_up_after_the_last_attempt_or_a_timeout():
    r = ResponderPunch(1, A, [A_OBS], attempts=2)
    for attempt in (1, 2):
        r.sync(attempt)
        result = r.dial_result(False)
    assert result == [PunchFailed("no direct connection after 2 attempts")]
    assert r.sync(3) == []
    assert ResponderPunch(1, A, [A_OBS]).timed_out() == [PunchFailed("no sync from the peer")]


# ---- the bootstrap's checks --------------------------------------------------------------------
def broker_with_punch(**kw):
    broker = PunchBroker(**kw)
    punch = broker.request(0.0, A, 7, {A_OBS}, B, {B_OBS}, [A_OBS])
    return broker, punch


def test_broker_forwards_a_punch_between_registered_nodes():
    broker, punch = broker_with_punch()
    assert (punch.requester, punch.target, punch.addrs, punch.req) == (A, B, (A_OBS,), 7)
    assert broker.reply(0.1, B, punch.punch, {B_OBS}, [B_OBS], True) is punch
    for attempt in range(1, PUNCH_ATTEMPTS + 1):
        assert broker.sync(0.2, A, punch.punch, attempt).target == B
    with pytest.raises(PunchRefused, match="out of order"):
        broker.sync(0.3, A, punch.punch, PUNCH_ATTEMPTS + 1)


@pytest.mark.parametrize("requester_observed,target,target_observed,addrs,code", [
    (set(), B, {B_OBS}, [A_OBS], "not-registered"),
    ({A_OBS}, C, set(), [A_OBS], "unknown-target"),
    ({A_OBS}, A, {A_OBS}, [A_OBS], "unknown-target"),
    ({A_OBS}, B, {B_OBS}, ["203.0.113.9:22"], "address-not-observed"),  # aim B's SYNs at a third party
    ({A_OBS}, B, {B_OBS}, [A_OBS, "198.51.100.2:4001"], "address-not-observed"),
])
def test_broker_refuses_forged_requests(requester_observed, target, target_observed, addrs, code):
    broker = PunchBroker()
    with pytest.raises(PunchRefused) as info:
        broker.request(0.0, A, 1, requester_observed, target, target_observed, addrs)
    assert info.value.code == code and broker.pending == {}


def test_broker_refuses_replies_and_syncs_from_nodes_never_asked():
    broker, punch = broker_with_punch()
    with pytest.raises(PunchRefused, match="no punch was asked of you"):
        broker.reply(0.1, C, punch.punch, {"198.51.100.9:1"}, ["198.51.100.9:1"], True)
    with pytest.raises(PunchRefused, match="no punch was asked of you"):
        broker.reply(0.1, B, 999, {B_OBS}, [B_OBS], True)
    with pytest.raises(PunchRefused, match="not an address this bootstrap observed"):
        broker.reply(0.1, B, punch.punch, {B_OBS}, ["10.0.0.1:80"], True)
    with pytest.raises(PunchRefused, match="no punch of yours"):
        broker.sync(0.1, A, punch.punch, 1)  # not replied yet
    broker.reply(0.1, B, punch.punch, {B_OBS}, [B_OBS], True)
    with pytest.raises(PunchRefused, match="no punch was asked of you"):
        broker.reply(0.1, B, punch.punch, {B_OBS}, [B_OBS], True)  # only once
    with pytest.raises(PunchRefused, match="no punch of yours"):
        broker.sync(0.2, B, punch.punch, 1)  # only the requester syncs
    with pytest.raises(PunchRefused):
        broker.sync(30.0, A, punch.punch, 1)  # expired


def test_broker_rate_limits_a_punch_storm():
    broker = PunchBroker(burst=5, per_second=0.5, max_pending_per_node=100)
    codes = []
    for i in range(1000):  # a storm within one second
        try:
            broker.request(i / 1000, A, i, {A_OBS}, B, {B_OBS}, [A_OBS])
            codes.append("ok")
        except PunchRefused as exc:
            codes.append(exc.code)
    assert codes.count("ok") == 5 and codes.count("rate-limited") == 995
    broker.request(3.0, A, 1000, {A_OBS}, B, {B_OBS}, [A_OBS])  # refilled at 0.5/s
    broker.request(3.0, C, 1, {"198.51.100.9:1"}, B, {B_OBS}, ["198.51.100.9:1"])  # others unaffected
    assert broker.refused["rate-limited"] >= 995


def test_broker_caps_pending_punches_and_forgets_departed_nodes():
    D = "d" * 64
    broker = PunchBroker(burst=100, max_pending_per_node=2)
    broker.request(0.0, A, 1, {A_OBS}, B, {B_OBS}, [A_OBS])
    broker.request(0.0, A, 2, {A_OBS}, C, {"198.51.100.9:1"}, [A_OBS])
    with pytest.raises(PunchRefused, match="too many punches"):
        broker.request(0.0, A, 3, {A_OBS}, D, {"198.51.100.10:1"}, [A_OBS])
    broker.forget(B)
    broker.forget(C)
    assert broker.pending == {}
    broker.request(0.0, A, 4, {A_OBS}, D, {"198.51.100.10:1"}, [A_OBS])


def test_a_retried_punch_supersedes_the_earlier_one_to_that_target():
    broker, first = broker_with_punch()
    broker.reply(0.1, B, first.punch, {B_OBS}, [B_OBS], True)
    for attempt in range(1, PUNCH_ATTEMPTS + 1):
        broker.sync(0.2, A, first.punch, attempt)
    retry = broker.request(2.5, A, 8, {A_OBS}, B, {B_OBS}, [A_OBS])  # the node's retry, after a backoff
    assert list(broker.pending) == [retry.punch] and retry.punch != first.punch
    with pytest.raises(PunchRefused, match="no punch of yours"):
        broker.sync(2.6, A, first.punch, 1)  # the old punch is gone: its syncs are refused
    assert broker.reply(2.6, B, retry.punch, {B_OBS}, [B_OBS], True) is retry
    assert broker.sync(2.7, A, retry.punch, 1).target == B  # attempts count afresh


def test_retries_are_bounded_and_back_off():
    assert 1 <= len(RETRY_DELAYS) <= 8
    assert all(later >= earlier for earlier, later in zip(RETRY_DELAYS, RETRY_DELAYS[1:]))
    assert sum(RETRY_DELAYS) <= 120  # then the relay stays


# ---- relay limits ------------------------------------------------------------------------------
class End:
    def __init__(self, peer_id):
        self.peer_id = peer_id


def test_circuit_byte_limit_closes_the_circuit_naming_the_limit():
    table = RelayTable(RelayLimits(circuit_bytes=10 << 20))
    a, b = End(A), End(B)
    cid = table.open(a, b, 0.0)
    assert table.route(a, cid, 6 << 20, 1.0) is b
    assert table.route(b, cid, 4 << 20, 1.0) is a  # both directions count
    with pytest.raises(RelayLimitExceeded) as info:
        table.route(a, cid, 1, 1.0)
    assert info.value.message == "relay limit reached: 10 MiB per circuit (--relay-circuit-bytes)"
    assert info.value.ends == (a, b)  # both are told
    assert table.route(a, cid, 1, 1.0) is None and table.circuits == {}
    assert table.status()["bytes"] == 10 << 20 and table.status()["closed_by_limit"] == {"circuit-bytes": 1}


def test_circuit_duration_limit():
    table = RelayTable(RelayLimits(circuit_seconds=30))
    a, b = End(A), End(B)
    cid = table.open(a, b, 0.0)
    assert table.route(a, cid, 1, 29.0) is b
    assert table.expired(29.0) == []
    [(gone, circuit, reason)] = table.expired(31.0)
    assert gone == cid and "30 s per circuit (--relay-circuit-seconds)" in reason
    cid = table.open(a, b, 100.0)
    with pytest.raises(RelayLimitExceeded, match="--relay-circuit-seconds"):
        table.route(a, cid, 1, 131.0)


def test_per_node_circuit_and_byte_limits():
    table = RelayTable(RelayLimits(node_circuits=2, node_bytes=100))
    a, b, c = End(A), End(B), End(C)
    first = table.open(a, b, 0.0)
    table.open(a, c, 0.0)
    with pytest.raises(RelayLimitExceeded, match="2 circuits per node"):
        table.open(a, b, 0.0)
    table.close(first)
    second = table.open(b, c, 0.0)
    assert table.route(b, second, 100, 1.0) is c
    with pytest.raises(RelayLimitExceeded, match="100 bytes per node per hour"):
        table.route(b, second, 1, 2.0)
    with pytest.raises(RelayLimitExceeded, match="per node per hour"):
        table.open(b, a, 3.0)
    third = table.open(b, a, 3700.0)  # a new hour
    assert table.route(b, third, 50, 3700.0) is a


def test_dropping_an_end_closes_its_circuits():
    table = RelayTable()
    a, b, c = End(A), End(B), End(C)
    ab, bc = table.open(a, b, 0.0), table.open(b, c, 0.0)
    table.open(a, c, 0.0)
    assert sorted(table.drop_end(b), key=lambda x: x[0]) == [(ab, a), (bc, c)]
    assert len(table.circuits) == 1
