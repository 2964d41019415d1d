"""``beet similar``: sounds-like playlists from any beets query.

This module turns options and beets queries into item-id sets (seeds,
exclusions, allowed candidates) and prints the result; the search itself
is :mod:`..playlist` over the vector store. Every filter becomes an id set
that travels to Qdrant with the query, so the store never returns a track
only to have it thrown away here.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from beets import ui
from beets.dbcore.query import MatchQuery
from beets.ui import Subcommand

from ..compute import exit_without_final_collection
from .common import guarded, query_items

#: Seeds taken from the end of a playlist given to --continue.
CONTINUE_SEEDS = 3


def command(plugin) -> Subcommand:
    cmd = Subcommand(
        "similar", help="print a playlist of tracks that sound like the query"
    )
    cmd.parser.usage += (
        "\n\nThe seeds are every item (or album, with -a) QUERY matches; prints"
        "\nan M3U playlist of the nearest-sounding other tracks:"
        "\n  beet similar \"artist:X\" -n 5 > mix.m3u"
        "\n  beet similar --continue mix.m3u -n 5 >> mix.m3u"
        "\n  beet similar \"title:Song A\" --to \"title:Song B\" -n 8"
    )
    add = cmd.parser.add_option
    add("-n", "--count", type="int", default=None,
        help="number of tracks (albums with -a); default: soundslike.count")
    cmd.parser.add_album_option()
    cmd.parser.add_format_option()
    add("--exclude-artist", action="store_true", default=False,
        help="leave out tracks by the seeds' artists")
    add("--exclude-album", action="store_true", default=False,
        help="leave out tracks from the seeds' albums")
    add_filter_options(cmd.parser)
    add("--continue", dest="continue_", metavar="PLAYLIST", default=None,
        help="seed from the last tracks of PLAYLIST, avoid all of it, and "
             "print only the new entries (append them with >>)")
    add("--to", metavar="QUERY", default=None,
        help="a path from the seed to this track, passing through N tracks")
    add("--relative-to", metavar="DIR", default=None,
        help="write paths relative to DIR (default: soundslike.relative_to)")
    add("--prefix", metavar="PREFIX", default=None,
        help="prepend PREFIX to every path (default: soundslike.prefix)")

    cmd.func = guarded(plugin, run)
    return cmd


def add_filter_options(parser) -> None:
    """The options that filter and space the answer, shared with ``beet
    radio`` (and, by their long names, with mixes)."""
    add = parser.add_option
    add("--max-per-artist", type="int", default=None, metavar="K",
        help="at most K tracks per artist (relaxed if the list cannot fill)")
    add("--max-per-album", type="int", default=None, metavar="K",
        help="at most K tracks per album (relaxed if the list cannot fill)")
    add("--where", metavar="QUERY", default=None,
        help="keep only tracks matching this beets query, e.g. 'year:1990..1999'")
    add("--exclude", metavar="QUERY", default=None,
        help="drop tracks matching this beets query (adds to soundslike.exclude)")
    add("--variety", type="float", default=0.0, metavar="X",
        help="0 = nearest first (default) ... 1 = most diverse")
    add("--avoid", metavar="PLAYLIST", default=None,
        help="never return a track listed in this M3U (or list of paths)")
    add("--unlike", metavar="QUERY", action="append", default=None,
        help="steer away from tracks matching this beets query, never "
             "returning them (repeatable)")
    add("--unlike-playlist", metavar="PLAYLIST", action="append", default=None,
        help="steer away from the tracks listed in this M3U, e.g. those "
             "skipped (repeatable)")


@dataclass
class Selection:
    """Item ids that shape one playlist request."""

    seeds: list[int]
    exclude: set[int] = field(default_factory=set)
    allowed: set[int] | None = None
    #: Tracks to steer away from (also in ``exclude``).
    unlike: set[int] = field(default_factory=set)


def run(plugin, lib, opts, args) -> None:
    defaults = plugin.playlist_settings()
    items, albums = find(plugin, lib, opts, args, defaults)
    if albums is not None:
        _print_albums(defaults, albums, opts)
    else:
        _print_items(defaults, items, opts, header=not opts.continue_)
    exit_without_final_collection()


def find(plugin, lib, opts, args, defaults) -> tuple[list, list | None]:
    """What ``beet similar`` answers: (items, None), or with ``-a`` ([],
    albums)."""
    from ..store import open_store

    settings = plugin.settings(lib)
    count = opts.count if opts.count is not None else defaults.count
    if count < 1:
        raise ui.UserError("-n must be 1 or more")
    if not 0.0 <= opts.variety <= 1.0:
        raise ui.UserError("--variety must be between 0 and 1")
    if opts.to and opts.album:
        raise ui.UserError(
            "--to makes a path from one track to another: it does not work with -a"
        )
    spacing = spacing_of(opts, defaults)

    selection, seed_items = _select(lib, opts, args, defaults)
    if opts.to and opts.continue_ and not args:
        seed_items = seed_items[-1:]  # a path goes on from the playlist's last track
    collection = settings.spec.collection
    with open_store(settings) as store, store.session(collection):
        if store.dimension(collection) is None:
            raise ui.UserError(not_embedded_message(store, settings.spec))
        store = _live_store(store, lib, opts, seed_items)
        if opts.to:
            return _song_path(store, collection, lib, opts, selection, seed_items, count), None
        if opts.album:
            return [], _album_playlist(store, collection, lib, selection, seed_items,
                                       count, opts)
        return _track_playlist(plugin, store, collection, lib, selection, count,
                               spacing, opts.variety), None


def playlist_items(plugin, lib, opts, args) -> list:
    """The tracks of ``beet similar``'s answer (the albums' tracks with
    ``-a``), for a mix."""
    items, albums = find(plugin, lib, opts, args, plugin.playlist_settings())
    if albums is None:
        return items
    return [item for album in albums for item in album.items()]


def spacing_of(opts, defaults):
    """The spacing rule of ``--max-per-artist``/``--max-per-album`` over
    the config's."""
    from ..playlist import Spacing

    for name, value in (("--max-per-artist", opts.max_per_artist),
                        ("--max-per-album", opts.max_per_album)):
        if value is not None and value < 0:
            raise ui.UserError(f"{name} must be 0 (no limit) or more")
    return Spacing(
        max_per_artist=_option(opts.max_per_artist, defaults.max_per_artist),
        max_per_album=_option(opts.max_per_album, defaults.max_per_album),
    )


