"""The ``kacheryfs`` command. Command definitions only; errors print as one line, exit code 1."""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
from pathlib import Path

import click

from .cli_cache import cli_config, config_option, storage_option
from .cli_status import swarm_lines  # noqa: F401 (status lines of downloads, for tests)
from .cli_cache import human as _human
from .config import DEFAULT_CACHE_SIZE, DEFAULT_FIND_TIMEOUT, DEFAULT_LISTEN, Config
from .errors import CorruptObject, IsADirectory, KacheryError, NoDaemon, NoSuchFile, ObjectNotFound, UnmountError
from .progress import ByteProgress
from .store import (
    CHUNK_SIZE, ContentHasher, Directory, LocalStore, Manifest, format_dir_uri, format_uri, is_dir_uri, parse_uri,
)


def _config(storage_dir=None, config_dir=None) -> Config:
    """The dirs to work with: those of the running mount or daemon, if one runs (cli_cache.cli_config)."""
    return cli_config(storage_dir, config_dir)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="kacheryfs")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """kacheryfs: share files by content hash over a FUSE mount."""
    ctx.obj = {"verbose": verbose}
    _set_log_levels(verbose)


def _set_log_levels(verbose: int, serving: bool = False) -> None:
    """Commands log warnings, -v info, -vv debug. A node (mount, daemon, bootstrap) always logs
    what it does (info), -v its debug output, -vv the libraries' too."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ours = max(logging.DEBUG, (logging.INFO if serving else logging.WARNING) - 10 * verbose)
    logging.getLogger().setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)
    logging.getLogger("kacheryfs").setLevel(ours)


def _serving_logs(verbose: int) -> None:
    """Log levels of a node; -v works before the command (kacheryfs -v mount) and after it."""
    ctx = click.get_current_context()
    _set_log_levels((ctx.find_root().obj or {}).get("verbose", 0) + verbose, serving=True)


verbose_option = click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")


def network_options(fn):
    """The node's flags, shared by mount, daemon and bootstrap."""
    options = [
        click.option("--channel", "channels", multiple=True, metavar="NAME",
                     help="Channel to join (repeatable). Files this node stores are shared on all of them."),
        click.option("--channel-secret-file", "secret_files", multiple=True, metavar="[NAME=]FILE",
                     help="Makes a channel private: members must know the secret in FILE."),
        click.option("--listen", default=None, metavar="HOST:PORT|none",
                     help=f"Where to accept peers (default $KACHERYFS_LISTEN, else {DEFAULT_LISTEN}, any free port "
                          "if that one is taken; PORT 0: any free port); 'none' accepts no inbound connections."),
        click.option("--bootstrap", "bootstraps", multiple=True, metavar="HOST:PORT",
                     help="A rendezvous node to find channel peers through (repeatable)."),
        click.option("--find-timeout", default=DEFAULT_FIND_TIMEOUT, show_default=True, type=float,
                     help="Seconds to wait for peers to answer who holds a file."),
        click.option("--cache-size", default=f"{DEFAULT_CACHE_SIZE >> 30}G", show_default=True, metavar="SIZE",
                     help="Keep at most this much of files fetched from peers (least recently used go first)."),
        click.option("--dht/--no-dht", default=None,
                     help="Find channel peers and providers through the BitTorrent mainline DHT "
                          "(default: off, or KACHERYFS_DHT=1)."),
        click.option("--dht-bootstrap", "dht_bootstrap", multiple=True, metavar="HOST:PORT",
                     help="A DHT node to join through (repeatable; implies --dht). "
                          "Without one, --dht joins through the public mainline routers."),
        click.option("--dht-listen", default=None, metavar="HOST:PORT",
                     help="UDP address of this node's DHT node (default 0.0.0.0:0)."),
        click.option("--max-peers", default=None, type=int,
                     help="Peers this node dials by itself at most (default 16; it accepts up to twice that, plus 8)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


http_option = click.option(
    "--http", default=None, metavar="[HOST:]PORT",
    help="Serve objects and feeds over HTTP for web tools (PORT alone: 127.0.0.1; another address "
         "only if you name it; 0: any free port).")


def _net_config(storage_dir, config_dir, channels, secret_files, listen, bootstraps, find_timeout,
                cache_size, http=None, dht=None, dht_bootstrap=(), dht_listen=None, max_peers=None,
                allow_other=False) -> Config:
    return Config.from_env(storage_dir=storage_dir, config_dir=config_dir, channels=channels,
                           channel_secret_files=secret_files, listen=listen, bootstraps=bootstraps,
                           find_timeout=find_timeout, cache_size=cache_size, http=http, dht=dht,
                           dht_bootstrap=dht_bootstrap, dht_listen=dht_listen, max_peers=max_peers,
                           allow_other=allow_other)


@cli.command()
@click.argument("mountpoint", type=click.Path(file_okay=False))
@storage_option
@config_option
@network_options
@http_option
@click.option("--allow-other", is_flag=True,
              help="Let other local users (a Jupyter server, a container) read the mount; needs "
                   "user_allow_other in /etc/fuse.conf unless you are root.")
@click.option("--debug", is_flag=True, help="Log every FUSE request.")
@verbose_option
def mount(mountpoint, storage_dir, config_dir, debug, allow_other, verbose, **net):
    """Mount kacheryfs at MOUNTPOINT and serve in the foreground until Ctrl-C or `kacheryfs unmount`."""
    from .daemon import run

    _serving_logs(verbose + (1 if debug else 0))
    config = _net_config(storage_dir, config_dir, allow_other=allow_other, **net)
    run(config, mountpoint, debug=debug)


@cli.command()
@storage_option
@config_option
@network_options
@http_option
@verbose_option
def daemon(storage_dir, config_dir, verbose, **net):
    """Run a node without a mount (serves and fetches for the channels), until Ctrl-C."""
    from .daemon import run

    _serving_logs(verbose)
    run(_net_config(storage_dir, config_dir, **net))


@cli.command()
@click.option("--listen", required=True, metavar="HOST:PORT", help="Where to accept nodes.")
@click.option("--relay-circuit-bytes", metavar="SIZE", default="64G", show_default=True,
              help="Bytes one relay circuit may carry (both directions); then it is closed.")
@click.option("--relay-circuit-seconds", type=float, default=86400.0, show_default=True,
              help="Seconds one relay circuit may live.")
@click.option("--relay-node-circuits", type=int, default=64, show_default=True,
              help="Relay circuits one node may have open at once.")
@click.option("--relay-node-bytes", metavar="SIZE", default="256G", show_default=True,
              help="Bytes relayed for one node per hour.")
@config_option
@verbose_option
def bootstrap(listen, config_dir, relay_circuit_bytes, relay_circuit_seconds, relay_node_circuits,
              relay_node_bytes, verbose):
    """Run a rendezvous node: keeps a registry of channel hashes -> nodes (knows no channel names),
    pushes new members to the nodes of their channels, coordinates hole punches and relays, within
    its limits, between nodes that cannot punch. It stores no files, so it takes no --storage: its
    node key and local API (kacheryfs status --config-dir DIR) live in the config directory."""
    from .daemon import run_bootstrap

    _serving_logs(verbose)
    run_bootstrap(Config.from_env(config_dir=config_dir, listen=listen,
                                  relay_circuit_bytes=relay_circuit_bytes, relay_circuit_seconds=relay_circuit_seconds,
                                  relay_node_circuits=relay_node_circuits, relay_node_bytes=relay_node_bytes))


@cli.command()
@click.argument("mountpoint", type=click.Path())
@click.option("--lazy", is_flag=True, help="Detach now even if files are open (umount -l).")
def unmount(mountpoint, lazy):
    """Unmount a kacheryfs mount (its daemon then exits)."""
    from .fs.mount import fusermount_unmount, is_mounted

    if not is_mounted(mountpoint):
        raise UnmountError(f"{mountpoint} is not mounted")
    result = fusermount_unmount(mountpoint, lazy=lazy)
    if result.returncode != 0:
        reason = (result.stderr or "").strip().splitlines()[-1:] or ["unknown reason"]
        hint = " (files open? try --lazy)" if "busy" in reason[0] else ""
        raise UnmountError(f"{reason[0]}{hint}")


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("-r", "--recursive", is_flag=True, help="Store directories: every file in them, and the "
              "directory itself (printed as sha1dir://<hash>.<name>).")
@storage_option
@config_option
def store(paths, recursive, storage_dir, config_dir):
    """Store files (and, with -r, directories); prints one URI per line."""
    local = LocalStore(_config(storage_dir, config_dir).storage_dir)
    try:
        for path in paths:
            if not os.path.lexists(path):
                raise NoSuchFile(path)
            if os.path.isdir(path):
                if not recursive:
                    raise IsADirectory(f"{path} (use `kacheryfs store -r` to store a directory)")
                obj, _directory = local.put_dir(path)
                click.echo(format_dir_uri(obj.sha1, Path(path).resolve().name))
                continue
            with ByteProgress(Path(path).name, delay=0.5) as progress:  # only for files that take a while
                obj = local.put_file(path, on_progress=progress)
            click.echo(obj.uri(Path(path).name))
    finally:
        local.close()


def _local_path(uri: str, storage_dir, config_dir=None) -> tuple[Path, bool, str]:
    """The object's path in the local store, fetched through the running daemon if need be; whether
    it was here already (its bytes are then checked as they are read: they may have rotted since
    they were stored), rather than just fetched and verified by the daemon; and its sha1:// URI
    (a sha1dir:// file URI is looked up in its directory)."""
    from .api.client import fetch_into_store

    config = _config(storage_dir, config_dir)
    if is_dir_uri(uri):  # (api.objects only then: a plain load stays a cheap command)
        from .api.objects import resolve_file_uri

        file_uri = resolve_file_uri(uri, storage_dir=config.storage_dir, config_dir=config.config_dir)
    else:
        file_uri = str(parse_uri(uri))  # (as api.objects.resolve_file_uri gives it)
    parsed = parse_uri(file_uri)
    local = LocalStore(config.storage_dir)
    try:  # closing writes the use of a cached copy (its place in the eviction order)
        if local.use(parsed.sha1) is not None:
            return local.object_path(parsed.sha1), True, file_uri
        return Path(fetch_into_store(config.config_dir, parsed, local.root)), False, file_uri
    finally:
        local.close()


VERIFIED_BLOCK = 8 * CHUNK_SIZE


def _copy_verified(uri: str, storage_dir, config_dir, out) -> None:
    """Write a stored object to ``out``, each chunk checked before it is written (RottenObject,
    and the object quarantined, if one fails)."""
    sha1 = parse_uri(uri).sha1
    local = LocalStore(_config(storage_dir, config_dir).storage_dir)
    try:
        size = local.require(sha1).size
        for offset in range(0, size, VERIFIED_BLOCK):
            out.write(local.integrity.read_range(sha1, offset, VERIFIED_BLOCK))
    finally:
        local.close()


@cli.command()
@click.argument("uri")
@click.option("--dest", type=click.Path(), default=None,
              help="Write the file here (for a directory, sha1dir://..., a new directory).")
@click.option("--link", is_flag=True,
              help="Make --dest a hard link to the store's copy instead of a copy of its own: on disk once, "
                   "written once, read-only (do not change it). Copied where dest is on another filesystem.")
@storage_option
@config_option
def load(uri, dest, link, storage_dir, config_dir):
    """Load a file by URI (from channel peers if need be): writes it to --dest, or prints its local path.
    A stored directory (sha1dir://<hash>[/subdir]) is written to --dest as a directory."""
    from .api.dest import can_link, link_into, load_into
    from .api.objects import dir_entry, load_dir

    if link and dest is None:
        raise click.UsageError("--link needs --dest")

    not_linked = (f"note: {dest} is on another filesystem than the store (or one without hard links): "
                  "copied, not linked")
    if is_dir_uri(uri) and dest is not None and isinstance(dir_entry(uri, storage_dir, config_dir, None), Directory):
        out = load_dir(uri, dest, storage_dir=storage_dir, config_dir=config_dir, link=link)
        if link and not can_link(Path(out), _config(storage_dir, config_dir).storage_dir):
            click.echo(not_linked, err=True)
        click.echo(out)
        return
    if dest is None:
        click.echo(str(_local_path(uri, storage_dir, config_dir)[0]))
        return
    if link:
        if not link_into(uri, dest, _config(storage_dir, config_dir)):
            click.echo(not_linked, err=True)
        click.echo(dest)
        return
    click.echo(load_into(uri, dest, _config(storage_dir, config_dir)))


@cli.command()
@click.argument("uri")
@storage_option
@config_option
def cat(uri, storage_dir, config_dir):
    """Write a file's bytes to stdout (fetched from channel peers if need be)."""
    path, held, uri = _local_path(uri, storage_dir, config_dir)
    out = sys.stdout.buffer
    try:
        if held:
            _copy_verified(uri, storage_dir, config_dir, out)
        else:
            with open(path, "rb") as f:
                while block := f.read(1 << 20):
                    out.write(block)
        out.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


@cli.command()
@click.argument("path", type=click.Path())
def uri(path):
    """Print the URI of a file or directory: from the mount's xattr, or by hashing a local one
    (nothing stored)."""
    try:
        click.echo(os.getxattr(path, "user.kachery.uri").decode())
        return
    except FileNotFoundError:
        raise NoSuchFile(path) from None
    except OSError as exc:
        if exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise KacheryError(f"{path}: {exc.strerror}") from None
    if os.path.isdir(path):
        from .store.local import hash_local_dir

        click.echo(format_dir_uri(hash_local_dir(path).sha1, Path(path).resolve().name))
        return
    hasher = ContentHasher()
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                hasher.update(block)
    except OSError as exc:
        raise KacheryError(f"{path}: {exc.strerror}") from None
    digest = hasher.digest()
    manifest = Manifest.from_digest(digest).manifest_sha1 if digest.size > CHUNK_SIZE else None
    click.echo(format_uri(digest.sha1, Path(path).name, manifest))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (for scripts).")
@storage_option
@config_option
def status(as_json, storage_dir, config_dir):
    """Show the storage directory, what it holds, running mounts and the daemon."""
    from .cli_cache import daemon_status
    from .cli_status import status_lines
    from .fs.mount import live_mounts

    config = _config(storage_dir, config_dir)
    local = LocalStore(config.storage_dir)
    try:
        count, total = local.totals(files_only=True)
        usage = local.disk_usage()
        info = {"storage_dir": str(config.storage_dir), "objects": count, "bytes": total,
                "cached_bytes": local.cached_total(), "names": len(local.list_names()),
                "disk_free": usage.free, "disk_total": usage.total,
                "mounts": live_mounts(config), "daemon": daemon_status(config.config_dir)}
    finally:
        local.close()
    if as_json:
        click.echo(json.dumps(info))
        return
    for line in status_lines(info):
        click.echo(line)


@cli.command()
@click.option("--repair", is_flag=True,
              help="Quarantine corrupt objects and fetch good copies from channel peers (needs a running daemon).")
@storage_option
@config_option
def verify(repair, storage_dir, config_dir):
    """Re-hash every object in the store; report (or with --repair, replace) the corrupt ones."""
    config = _config(storage_dir, config_dir)
    local = LocalStore(config.storage_dir)
    try:
        _verify(config, local, repair)
    finally:
        local.close()


def _verify(config: Config, local: LocalStore, repair: bool) -> None:
    from .api.client import daemon_load

    integrity = local.integrity
    with ByteProgress("verifying", delay=0.5) as progress:
        report = integrity.scrub(repair=repair, progress=progress)
    click.echo(f"verified: {report.objects} objects, {_human(report.bytes)}")
    for record in report.rotten:
        kind = "stored here" if record.pinned else "cached copy"
        click.echo(f"corrupt:  {record.sha1}  {_human(record.size)}  {kind}"
                   + ("  (quarantined)" if repair else ""))
    for record in report.missing:
        click.echo(f"missing:  {record.sha1}  {_human(record.size)}" + ("  (dropped from the index)" if repair else ""))
    if not repair:
        if report.rotten or report.missing:
            raise CorruptObject(f"{len(report.rotten)} corrupt and {len(report.missing)} missing objects in "
                                f"{local.root}; `kacheryfs verify --repair` quarantines them and fetches good copies")
        return
    lost = []
    for record in integrity.quarantined():  # this run's and earlier ones' (or the daemon's)
        try:
            daemon_load(config.config_dir, format_uri(record.sha1, "", record.manifest_sha1))
        except NoDaemon:
            raise CorruptObject(f"{len(integrity.quarantined())} objects are in quarantine "
                                f"({integrity.quarantine_dir}); no daemon is running to fetch good copies: "
                                "start `kacheryfs daemon` or `kacheryfs mount` and run `kacheryfs verify --repair` again") from None
        except KacheryError as exc:
            lost.append(record)
            click.echo(f"lost:     {record.sha1}  {_human(record.size)}  ({exc})")
            continue
        integrity.restored(record)
        click.echo(f"restored: {record.sha1}  {_human(record.size)}  from channel peers")
    if lost:
        raise CorruptObject(f"{len(lost)} corrupt objects could not be fetched from any peer "
                            f"(their corrupt copies are in {integrity.quarantine_dir})")


@cli.command()
@click.argument("uri")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (for scripts).")
@storage_option
@config_option
def find(uri, as_json, storage_dir, config_dir):
    """List the channel peers that hold a file (asks the running daemon)."""
    from . import api
    from .api.client import call

    parsed = parse_uri(api.resolve_file_uri(uri, storage_dir=storage_dir, config_dir=config_dir))
    providers = call(_config(storage_dir, config_dir).config_dir, "find", uri=str(parsed))["providers"]
    if as_json:
        click.echo(json.dumps({"sha1": parsed.sha1, "providers": providers}))
    if not providers:
        raise ObjectNotFound(f"no peer in this node's channels holds {parsed.sha1}")
    if not as_json:
        for p in providers:
            click.echo(f"{p['node']}  {p['direction']:<8} {p['remote']}  {_human(p['size'])}")


@cli.group()
def feed():
    """Signed append-only logs: create, append, read, list."""


@feed.command("create")
@click.option("--label", default=None, help="A local name for the feed.")
@storage_option
@config_option
def feed_create(label, storage_dir, config_dir):
    """Create a feed this node owns; prints its id."""
    from .api.feeds import create_feed

    click.echo(create_feed(label, storage_dir=storage_dir, config_dir=config_dir).feed_id)


@feed.command("append")
@click.argument("feed_ref", metavar="FEED")
@click.argument("subfeed")
@click.argument("messages", nargs=-1, required=True, metavar="JSON...")
@storage_option
@config_option
def feed_append(feed_ref, subfeed, messages, storage_dir, config_dir):
    """Append JSON messages to a subfeed of a feed you own; prints their indices."""
    import json

    from .api.feeds import load_feed

    try:
        values = [json.loads(m) for m in messages]
    except ValueError as exc:
        raise KacheryError(f"not JSON: {exc}") from None
    sub = load_feed(feed_ref, storage_dir=storage_dir, config_dir=config_dir).get_subfeed(subfeed)
    for index in sub.append_messages(values):
        click.echo(index)


@feed.command("read")
@click.argument("feed_ref", metavar="FEED")
@click.argument("subfeed")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new messages as they arrive.")
@click.option("--start", default=0, show_default=True, help="First message index.")
@storage_option
@config_option
def feed_read(feed_ref, subfeed, follow, start, storage_dir, config_dir):
    """Print a subfeed's messages as JSON lines (fetched from channel peers if need be)."""
    import json

    from .api.feeds import load_feed

    sub = load_feed(feed_ref, storage_dir=storage_dir, config_dir=config_dir).get_subfeed(subfeed)
    sub.set_position(start)
    messages = sub.message_stream() if follow else iter(sub.get_next_messages())
    try:
        for message in messages:
            click.echo(json.dumps(message))
            sys.stdout.flush()
    except BrokenPipeError:
        pass


@feed.command("ls")
@click.argument("feed_ref", metavar="[FEED]", required=False)
@storage_option
@config_option
def feed_ls(feed_ref, storage_dir, config_dir):
    """List feeds (or one feed's subfeeds) with their message counts."""
    from .api.client import call
    from .feeds import FeedStore

    config = _config(storage_dir, config_dir)
    try:
        feeds = call(config.config_dir, "feed_ls", **({"feed": feed_ref} if feed_ref else {}))["feeds"]
    except NoDaemon:
        store = FeedStore(config.feeds_db, config.feed_keys_dir)
        from .api.feeds import _Backend

        ids = [_Backend(config).resolve(feed_ref)] if feed_ref else store.feed_ids()
        feeds = [{"feed_id": f, "label": store.label_of(f), "owned": store.owns(f),
                  "subfeeds": {n: store.num_messages(f, n) for n in store.subfeeds(f)}} for f in ids]
    for f in feeds:
        click.echo(f"{f['feed_id']}  {'owned ' if f['owned'] else 'replica'}  {f['label'] or ''}")
        for name, count in f["subfeeds"].items():
            click.echo(f"    {name}: {count} messages")


# cache control: kacheryfs ls / pin / unpin / gc (cli_cache.py)
from .cli_cache import gc, ls, pin, unpin  # noqa: E402

for _command in (ls, pin, unpin, gc):
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> int:
    return run_command(cli, argv, "kacheryfs")


def _one_line_warnings(prog_name: str) -> None:
    """Warnings (a store other than the running daemon's, say) as one line, like errors."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        click.echo(f"{prog_name}: warning: {message}", err=True)

    warnings.showwarning = show


def run_command(command: click.Command, argv: list[str] | None, prog_name: str) -> int:
    """Run a click command; every error is one line on stderr and an exit code."""
    _one_line_warnings(prog_name)
    try:
        command.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:  # bad arguments: one line, like every other error
        hint = " (see --help)" if isinstance(exc, click.UsageError) else ""
        click.echo(f"{prog_name}: {exc.format_message()}{hint}", err=True)
        return 1
    except KacheryError as exc:
        click.echo(f"{prog_name}: {exc}", err=True)
        return 1
    except BaseExceptionGroup as group:  # a start-up error raised inside the daemon's nursery
        found = group.subgroup(KacheryError)
        if found is None:
            raise
        while isinstance(found, BaseExceptionGroup):
            found = found.exceptions[0]
        click.echo(f"{prog_name}: {found}", err=True)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
