"""The seed's users at home: kachery-p2p's README examples, its module and its commands, run
unchanged against two kacheryfs nodes (real daemons over 127.0.0.1, started with
kachery-p2p-start-daemon)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import textwrap
import time
from pathlib import Path

import pytest

from .conftest import random_bytes
from .mounting import KACHERYFS
from .test_mount_network import node_id_of, wait_until_connected

BIN = Path(KACHERYFS).parent

# kachery-p2p's README (flatironinstitute/kachery-p2p, README.md), verbatim. Its typographic quotes
# are not Python; unsmart() puts ASCII ones back, and the placeholders the README asks the reader to
# fill in (a path, the URIs pasted from a collaborator) are filled in. Nothing else is changed.
README_STORE = """\
import kachery_p2p as kp
import numpy as np

filename = ‘/some/path/and/file.txt’
with open(filename, ‘w’) as fh:
	fh.write(“Here is my message”)
sha1 = kp.store_file(filename)
print(sha1) # this can now be shared with a collaborator

# An equivalent shortcut for this is:
kp.store_text("Here is my message")

# You can also store python dicts or numpy arrays
kp.store_json(dict(text="some text"))
kp.store_npy(np.array([1, 2, 3]))
"""

README_LOAD = """\
import kachery_p2p as kp
import numpy as np
p = ‘sha1://....’ # paste in value from first party
that_file = kp.load_file(p)
with open(that_file, ‘r’) as fh:
	print(fh.readlines())

# Or an equivalent shortcut
txt = kp.load_text(p)
"""

README_NPY_STORE = """\
import kachery_p2p as kp
import numpy as np

A = np.random.normal(0, 1, (3, 3))
x = np.array([[3], [4], [5]])
B = A.dot(x)
pA = kp.store_npy(A)
pB = kp.store_npy(B)
"""

README_NPY_LOAD = """\
import kachery_p2p as kp
import numpy as np
import numpy.linalg as lin

sha1_A = ‘sha1://...value_from_collaborator’
sha1_B = ‘sha1://...also_from_collaborator’
A = kp.load_npy(sha1_A)
B = kp.load_npy(sha1_B)
recovered_x = lin.solve(A, B)

print(recovered_x)