# -- choosing ids -------------------------------------------------------------


def _select(lib, opts, args, defaults) -> tuple[Selection, list]:
    from ..playlist import read_playlist

    avoid: set[int] = set()
    if opts.continue_:
        listed = _items_for_paths(lib, read_playlist(opts.continue_))
        if not listed and not args:
            raise ui.UserError(
                f"none of the tracks in {opts.continue_} is in the library"
            )
        avoid |= {item.id for item in listed}
        seed_items = listed[-CONTINUE_SEEDS:] if not args else _seed_items(lib, opts, args)
    else:
        if not args:
            raise ui.UserError("give a query for the seed tracks, e.g. artist:X")
        seed_items = _seed_items(lib, opts, args)

    selection = filters(lib, opts, defaults)
    selection.seeds = [item.id for item in seed_items]
    selection.exclude |= avoid
    if opts.exclude_artist:
        for artist in {item.artist for item in seed_items if item.artist}:
            selection.exclude |= {i.id for i in lib.items(MatchQuery("artist", artist))}
    if opts.exclude_album:
        for album_id in {item.album_id for item in seed_items if item.album_id}:
            selection.exclude |= {i.id for i in lib.items(MatchQuery("album_id", album_id))}
    return selection, seed_items


def filters(lib, opts, defaults) -> Selection:
    """The id sets of the filter options, seeds aside: ``--avoid``,
    ``--unlike``/``--unlike-playlist``, ``--exclude`` (and the config's),
    ``--where``."""
    from ..playlist import read_playlist

    selection = Selection(seeds=[])
    if opts.avoid:
        selection.exclude |= {i.id for i in _items_for_paths(lib, read_playlist(opts.avoid))}
    for query in opts.unlike or ():
        found = {item.id for item in lib.items(query)}
        if not found:
            raise ui.UserError(f"no items match {query!r} (--unlike)")
        selection.unlike |= found
    for path in opts.unlike_playlist or ():
        selection.unlike |= {i.id for i in _items_for_paths(lib, read_playlist(path))}
    selection.exclude |= selection.unlike
    for query in (defaults.exclude, (opts.exclude or "").strip()):
        if query:
            selection.exclude |= {item.id for item in lib.items(query)}
    if opts.where:
        selection.allowed = {item.id for item in lib.items(opts.where)}
    return selection


def _seed_items(lib, opts, args) -> list:
    items = query_items(lib, opts, args)
    if not items:
        kind = "albums" if opts.album else "items"
        raise ui.UserError(f"no {kind} match {' '.join(args)!r}")
    return items


def _items_for_paths(lib, paths: list[str]) -> list:
    """Library items for playlist paths, in playlist order (unknown paths
    are skipped)."""
    from beets.dbcore.query import PathQuery

    found = []
    for path in paths:
        item = lib.items(PathQuery("path", os.fsencode(path))).get()
        if item is not None:
            found.append(item)
    return found


