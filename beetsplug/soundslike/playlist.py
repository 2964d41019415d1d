"""Sounds-like playlists: nearest neighbours of a set of seed tracks,
spaced so one artist or album does not fill the list, written as M3U.

The seed vector is the normalised centroid of the seeds' stored vectors,
searched once in Qdrant (one HNSW query whatever the number of seeds).
Exclusions (the seeds, their artists, a ``--where`` selection) travel to
Qdrant as id filters, so the search itself never returns them.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .store import Hit, VectorStore

#: How many more candidates than requested to fetch when spacing rules
#: may skip some.
CANDIDATE_FACTOR = 8


class PlaylistError(Exception):
    """The playlist cannot be made; the message says why in one line."""


@dataclass
class Spacing:
    """At most this many tracks per artist / per album (0 = no limit)."""

    max_per_artist: int = 0
    max_per_album: int = 0

    @property
    def active(self) -> bool:
        return self.max_per_artist > 0 or self.max_per_album > 0


def centroid(vectors: Iterable[np.ndarray]) -> np.ndarray:
    """Normalised mean direction of unit vectors."""
    stacked = np.stack([np.asarray(v, np.float32) for v in vectors])
    mean = stacked.mean(axis=0)
    norm = float(np.linalg.norm(mean))
    if norm == 0.0:
        raise PlaylistError("the seed tracks cancel out: choose fewer seeds")
    return mean / norm


def sounds_like(
    store: VectorStore,
    collection: str,
    seed_ids: Sequence[int],
    count: int,
    exclude: Iterable[int] = (),
    allowed: Iterable[int] | None = None,
    spacing: Spacing | None = None,
    variety: float = 0.0,
    unlike: Iterable[int] = (),
) -> tuple[list[Hit], list[str]]:
    """The ``count`` tracks that sound most like the seeds (and least like
    the ``unlike`` tracks, never one of them), and notes for the user (e.g.
    that spacing rules had to relax)."""
    notes: list[str] = []
    vectors = store.vectors(collection, seed_ids)
    if not vectors:
        raise PlaylistError(
            "none of the seed tracks is embedded yet: run 'beet embed' first"
        )
    if len(vectors) < len(seed_ids):
        notes.append(
            f"{len(seed_ids) - len(vectors)} of {len(seed_ids)} seed tracks "
            "are not embedded yet and were left out (run 'beet embed')"
        )
    excluded = set(int(i) for i in exclude) | set(int(i) for i in seed_ids)
    spacing = spacing or Spacing()
    limit = count * CANDIDATE_FACTOR if spacing.active else count
    hits = search(store, collection, vectors, limit, excluded, allowed, variety,
                  unlike, notes)
    chosen, relaxed = space_out(hits, count, spacing)
    if relaxed:
        notes.append(
            "not enough different artists/albums nearby: spacing relaxed "
            f"to fill {count} tracks"
        )
    return chosen, notes


def search(
    store: VectorStore,
    collection: str,
    seeds: dict[int, np.ndarray],
    limit: int,
    exclude: set[int],
    allowed: Iterable[int] | None,
    variety: float = 0.0,
    unlike: Iterable[int] = (),
    notes: list[str] | None = None,
) -> list[Hit]:
    """The one search of the playlists: nearest to the seeds' centroid, or
    with ``unlike`` tracks Qdrant's recommend query (the seeds its positive,
    the unlike tracks its negative examples). The unlike tracks are never
    returned."""
    query = centroid(seeds.values())
    unlike = {int(i) for i in unlike} - set(seeds)
    negatives = store.vectors(collection, unlike) if unlike else {}
    if unlike and not negatives and notes is not None:
        notes.append("none of the --unlike tracks is embedded yet: they are only left out")
    if not negatives:
        return store.nearest(collection, query, limit, exclude=exclude | unlike,
                             allowed=allowed, variety=variety)
    return store.recommend(
        collection, list(seeds.values()), list(negatives.values()), limit,
        exclude=exclude | unlike, allowed=allowed, variety=variety, around=query,
    )


def space_out(hits: Sequence[Hit], count: int, spacing: Spacing) -> tuple[list[Hit], bool]:
    """Pick hits in order of closeness, skipping those that exceed the
    per-artist/per-album limits; if that leaves fewer than ``count``, fill
    up with the closest skipped ones (relaxing the rule rather than
    returning a short list). Returns (chosen, whether it relaxed)."""
    if not spacing.active:
        return list(hits[:count]), False
    chosen: list[Hit] = []
    skipped: list[Hit] = []
    artists: Counter = Counter()
    albums: Counter = Counter()
    for hit in hits:
        if len(chosen) >= count:
            break
        artist = (hit.payload.get("artist") or "").casefold()
        album = (hit.payload.get("album_id") or hit.payload.get("album") or "")
        too_many_artist = (
            spacing.max_per_artist and artist and artists[artist] >= spacing.max_per_artist
        )
        too_many_album = (
            spacing.max_per_album and album and albums[album] >= spacing.max_per_album
        )
        if too_many_artist or too_many_album:
            skipped.append(hit)
            continue
        chosen.append(hit)
        artists[artist] += 1
        albums[album] += 1
    relaxed = False
    if len(chosen) < count and skipped:
        relaxed = True
        chosen += skipped[: count - len(chosen)]
        chosen.sort(key=lambda h: -h.score)
    return chosen, relaxed


def slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """The unit vector a fraction ``t`` of the way along the great circle
    from ``a`` to ``b`` (cosine similarity changes evenly along it)."""
    cos = float(np.clip(np.dot(a, b), -1.0, 1.0))
    angle = float(np.arccos(cos))
    if angle < 1e-6:
        return a
    point = (np.sin((1 - t) * angle) * a + np.sin(t * angle) * b) / np.sin(angle)
    return point / np.linalg.norm(point)


def song_path(
    store: VectorStore,
    collection: str,
    start_ids: Sequence[int],
    end_ids: Sequence[int],
    count: int,
    exclude: Iterable[int] = (),
    allowed: Iterable[int] | None = None,
) -> list[Hit]:
    """``count`` tracks leading from the start seeds' sound to the end
    seeds' sound.

    The way is the great circle between the two centroids, cut into
    ``count + 1`` even steps; at each step the nearest track not used yet
    is taken. Each step is a small change of sound, no track comes twice,
    and the result is deterministic for a given library.
    """
    vectors = store.vectors(collection, list(start_ids) + list(end_ids))
    start = [vectors[i] for i in start_ids if i in vectors]
    end = [vectors[i] for i in end_ids if i in vectors]
    if not start or not end:
        raise PlaylistError(
            "both ends of the path must be embedded: run 'beet embed' first"
        )
    a, b = centroid(start), centroid(end)
    used = set(int(i) for i in exclude) | set(start_ids) | set(end_ids)
    path: list[Hit] = []
    for step in range(1, count + 1):
        point = slerp(a, b, step / (count + 1))
        hits = store.nearest(collection, point, 1, exclude=used, allowed=allowed)
        if not hits:
            break
        path.append(hits[0])
        used.add(hits[0].id)
    return path


def similar_albums(
    store: VectorStore,
    collection: str,
    seed_ids: Sequence[int],
    count: int,
    exclude: Iterable[int] = (),
    allowed: Iterable[int] | None = None,
    exclude_albums: Iterable[int] = (),
    tracks_per_album: int = 3,
    unlike: Iterable[int] = (),
) -> list[int]:
    """Album ids whose tracks sound most like the seeds.

    An album's score is the mean similarity of its ``tracks_per_album``
    closest tracks among a wide set of nearest tracks, so an album needs
    several close tracks, not one lucky song, to rank high.
    """
    vectors = store.vectors(collection, seed_ids)
    if not vectors:
        raise PlaylistError("none of the seed albums is embedded yet: run 'beet embed'")
    skip = set(int(a) for a in exclude_albums)
    limit = max(200, count * 40)
    hits = search(
        store, collection, vectors, limit,
        set(int(i) for i in exclude) | set(seed_ids), allowed, unlike=unlike,
    )
    scores: dict[int, list[float]] = {}
    for hit in hits:
        album_id = int(hit.payload.get("album_id") or 0)
        if album_id and album_id not in skip:
            scores.setdefault(album_id, []).append(hit.score)
    ranked = sorted(
        scores,
        key=lambda a: -float(np.mean(sorted(scores[a], reverse=True)[:tracks_per_album])),
    )
    return ranked[:count]


def playlist_path(path: str | bytes, relative_to: str | None, prefix: str = "") -> str:
    """A path as a player on another device should read it: relative to
    ``relative_to`` (a playlist folder, a mount point) and behind
    ``prefix`` (e.g. a URL or another machine's music root)."""
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if relative_to:
        path = os.path.relpath(path, os.path.expanduser(relative_to))
    return f"{prefix}{path}" if prefix else path


def m3u_entry(path: str | bytes, seconds: float, artist: str, title: str) -> str:
    """One ``#EXTINF`` line and the path, as players expect."""
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    label = f"{artist} - {title}" if artist else (title or os.path.basename(path))
    label = label.replace("\n", " ").replace("\r", " ")
    return f"#EXTINF:{int(round(seconds or 0))},{label}\n{path}\n"


def m3u(entries: Iterable[tuple[str | bytes, float, str, str]], header: bool = True) -> str:
    """An extended M3U playlist."""
    text = "#EXTM3U\n" if header else ""
    return text + "".join(m3u_entry(*entry) for entry in entries)


def read_playlist(path: str) -> list[str]:
    """Paths listed in an M3U (or a plain list of paths), in order."""
    base = os.path.dirname(os.path.abspath(path))
    out = []
    try:
        handle = open(path, encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        reason = (exc.strerror or type(exc).__name__).lower()
        raise PlaylistError(f"cannot read the playlist {path}: {reason}") from None
    with handle:
        for line in handle:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not os.path.isabs(line):
                line = os.path.normpath(os.path.join(base, line))
            out.append(line)
    return out
