"""kachery-p2p's commands (``kachery-store``, ``kachery-p2p-load``, ...) as thin aliases over the
``kacheryfs`` commands, with kachery-p2p's argument shapes. Each one's --help names its kacheryfs
command; errors are one line and exit code 1, as there."""

from __future__ import annotations

import sys

import click

from kacheryfs.cli import main as kacheryfs_main
from kacheryfs.cli import run_command

SETTINGS = {"help_option_names": ["-h", "--help"]}


def _prog() -> str:
    import os

    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "kachery"


def _run(argv: list[str]) -> None:
    code = kacheryfs_main(argv)
    if code:
        raise SystemExit(code)


@click.command(context_settings=SETTINGS,
               help="Store files; prints one sha1:// URI per line. Same as `kacheryfs store PATH...`.")
@click.argument("paths", nargs=-1, required=True)
def store_command(paths):
    _run(["store", *paths])


@click.command(context_settings=SETTINGS,
               help="Load a file (from channel peers if need be); prints its local path, or writes it "
                    "to --dest. Same as `kacheryfs load URI [--dest PATH]`.")
@click.argument("uri")
@click.option("--dest", default=None, help="Write the file here.")
@click.option("--from-node", default=None, help="Accepted for kachery-p2p scripts; kacheryfs asks every channel peer.")
@click.option("--from-channel", default=None, help="Accepted for kachery-p2p scripts; kacheryfs asks every channel peer.")
def load_command(uri, dest, from_node, from_channel):
    _run(["load", uri, *(["--dest", dest] if dest else [])])


@click.command(context_settings=SETTINGS,
               help="Write a file's bytes to stdout (from channel peers if need be). Same as "
                    "`kacheryfs cat URI`; with --start/--end, only those bytes (and only the chunks "
                    "they cover are fetched).")
@click.argument("uri")
@click.option("--start", type=click.IntRange(min=0), default=None, help="First byte (default 0).")
@click.option("--end", type=click.IntRange(min=0), default=None, help="End byte, not included (default: the end).")
def cat_command(uri, start, end):
    if start is None and end is None:
        _run(["cat", uri])
        return
    import kachery_p2p as kp

    try:
        if kp.load_bytes(uri, start=start, end=end, write_to_stdout=True) is None:
            raise kp.LoadFileError(f"no channel peer holds {uri}")
    except BrokenPipeError:
        pass


@click.command(context_settings=SETTINGS,
               help="List the channel peers that hold a file. Same as `kacheryfs find URI`.")
@click.argument("uri")
def find_command(uri):
    _run(["find", uri])


@click.command(context_settings=SETTINGS,
               help="Run a node for the channels in the foreground: `kacheryfs daemon --channel NAME ... "
                    "--listen HOST:PORT`; with --mount DIR it is `kacheryfs mount DIR ...`, with "
                    "--isbootstrap `kacheryfs bootstrap --listen HOST:PORT`.")
@click.option("--channel", "channels", multiple=True, metavar="NAME", help="Channel to join (repeatable).")
@click.option("--channel-secret-file", "secret_files", multiple=True, metavar="[NAME=]FILE",
              help="Makes a channel private (see kacheryfs mount --help).")
@click.option("--bootstrap", "bootstraps", multiple=True, metavar="HOST:PORT", help="Rendezvous node (repeatable).")
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to accept peers on.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Port to accept peers on (0: any free port).")
@click.option("--http", default=None, metavar="[HOST:]PORT", help="Also serve HTTP for web tools (see kacheryfs daemon --help).")
@click.option("--mount", "mountpoint", default=None, metavar="DIR", help="Also mount kacheryfs here.")
@click.option("--cache-size", default=None, metavar="SIZE", help="Cap on cached copies (e.g. 50G).")
@click.option("--isbootstrap", is_flag=True, help="Run a rendezvous (bootstrap) node instead.")
@click.option("--label", default=None, help="Accepted for kachery-p2p scripts (kacheryfs nodes are named by their key).")
@click.option("--verbose", type=int, default=0, help="Log more (1 or 2).")
def start_daemon_command(channels, secret_files, bootstraps, host, port, http, mountpoint, cache_size,
                         isbootstrap, label, verbose):
    from kacheryfs.errors import KacheryError

    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    verbosity = ["-" + "v" * min(verbose, 2)] if verbose > 0 else []
    if isbootstrap:
        _run([*verbosity, "bootstrap", "--listen", listen])
        return
    if not channels:
        raise KacheryError("give at least one --channel NAME (a node shares files on its channels)")
    args = [arg for c in channels for arg in ("--channel", c)]
    args += [arg for f in secret_files for arg in ("--channel-secret-file", f)]
    args += [arg for b in bootstraps for arg in ("--bootstrap", b)]
    args += ["--listen", listen]
    args += ["--http", http] if http else []
    args += ["--cache-size", cache_size] if cache_size else []
    _run([*verbosity, "mount", mountpoint, *args] if mountpoint else [*verbosity, "daemon", *args])


def _entry(command: click.Command):
    def entry() -> None:
        sys.exit(run_command(command, None, _prog()))
    return entry


store = _entry(store_command)
load = _entry(load_command)
cat = _entry(cat_command)
find = _entry(find_command)
start_daemon = _entry(start_daemon_command)
