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
) -> tuple[list[Hit], list[str]]:
    """The ``count`` tracks that sound most like the seeds, and notes for
    the user (e.g. that spacing rules had to relax)."""
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
    query = centroid(vectors.values())
    excluded = set(int(i) for i in exclude) | set(int(i) for i in seed_ids)
    spacing = spacing or Spacing()
    limit = count * CANDIDATE_FACTOR if spacing.active else count
    hits = store.nearest(collection, query, limit, exclude=excluded, allowed=allowed)
    chosen, relaxed = space_out(hits, count, spacing)
    if relaxed:
        notes.append(
            "not enough different artists/albums nearby: spacing relaxed "
            f"to fill {count} tracks"
        )
    return chosen, notes


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
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        for line in handle:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not os.path.isabs(line):
                line = os.path.normpath(os.path.join(base, line))
            out.append(line)
    return out
