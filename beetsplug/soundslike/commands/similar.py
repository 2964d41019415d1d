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


@dataclass
class Selection:
    """Item ids that shape one playlist request."""

    seeds: list[int]
    exclude: set[int] = field(default_factory=set)
    allowed: set[int] | None = None


def run(plugin, lib, opts, args) -> None:
    from ..playlist import Spacing
    from ..store import open_store

    settings = plugin.settings(lib)
    defaults = plugin.playlist_settings()
    count = opts.count if opts.count is not None else defaults.count
    if count < 1:
        raise ui.UserError("-n must be 1 or more")
    if not 0.0 <= opts.variety <= 1.0:
        raise ui.UserError("--variety must be between 0 and 1")

    selection, seed_items = _select(lib, opts, args, defaults)
    spacing = Spacing(
        max_per_artist=_option(opts.max_per_artist, defaults.max_per_artist),
        max_per_album=_option(opts.max_per_album, defaults.max_per_album),
    )
    collection = settings.spec.collection
    with open_store(settings) as store, store.session(collection):
        if store.dimension(collection) is None:
            raise ui.UserError(not_embedded_message(store, settings.spec))
        if opts.to:
            items = _song_path(store, collection, lib, opts, selection, seed_items, count)
        elif opts.album:
            albums = _album_playlist(store, collection, lib, selection, seed_items, count, opts)
            _print_albums(defaults, albums, opts)
            return
        else:
            items = _track_playlist(plugin, store, collection, lib, selection, count,
                                    spacing, opts.variety)
    _print_items(defaults, items, opts, header=not opts.continue_)


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
    if opts.avoid:
        avoid |= {item.id for item in _items_for_paths(lib, read_playlist(opts.avoid))}

    selection = Selection(seeds=[item.id for item in seed_items], exclude=set(avoid))
    if opts.exclude_artist:
        for artist in {item.artist for item in seed_items if item.artist}:
            selection.exclude |= {i.id for i in lib.items(MatchQuery("artist", artist))}
    if opts.exclude_album:
        for album_id in {item.album_id for item in seed_items if item.album_id}:
            selection.exclude |= {i.id for i in lib.items(MatchQuery("album_id", album_id))}
    for query in (defaults.exclude, (opts.exclude or "").strip()):
        if query:
            selection.exclude |= {item.id for item in lib.items(query)}
    if opts.where:
        selection.allowed = {item.id for item in lib.items(opts.where)}
    return selection, seed_items


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
    start, end = seed_items[0], end_items[0]
    if start.id == end.id:
        raise ui.UserError("--to must name another track than the seed")
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
        exclude_albums=seed_albums,
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
    from ..playlist import m3u, playlist_path

    relative_to = opts.relative_to or defaults.relative_to
    prefix = opts.prefix if opts.prefix is not None else defaults.prefix
    entries = (
        (playlist_path(item.path, relative_to, prefix), item.length, item.artist, item.title)
        for item in items
    )
    sys.stdout.write(m3u(entries, header=header))
    sys.stdout.flush()