# [[3.] [4.] [5.]]
"""


def unsmart(code: str) -> str:
    return code.replace("‘", "'").replace("’", "'").replace("“", '"').replace("”", '"')


def python(env, code: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, timeout=60)
    if check:
        assert result.returncode == 0, result.stderr.decode()
    return result


@pytest.fixture
def two_nodes(stack):
    """A and B on channel 'lab', each started as kachery-p2p users start theirs."""
    _mount, daemon = stack
    start = str(BIN / "kachery-p2p-start-daemon")
    a = daemon("a", "--channel", "lab", "--host", "127.0.0.1", "--port", "0", "--verbose", "1", program=start)
    b = daemon("b", "--channel", "lab", "--host", "127.0.0.1", "--port", "0", "--verbose", "1",
               "--label", "bob", program=start)
    a.wait_log("listening on")
    b.wait_log("listening on")
    wait_until_connected(b, a)
    return a, b


@pytest.mark.timeout(120)
def test_seed_readme_python_examples_run_unchanged_across_two_nodes(two_nodes, tmp_path):
    a, b = two_nodes
    message_file = tmp_path / "some" / "path" / "and" / "file.txt"
    message_file.parent.mkdir(parents=True)

    code = unsmart(README_STORE).replace("/some/path/and/file.txt", str(message_file))
    out = python(a.env, code, a.root).stdout.decode().split()
    uri = out[-1]
    assert uri.startswith("sha1://") and uri.endswith("/file.txt")

    code = unsmart(README_LOAD).replace("sha1://....", uri)
    out = python(b.env, code, b.root).stdout.decode()
    assert "['Here is my message']" in out

    code = unsmart(README_NPY_STORE) + "print(pA)\nprint(pB)\n"  # "share those hashes"
    p_a, p_b = python(a.env, code, a.root).stdout.decode().split()
    code = (unsmart(README_NPY_LOAD).replace("sha1://...value_from_collaborator", p_a)
            .replace("sha1://...also_from_collaborator", p_b))
    out = python(b.env, code, b.root).stdout.decode()
    assert out.split() == ["[[3.]", "[4.]", "[5.]]"], out

    # a dict, stored on A and loaded on B
    uri = python(a.env, "import kachery_p2p as kp; print(kp.store_json({'text': 'some text', 'n': [1, 2]}))",
                 a.root).stdout.decode().strip()
    out = python(b.env, f"import kachery_p2p as kp; print(kp.load_json({uri!r}) == {{'text': 'some text', 'n': [1, 2]}})",
                 b.root).stdout.decode()
    assert out.strip() == "True"
    assert "Traceback" not in a.read_log() + b.read_log()


@pytest.mark.timeout(120)
def test_module_ranges_pickles_feeds_and_missing_files(two_nodes):
    a, b = two_nodes
    data = random_bytes(3 << 20, seed=5)
    (a.root / "data.bin").write_bytes(data)
    code = textwrap.dedent(f"""
        import kachery_p2p as kp, numpy as np
        print(kp.store_file({str(a.root / 'data.bin')!r}, basename='renamed.bin'))
        print(kp.store_pkl({{'a': [1, 2.5, 'x'], 'arr': np.arange(4)}}))
        print(kp.store_pkl(np.random.default_rng))  # a function: load_pkl must refuse it
        feed = kp.create_feed('jobs')
        sf = feed.get_subfeed('queue')
        sf.append_message({{'job': 1}}); sf.append_messages([{{'job': 2}}, {{'job': 3}}])
        print(sf.get_uri())
    """)
    data_uri, pkl_uri, bad_pkl_uri, subfeed_uri = python(a.env, code, a.root).stdout.decode().split()
    assert "/renamed.bin?manifest=" in data_uri

    code = textwrap.dedent(f"""
        import kachery_p2p as kp, numpy as np
        part = kp.load_bytes({data_uri!r}, start=2_000_000, end=2_000_100)  # from A, lazily
        print(part == open({str(a.root / 'data.bin')!r}, 'rb').read()[2_000_000:2_000_100])
        x = kp.load_pkl({pkl_uri!r})
        print(x['a'] == [1, 2.5, 'x'] and (x['arr'] == np.arange(4)).all())
        try:
            kp.load_pkl({bad_pkl_uri!r})
        except kp.KacheryError as e:
            print('refused' if 'load_pkl refuses' in str(e) else e)
        print(kp.load_file('sha1://' + '0' * 40 + '/nothing.txt'))  # nobody has it: None, as in kachery-p2p
        print(kp.load_text('sha1://' + '0' * 40, p2p=False))
        sf = kp.load_subfeed({subfeed_uri!r})
        print(sf.get_num_messages(), sf.get_next_messages(wait_msec=0), sf.is_writeable())
        print(sf.get_next_messages(wait_msec=0))
        print(any(f['node_id'] != kp.get_node_id() for f in kp.find_file({data_uri!r})))
    """)
    out = python(b.env, code, b.root).stdout.decode().splitlines()
    assert out == ["True", "True", "refused", "None", "None",
                   "3 [{'job': 1}, {'job': 2}, {'job': 3}] False", "[]", "True"], out

    # live: B waits for the next message; A appends it
    waiting = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import kachery_p2p as kp
        sf = kp.load_subfeed({subfeed_uri!r}); sf.set_position(3)
        print(sf.get_next_messages(wait_msec=20000))
    """)], env=b.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)  # not for correctness: the message is read whether it arrives before or after
        python(a.env, f"import kachery_p2p as kp; kp.load_subfeed({subfeed_uri!r}).append_message({{'job': 4}})", a.root)
        out, err = waiting.communicate(timeout=30)
    finally:
        waiting.kill()
    assert out.decode().strip() == "[{'job': 4}]", err.decode()


def alias(env, name, *args, check=True, cwd=None):
    result = subprocess.run([str(BIN / name), *args], env=env, capture_output=True, timeout=60, cwd=cwd)
    if check:
        assert result.returncode == 0, (name, args, result.stderr.decode())
    return result


@pytest.mark.timeout(120)
def test_seed_commands_across_two_nodes(two_nodes):
    a, b = two_nodes
    data = random_bytes(2 << 20, seed=9)
    (a.root / "file.dat").write_bytes(data)
    (a.root / "note.txt").write_text("hi\n")
    uris = alias(a.env, "kachery-store", str(a.root / "file.dat"), str(a.root / "note.txt")).stdout.decode().split()
    assert alias(a.env, "kachery-p2p-store", str(a.root / "note.txt")).stdout.decode().split() == uris[1:]
    out = alias(b.env, "kachery-p2p-load", uris[0], "--dest", str(b.root / "file.dat")).stdout.decode()
    assert out.strip() == str(b.root / "file.dat") and (b.root / "file.dat").read_bytes() == data
    assert alias(b.env, "kachery-p2p-cat", uris[1]).stdout == b"hi\n"
    assert alias(b.env, "kachery-cat", uris[0], "--start", "10", "--end", "20").stdout == data[10:20]
    assert Path(alias(b.env, "kachery-load", uris[1]).stdout.decode().strip()).read_text() == "hi\n"
    assert node_id_of(a) in alias(b.env, "kachery-p2p-find", uris[0]).stdout.decode()

    for name, kacheryfs_command in [("kachery-store", "kacheryfs store"), ("kachery-p2p-load", "kacheryfs load"),
                                    ("kachery-p2p-cat", "kacheryfs cat"), ("kachery-p2p-find", "kacheryfs find"),
                                    ("kachery-p2p-start-daemon", "kacheryfs daemon")]:
        assert kacheryfs_command in alias(b.env, name, "--help").stdout.decode().replace("\n", " ").replace("  ", " ")


