"""The local API keeps an error's class and errno across the socket: pure codec tests, then a
real daemon in a subprocess answering the Python API."""

import errno
import time

import pytest

from kacheryfs import errors
from kacheryfs.api import messages
from kacheryfs.errors import KacheryError, ObjectNotFound, StoreFailed, UnknownFeed, from_os_error


@pytest.mark.parametrize("exc", [
    ObjectNotFound("abc was not found on any peer"), UnknownFeed("'x' is not a label"),
    errors.DaemonAlreadyRunning("/c/api.sock"), errors.FeedNotOwned(), KacheryError("plain words"),
])
def test_errors_cross_the_socket_as_themselves(exc):
    reply = messages.error_reply(exc)
    assert reply["error"] == str(exc)  # what an older client prints
    back = messages.error_from_reply(reply)
    assert type(back) is type(exc) and str(back) == str(exc) and back.errno == exc.errno


def test_an_errno_set_on_one_error_survives_and_unknown_classes_degrade():
    exc = from_os_error(OSError(errno.EACCES, "Permission denied"), "writing")
    assert isinstance(exc, StoreFailed) and exc.errno == errno.EACCES
    back = messages.error_from_reply(messages.error_reply(exc))
    assert isinstance(back, StoreFailed) and back.errno == errno.EACCES and str(back) == str(exc)
    for name in ("FutureError", "Exception", "OSError", "sqlite3"):  # not a class of errors.py
        back = messages.error_from_reply({"error": "it broke", "kind": name, "errno": 5})
        assert type(back) is KacheryError and str(back) == "it broke"
    assert type(messages.error_from_reply({"error": "old daemon"})) is KacheryError


def test_requests_are_objects_with_known_ops():
    assert messages.decode_request(messages.request("load", uri="sha1://x")) == {"op": "load", "uri": "sha1://x"}
    with pytest.raises(KacheryError, match="unknown op"):
        messages.decode_request(b'{"op": "rm -rf"}')
    with pytest.raises(KacheryError, match="JSON object"):
        messages.decode_request(b"[1, 2]")
    with pytest.raises(ValueError):
        messages.decode_request(b"not json")


@pytest.mark.timeout(120)
def test_the_python_api_raises_what_the_daemon_raised(stack, monkeypatch):
    import kacheryfs as kfs

    _mount, daemon = stack
    d = daemon("d", "daemon", "--channel", "x", "--listen", "127.0.0.1:0", "--find-timeout", "0.5")
    d.wait_log("listening on")
    socket = messages.socket_path(d.env["KACHERY_P2P_CONFIG_DIR"])
    deadline = time.monotonic() + 20
    while not socket.exists():  # the API comes up just after the node
        assert time.monotonic() < deadline and d.proc.poll() is None, d.read_log()
        time.sleep(0.05)
    for key in ("KACHERY_STORAGE_DIR", "KACHERY_P2P_CONFIG_DIR"):
        monkeypatch.setenv(key, d.env[key])
    with pytest.raises(ObjectNotFound, match="not found on any peer") as info:
        kfs.load_file("sha1://" + "0" * 40 + "/nothing")  # not here: the daemon looks for it
    assert info.value.errno == errno.ENOENT
    with pytest.raises(UnknownFeed, match="neither a feed id nor a label") as info:
        kfs.load_feed("no-such-label")  # resolved by the daemon
    assert info.value.errno == errno.ENOENT
