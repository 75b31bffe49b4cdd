"""The ``kacheryfs`` command's entry point: a plain ``kacheryfs load sha1://...`` that the running
daemon must fetch is sent to it straight away; everything else goes to the full CLI (cli.py).

Why: 50 nodes of one machine starting ``kacheryfs load`` at once (a flash crowd) paid for the full
CLI's imports (click, the store, SQLite: ~0.2 CPU-s each) 50 times before any byte moved. The quick
path imports only what finding the daemon and its local API need. It gives way to the full CLI
whenever anything differs from the plain case: options, another kind of URI, no daemon, a
warning about the dirs, or the object already held here (the CLI records its use and prints its
path itself). The daemon parses and checks the URI as the CLI would, and its errors print the same.
"""

from __future__ import annotations

import sys


def main() -> int:
    argv = sys.argv[1:]
    if len(argv) == 2 and argv[0] == "load" and argv[1].startswith("sha1://"):
        code = _quick_load(argv[1])
        if code is not None:
            return code
    from .cli import main as full_cli

    return full_cli()


def _quick_load(uri: str) -> int | None:
    """The exit code of a load done through the daemon, or None for the full CLI to do it."""
    from .errors import KacheryError
    from .running import locate

    try:
        located = locate()
    except (KacheryError, OSError):
        return None  # (the full CLI says what is wrong)
    sha1 = uri[len("sha1://"):][:40]
    config = located.config
    if located.daemon is None or located.warning is not None or len(sha1) != 40:
        return None
    if (config.storage_dir / "sha1" / sha1[0:2] / sha1[2:4] / sha1[4:6] / sha1).exists():
        return None  # held here (LocalStore.object_path): the full CLI records the use
    from .api.client import daemon_load
    from .errors import NoDaemon
    from .progress import ByteProgress

    name = uri[len("sha1://") + 40:].lstrip("/").split("?")[0]
    try:
        with ByteProgress(name or sha1[:12]) as progress:
            path = daemon_load(config.config_dir, uri, progress)
    except NoDaemon:
        return None  # it stopped meanwhile
    except KacheryError as exc:
        print(f"kacheryfs: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


__all__ = ["main"]
