"""``beet radio``: keep MPD's queue topped up with tracks that sound like
the last few played (the loop itself is :mod:`..radio`).

MPD's address comes from beets' own ``mpd:`` section (``host``, ``port``,
``password``, as the mpdupdate and mpdstats plugins read it), overridden
by ``--host``, ``--port`` and ``--password``; ``mpd.music_directory`` (or
``--music-directory``, default: beets' ``directory``) is the folder MPD's
music directory is, as this machine sees it. The tracks are chosen as
``beet similar`` chooses them, with the same filters, spacing and
``--unlike``.
"""

from __future__ import annotations

import os
import signal

from beets import config as beets_config
from beets import ui
from beets.ui import Subcommand

from .common import guarded


def command(plugin) -> Subcommand:
    from .similar import add_filter_options

    cmd = Subcommand("radio", help="keep MPD's queue playing tracks that sound alike")
    cmd.parser.usage = cmd.parser.usage.replace("[options]", "[options] [QUERY]")
    cmd.parser.usage += (
        "\n\nWhile it runs, whenever fewer than --ahead tracks follow the playing"
        "\none, append -n tracks that sound like the last few played (never one"
        "\nqueued or played since the start). QUERY seeds an empty queue."
        "\n  beet radio                   # until Ctrl-C"
        "\n  beet radio --once            # top up once and exit (cron)"
    )
    add = cmd.parser.add_option
    add("--host", default=None, help="MPD's host (default: mpd.host, localhost)")
    add("--port", type="int", default=None, help="MPD's port (default: mpd.port, 6600)")
    add("--password", default=None, help="MPD's password (default: mpd.password)")
    add("--music-directory", metavar="DIR", default=None,
        help="the folder MPD's music_directory is, as seen here "
             "(default: mpd.music_directory, else beets' directory)")
    add("--ahead", type="int", default=3, metavar="K",
        help="keep at least K tracks after the playing one (default 3)")
    add("-n", "--count", type="int", default=None,
        help="tracks added at a time (default: --ahead)")
    add("--once", action="store_true", default=False,
        help="top the queue up once and exit")
    add_filter_options(cmd.parser)
    cmd.func = guarded(plugin, run)
    return cmd


def mpd_address(opts):
    """MPD's address: options over beets' ``mpd:`` section over MPD_HOST /
    MPD_PORT over localhost:6600."""
    from ..radio import MpdAddress

    section = beets_config["mpd"]

    def configured(key):
        return section[key].get() if section[key].exists() else None

    env_host = os.environ.get("MPD_HOST", "")
    env_password = ""
    if "@" in env_host and not env_host.startswith("@"):
        env_password, env_host = env_host.split("@", 1)
    host = opts.host or configured("host") or env_host or "localhost"
    port = opts.port or configured("port") or os.environ.get("MPD_PORT") or 6600
    password = opts.password
    if password is None:
        password = configured("password") or env_password or ""
    try:
        port = int(port)
    except (TypeError, ValueError):
        raise ui.UserError(f"soundslike: mpd.port must be a port number, not {port!r}")
    if not 0 < port < 65536:
        raise ui.UserError(f"soundslike: mpd.port must be 1 to 65535, not {port}")
    return MpdAddress(host=str(host), port=port, password=str(password))


def music_directory(opts) -> str:
    section = beets_config["mpd"]
    folder = opts.music_directory
    if not folder and section["music_directory"].exists():
        folder = section["music_directory"].as_filename()
    return os.fsdecode(folder or beets_config["directory"].as_filename())


def run(plugin, lib, opts, args) -> None:
    from ..radio import Radio, RadioError, uri_map
    from ..store import open_store
    from .similar import filters, not_embedded_message, spacing_of

    settings = plugin.settings(lib)
    defaults = plugin.playlist_settings()
    if opts.ahead < 1:
        raise ui.UserError("--ahead must be 1 or more")
    if opts.count is not None and opts.count < 1:
        raise ui.UserError("-n must be 1 or more")
    if not 0.0 <= opts.variety <= 1.0:
        raise ui.UserError("--variety must be between 0 and 1")
    address = mpd_address(opts)
    folder = music_directory(opts)
    base = filters(lib, opts, defaults)
    start = []
    if args:
        start = [item.id for item in lib.items(args)]
        if not start:
            raise ui.UserError(f"no items match {' '.join(args)!r}")
    collection = settings.spec.collection
    with open_store(settings) as store:
        if store.dimension(collection) is None:
            raise ui.UserError(not_embedded_message(store, settings.spec))
    paths = [(item.id, item.path) for item in lib.items()]
    uris = uri_map(paths, folder)
    recommend = recommender(settings, lib, base, spacing_of(opts, defaults), opts.variety,
                            uris, {item_id for item_id, _ in paths}, plugin.log)

    def label(item_id):
        item = lib.get_item(item_id)
        return f"{item.artist} - {item.title}" if item else str(item_id)

    radio = Radio(
        address, uris, recommend, plugin.log, music_dir=folder, ahead=opts.ahead,
        count=opts.count, start_seeds=start, label=label, once=opts.once,
    )
    # SIGTERM (a service manager, `kill`) stops it as Ctrl-C does: a radio
    # started in the background has SIGINT ignored by its shell.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        added = radio.run()
    except RadioError as exc:
        raise ui.UserError(f"soundslike: {exc}")
    except KeyboardInterrupt:
        added = len(radio.added)
        plugin.log.info("radio stopped")
    finally:
        signal.signal(signal.SIGTERM, previous)
    plugin.log.info("radio: added {} track(s) in all", added)


def recommender(settings, lib, base, spacing, variety, uris, library_ids, log):
    """``recommend(seeds, exclude, count)`` for the radio: ``beet
    similar``'s search, restricted to tracks MPD can be given, over the
    store as answers see it (live items whose records are their files',
    one copy of a recording). The store is opened for each top-up only,
    so imports run meanwhile."""
    from ..playlist import PlaylistError, sounds_like
    from ..provenance import LiveHits, LiveStore
    from ..radio import RecommendFailed
    from ..store import StoreError, open_store

    collection = settings.spec.collection
    outside = set(library_ids) - set(uris)
    allowed = base.allowed
    if allowed is not None:
        allowed = set(allowed) & set(uris)
    elif len(outside) > len(uris):
        allowed = set(uris)
    never = base.exclude | (outside if allowed is None else set())

    def recommend(seeds, exclude, count):
        try:
            with open_store(settings) as raw, raw.session(collection):
                store = LiveStore(raw, LiveHits(lib))
                hits, notes = sounds_like(
                    store, collection, list(seeds), count,
                    exclude=set(exclude) | never, allowed=allowed,
                    spacing=spacing, variety=variety, unlike=base.unlike,
                )
        except (PlaylistError, StoreError) as exc:
            raise RecommendFailed(str(exc))
        for note in notes:
            log.debug("radio: {}", note)
        return [hit.id for hit in hits]

    return recommend
