"""`kacheryfs load sha1://...` through the quick entry point (kacheryfs/entry.py): the running
daemon fetches it without the full CLI being imported; every other case goes to the full CLI and
behaves as before. Real daemons on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import write_random_file
from .mounting import KACHERYFS, Daemon
from .test_mount_network import LOCAL, wait_until_connected

# The entry point, run as the console script runs it; reports which heavy modules were imported.
PROBE = ("import sys\n"
         "from kacheryfs.entry import main\n"
         "code = main()\n"
         "print('modules:', ' '.join(m for m in ('click', 'sqlite3', 'kacheryfs.cli', 'kacheryfs.store') "
         "if m in sys.modules), file=sys.stderr)\n"
         "sys.exit(code)\n")


def probe(env, *args):
    return subprocess.run([sys.executable, "-c", PROBE, *args], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.timeout(120)
def test_plain_load_goes_to_the_daemon_without_the_full_cli(stack, tmp_path):
    _mount, daemon = stack
    a = daemon("a", "daemon", "--channel", "q", *LOCAL)
    b = daemon("b", "daemon", "--channel", "q", *LOCAL)
    src = tmp_path / "x.bin"
    sha1 = write_random_file(src, 3_000_000, seed=7)
    uri = subprocess.run([KACHERYFS, "store", str(src)], env=a.env, capture_output=True, text=True,
                         check=True).stdout.split()[-1]
    a.wait_log("listening on")
    b.wait_log("listening on")
    wait_until_connected(b, a)

    fetched = probe(b.env, "load", uri)
    assert fetched.returncode == 0, fetched.stderr
    path = fetched.stdout.strip()
    assert path.endswith(sha1) and str(tmp_path / "b") in path
    with open(path, "rb") as f:
        assert f.read() == src.read_bytes()
    assert "modules: \n" in fetched.stderr + "\n", fetched.stderr  # none of the heavy ones

    # held here now: the full CLI answers (it records the use), with the same output
    held = probe(b.env, "load", uri)
    assert held.returncode == 0 and held.stdout.strip() == path
    assert "kacheryfs.cli" in held.stderr

    # an object nobody holds: the daemon's error, one line, exit 1
    missing = subprocess.run([KACHERYFS, "load", "sha1://" + "ab" * 20], env=b.env, capture_output=True, text=True,
                             timeout=60)
    assert missing.returncode == 1 and missing.stderr.startswith("kacheryfs: ") and "ab" * 20 in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


@pytest.mark.timeout(60)
def test_without_a_daemon_the_full_cli_explains(tmp_path):
    env = Daemon(tmp_path / "alone").env
    done = probe(env, "load", "sha1://" + "cd" * 20)
    assert done.returncode == 1
    assert "no kacheryfs daemon is running" in done.stderr and "kacheryfs.cli" in done.stderr
    bad = subprocess.run([KACHERYFS, "load", "sha1://nothex"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and bad.stderr.startswith("kacheryfs: ")