def _live_store(store, lib, opts, seed_items):
    """The store as answers see it (:class:`...provenance.LiveStore`): live
    items whose records are their files', one copy of a recording; the
    tracks of a playlist being continued or avoided count as taken, and so
    do the seeds of a --to path (printed with it)."""
    from ..playlist import read_playlist
    from ..provenance import LiveHits, LiveStore

    taken = list(seed_items) if opts.to else []
    for listed in (opts.continue_, opts.avoid):
        if listed:
            taken += _items_for_paths(lib, read_playlist(listed))
    return LiveStore(store, LiveHits(lib, taken=taken))


def _option(value, default: int) -> int:
    return int(value) if value is not None else default


def not_embedded_message(store, spec) -> str:
    others = [n for n in store.collections() if n != spec.collection]
    if others:
        return (
            f"nothing is embedded yet with {spec.describe()}; the store holds "
            f"vectors of another model ({', '.join(others)}): "
            "run 'beet embed' to embed the library with the configured model"
        )
    return "nothing is embedded yet: run 'beet embed' first"


# -- the three kinds of playlist ---------------------------------------------


def _track_playlist(plugin, store, collection, lib, selection, count, spacing, variety):
    from ..playlist import sounds_like

    hits, notes = sounds_like(
        store, collection, selection.seeds, count, exclude=selection.exclude,
        allowed=selection.allowed, spacing=spacing, variety=variety,
        unlike=selection.unlike,
    )
    for note in notes:
        plugin.log.warning("{}", note)
    items = _hits_to_items(lib, hits)
    if not items:
        raise ui.UserError("no other embedded tracks found")
    return items


def _song_path(store, collection, lib, opts, selection, seed_items, count):
    from ..playlist import song_path

    end_items = list(lib.items(opts.to))
    if not end_items:
        raise ui.UserError(f"no items match {opts.to!r} (--to)")
    if len(end_items) > 1:
        raise ui.UserError(
            f"--to {opts.to!r} matches {len(end_items)} tracks; a path ends at one "
            "(narrow the query: id:N, or quote a phrase, title:\"A B\")"
        )
    if len(seed_items) > 1:
        raise ui.UserError(
            f"the seed query matches {len(seed_items)} tracks; a path (--to) starts "
            "at one (narrow the query, e.g. with id:N)"
        )
    start, end = seed_items[0], end_items[0]
    if start.id == end.id:
        raise ui.UserError("--to must name another track than the seed")
    # Scores are closeness to the path: both ends lie on it.
    start["soundslike_score"] = end["soundslike_score"] = 1.0
    between = song_path(
        store, collection, [start.id], [end.id], count,
        exclude=selection.exclude | {start.id, end.id}, allowed=selection.allowed,
    )
    return [start] + _hits_to_items(lib, between) + [end]


def _album_playlist(store, collection, lib, selection, seed_items, count, opts):
    from ..playlist import similar_albums

    seed_albums = {item.album_id for item in seed_items if item.album_id}
    album_ids = similar_albums(
        store, collection, selection.seeds, count,
        exclude=selection.exclude, allowed=selection.allowed,
        exclude_albums=seed_albums, unlike=selection.unlike,
    )
    albums = [lib.get_album(album_id) for album_id in album_ids]
    albums = [album for album in albums if album is not None]
    if not albums:
        raise ui.UserError("no other embedded albums found")
    return albums


def _hits_to_items(lib, hits) -> list:
    items = []
    for hit in hits:
        item = lib.get_item(hit.id)
        if item is None:
            continue  # an orphan point: 'beet embed --check' removes it
        item["soundslike_score"] = round(hit.score, 4)
        items.append(item)
    return items


# -- output -------------------------------------------------------------------


def _print_items(defaults, items, opts, header: bool) -> None:
    if opts.format:
        for item in items:
            ui.print_(format(item, opts.format))
        return
    _write_m3u(defaults, items, opts, header)


def _print_albums(defaults, albums, opts) -> None:
    if opts.format:
        for album in albums:
            ui.print_(format(album, opts.format))
        return
    items = [item for album in albums for item in album.items()]
    _write_m3u(defaults, items, opts, header=not opts.continue_)


def _write_m3u(defaults, items, opts, header: bool) -> None:
    sys.stdout.write(m3u_text(defaults, items, opts, header))
    sys.stdout.flush()


def m3u_text(defaults, items, opts, header: bool) -> str:
    """The M3U of ``items``, paths rewritten by ``--relative-to`` and
    ``--prefix`` (or the config's)."""
    from ..playlist import m3u, playlist_path

    relative_to = opts.relative_to or defaults.relative_to
    prefix = opts.prefix if opts.prefix is not None else defaults.prefix
    entries = (
        (playlist_path(item.path, relative_to, prefix), item.length, item.artist, item.title)
        for item in items
    )
    return m3u(entries, header=header)