@pytest.mark.parametrize("name, args, message", [
    ("kachery-store", ("/nonexistent/file",), "No such file or directory"),
    ("kachery-store", (), "Missing argument"),
    ("kachery-p2p-load", ("sha1://xyz",), "Not a valid kachery URI"),
    ("kachery-p2p-load", ("sha1://" + "0" * 40,), "not in the local store"),
    ("kachery-p2p-cat", ("http://example.org/x",), "neither a sha1:// URI nor a bare 40-hex hash"),
    ("kachery-p2p-cat", ("sha1://" + "0" * 40, "--start", "-3"), "not in the range"),
    ("kachery-p2p-find", ("nothex",), "Not a valid kachery URI"),
    ("kachery-p2p-start-daemon", (), "at least one --channel"),
    ("kachery-p2p-start-daemon", ("--channel", "x", "--port", "70000"), "not in the range"),
    ("kachery-p2p-start-daemon", ("--channel", "x", "--host", "127.0.0.1", "--http", "nope"), "--http"),
])
def test_seed_commands_bad_input_is_one_line(cli, name, args, message):
    result = alias(cli.env, name, *args, check=False)
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def run_on_terminal(argv, env, timeout=60) -> tuple[int, bytes]:
    """Run with stderr on a pseudo-terminal (as a user at a terminal sees it); returns what it showed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal has a size
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    shown = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # the child closed its end
                    break
                if not data:
                    break
                shown += data
            elif proc.poll() is not None:
                break
        return proc.wait(timeout=10), shown
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()


@pytest.mark.timeout(120)
def test_progress_bars_on_a_terminal_quiet_otherwise(two_nodes):
    a, b = two_nodes
    names = [f"p{i}.bin" for i in range(3)]
    for i, name in enumerate(names):
        (a.root / name).write_bytes(random_bytes(6 << 20, seed=20 + i))
    uris = alias(a.env, "kachery-store", *[str(a.root / n) for n in names]).stdout.decode().split()

    code, shown = run_on_terminal([str(BIN / "kachery-p2p-load"), uris[0]], b.env)
    assert code == 0 and b"p0.bin: " in shown and b"B/s" in shown, shown  # tqdm's bar: name, rate
    piped = alias(b.env, "kachery-p2p-load", uris[1])
    assert piped.stderr == b""  # not a terminal: quiet
    code, shown = run_on_terminal([sys.executable, "-c",
                                   f"import kachery_p2p as kp; kp.load_file({uris[2]!r}, progress=False)"], b.env)
    assert code == 0 and shown == b"", shown


@pytest.mark.timeout(60)
def test_start_daemon_with_a_mount(stack, tmp_path):
    from .mounting import fuse_mounted

    _mount, daemon = stack
    mountpoint = tmp_path / "m" / "mnt"
    d = daemon("m", "--channel", "lab", "--host", "127.0.0.1", "--port", "0", "--verbose", "1",
               "--mount", str(mountpoint), program=str(BIN / "kachery-p2p-start-daemon"))
    try:
        d.wait_log("listening on")
        wait_for_mount = time.monotonic() + 20
        while not (fuse_mounted(mountpoint) and (mountpoint / "store").is_dir()):
            assert time.monotonic() < wait_for_mount and d.proc.poll() is None, d.read_log()
            time.sleep(0.05)
        (mountpoint / "store" / "x.txt").write_text("through the mount\n")
        uri = alias(d.env, "kachery-p2p-load", "sha1://" + hashlib.sha1(b"through the mount\n").hexdigest())
        assert Path(uri.stdout.decode().strip()).read_text() == "through the mount\n"
    finally:
        d.stop()
        if fuse_mounted(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)
    assert not fuse_mounted(mountpoint)
