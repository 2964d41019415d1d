"""What a stored record was computed from, and whether it still applies.

beets reuses item ids (remove the highest id, import a track: same id),
files change behind beets' back, and other tools edit the library with the
plugin off. A record keyed by the item id alone would then answer for the
wrong file. So every vector point (payload field :data:`SOURCE_FIELD`) and
every fingerprint record carries the *identity* of the file it was
computed from: a 63-bit digest of the file's path, size and modification
time in nanoseconds (:func:`file_identity`). It costs one ``stat``; a
digest of the content would read every byte of every file each time the
plugin decides what is analysed, which costs about as much as decoding.

A record is used only while its identity is the live item's
(:class:`Records`): a record of a removed item (an *orphan*), of another
file under a reused id, of a file changed since its analysis, or of a
file that is gone is never part of an answer; ``beet embed``, the import
stage and ``beet embed --check`` replace or remove it (:func:`audit`).
When beets itself writes tags or moves a file with the plugin on, the
plugin carries the identity over to the file's new size, time and path,
so a tag edit costs no new analysis.

Records written before identities existed (*legacy* records) keep
working without a rescan: a point whose stored path is the item's path
and whose stored duration is the item's length (within
:data:`LEGACY_DURATION_SLACK`) is trusted, and so is a fingerprint whose
item's point is; ``beet embed`` records the current file's identity for
them once, without the model.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from .settings import RECORDING_FIELD

#: The payload field of a vector point that holds its identity.
SOURCE_FIELD = "source"

#: Seconds a legacy point's stored duration may differ from the item's
#: length (beets reads the length from the stream info, the plugin from
#: the decoded audio).
LEGACY_DURATION_SLACK = 1.0

#: Verdicts on a record. OK: its identity is the item's file now. LEGACY:
#: it has none, and what it stored fits the item. ORPHAN: the item is
#: gone. OTHER_FILE: computed from another path (a reused id, or a move
#: made with the plugin off). CHANGED: same path, but the file was
#: replaced or rewritten since. FILE_MISSING: the item's file is gone.
OK, LEGACY, ORPHAN, OTHER_FILE, CHANGED, FILE_MISSING = (
    "ok", "legacy", "orphan", "other file", "changed", "file missing",
)
#: Verdicts of records that may be used for an answer.
USABLE = frozenset((OK, LEGACY))
#: Verdicts on a fingerprint that the item's vector point cannot change
#: (:meth:`Records.fingerprint`): only a legacy record, or one of another
#: identity, needs the point to be judged.
SETTLED_WITHOUT_POINT = frozenset((OK, ORPHAN, FILE_MISSING))


def identity(path: str | bytes, size: int, mtime_ns: int) -> int:
    """The identity of a file with this path, size and modification time."""
    text = f"{os.fsdecode(path)}\0{int(size)}\0{int(mtime_ns)}"
    digest = hashlib.blake2b(
        text.encode("utf-8", "surrogateescape"), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big") >> 1  # fits a signed 64-bit field


def file_identity(path: str | bytes, stat_path: str | bytes | None = None) -> int | None:
    """The identity of the file at ``path`` now, or None when it cannot be
    read. ``stat_path`` takes size and time from another name of the same
    file (the destination of a move)."""
    try:
        st = os.stat(stat_path if stat_path is not None else path)
    except (OSError, ValueError):
        return None
    return identity(path, st.st_size, st.st_mtime_ns)


class Records:
    """Judges stored records against live items, stating each file once.

    One instance serves one command or one request: a file changed during
    it is seen by the next.
    """

    def __init__(self) -> None:
        self._live: dict[int, int | None] = {}

    def live(self, item) -> int | None:
        """The identity of ``item``'s file now (None: it is gone)."""
        key = int(item.id)
        if key not in self._live:
            self._live[key] = file_identity(item.path)
        return self._live[key]

    def point(self, item, payload: dict | None) -> str:
        """The verdict on the vector point with ``payload`` stored under
        ``item``'s id (``item`` None: no such item)."""
        if item is None:
            return ORPHAN
        live = self.live(item)
        if live is None:
            return FILE_MISSING
        payload = payload or {}
        same_path = payload.get("path") == os.fsdecode(item.path)
        source = payload.get(SOURCE_FIELD)
        if source is not None:
            if int(source) == live:
                return OK
            return CHANGED if same_path else OTHER_FILE
        if not same_path:
            return OTHER_FILE
        stored, length = payload.get("duration") or 0.0, item.get("length") or 0.0
        if stored and length and abs(float(stored) - float(length)) > LEGACY_DURATION_SLACK:
            return OTHER_FILE
        return LEGACY

    def fingerprint(self, item, source: int | None, point: str | None = None) -> str:
        """The verdict on a fingerprint record with identity ``source``
        (None: a legacy record) stored under ``item``'s id; ``point`` is
        the verdict on the item's vector point, if it has one: a legacy
        fingerprint was made in the same run, and a fingerprint of another
        identity is another file's when the point says so."""
        if item is None:
            return ORPHAN
        live = self.live(item)
        if live is None:
            return FILE_MISSING
        if source is not None:
            if int(source) == live:
                return OK
            return OTHER_FILE if point == OTHER_FILE else CHANGED
        if point is None or point in USABLE:
            return LEGACY
        return point


@dataclass
class Audit:
    """The verdicts on the records of a set of items (:func:`audit`)."""

    #: Item id -> verdict on its vector point, for items that have one.
    points: dict[int, str] = field(default_factory=dict)
    #: Item id -> verdict on its fingerprint, for items that have one.
    prints: dict[int, str] = field(default_factory=dict)
    #: Items not fully analysed: no usable point, or no usable fingerprint.
    todo: list = field(default_factory=list)
    #: Identities to record for usable legacy records: id -> identity.
    adopt_points: dict[int, int] = field(default_factory=dict)
    adopt_prints: dict[int, int] = field(default_factory=dict)
    #: Ids whose items' files are gone.
    file_missing: set[int] = field(default_factory=set)

    def usable_points(self) -> set[int]:
        return {i for i, verdict in self.points.items() if verdict in USABLE}

    def usable_prints(self) -> set[int]:
        return {i for i, verdict in self.prints.items() if verdict in USABLE}

    def stale_points(self) -> set[int]:
        return {i for i, verdict in self.points.items() if verdict not in USABLE}

    def stale_prints(self) -> set[int]:
        return {i for i, verdict in self.prints.items() if verdict not in USABLE}

    def count(self, verdict: str) -> int:
        """Items with a record of this verdict (a point or a fingerprint)."""
        return len({i for i, v in self.points.items() if v == verdict}
                   | {i for i, v in self.prints.items() if v == verdict})


def audit(
    items: Iterable,
    payloads: dict[int, dict],
    sources: dict[int, int],
    printed: set[int] | None,
    records: Records | None = None,
) -> Audit:
    """Judge the records of ``items``: ``payloads`` of their points,
    ``sources`` (identities) of their fingerprints and ``printed``, the ids
    that have a fingerprint (None: fingerprints are switched off)."""
    records = records or Records()
    result = Audit()
    for item in items:
        item_id = int(item.id)
        live = records.live(item)
        if live is None:
            result.file_missing.add(item_id)
        point = None
        if item_id in payloads:
            point = result.points[item_id] = records.point(item, payloads[item_id])
            if point == LEGACY:
                result.adopt_points[item_id] = live
        if printed is not None and item_id in printed:
            verdict = records.fingerprint(item, sources.get(item_id), point)
            result.prints[item_id] = verdict
            if verdict == LEGACY:
                result.adopt_prints[item_id] = live
        has_point = point in USABLE
        has_print = printed is None or result.prints.get(item_id) in USABLE
        if not (has_point and has_print):
            result.todo.append(item)
    return result


def recording_key(item) -> tuple[str, int]:
    """Items with the same key are copies of one recording
    (``soundslike_recording``)."""
    value = item.get(RECORDING_FIELD)
    return ("recording", int(value)) if value else ("item", int(item.id))


class LiveHits:
    """Decides which search hits may be offered: the hit's item exists,
    its point is usable, and no other copy of its recording was taken
    before (or is among ``taken``, items already in the list: the matched
    track of a clip, a playlist being continued). Taken items are kept in
    :attr:`items` by id."""

    def __init__(self, lib, records: Records | None = None, taken: Iterable = ()) -> None:
        self.lib = lib
        self.records = records or Records()
        self.items: dict[int, object] = {}
        #: Recording -> the item id that stands for it.
        self._chosen: dict[tuple[str, int], int] = {}
        for item in taken:
            self._chosen.setdefault(recording_key(item), int(item.id))

    def __call__(self, hit) -> bool:
        item_id = int(hit.id)
        if item_id in self.items:
            return True
        item = self.lib.get_item(item_id)
        if self.records.point(item, hit.payload) not in USABLE:
            return False
        if self._chosen.setdefault(recording_key(item), item_id) != item_id:
            return False
        self.items[item_id] = item
        return True

    def usable(self, store, collection: str, ids: Iterable[int]) -> list[int]:
        """The ids among ``ids`` whose stored point may be used (seeds)."""
        ids = [int(i) for i in ids]
        payloads = store.payloads(collection, ids) if ids else {}
        return [
            i for i in ids
            if i in payloads
            and self.records.point(self.lib.get_item(i), payloads[i]) in USABLE
        ]


class LiveStore:
    """A vector store as answers see it: a search returns only hits that
    ``accept`` (a :class:`LiveHits`) takes, searching on past the others
    so that a list fills to the count asked for even when orphans or
    stale points lie nearest; seeds whose point is not usable give no
    vector. Everything else is the wrapped store's."""

    #: Searches per request at most; each asks for twice as many hits.
    MAX_ROUNDS = 8

    def __init__(self, store, accept: LiveHits) -> None:
        self.store = store
        self.accept = accept

    def __getattr__(self, name):
        return getattr(self.store, name)

    def vectors(self, name, ids):
        return self.store.vectors(name, self.accept.usable(self.store, name, ids))

    def nearest(self, name, vector, limit, exclude=(), allowed=None, variety=0.0):
        return self._fill(limit, exclude, lambda ask, skip: self.store.nearest(
            name, vector, ask, exclude=skip, allowed=allowed, variety=variety))

    def recommend(self, name, positive, negative, limit, exclude=(), allowed=None,
                  variety=0.0, around=None):
        return self._fill(limit, exclude, lambda ask, skip: self.store.recommend(
            name, positive, negative, ask, exclude=skip, allowed=allowed,
            variety=variety, around=around))

    def _fill(self, limit, exclude, search) -> list:
        """Up to ``limit`` accepted hits of ``search(ask, skip)``, asking
        again past the hits seen (twice as many each round)."""
        if limit <= 0:
            return []
        skip = {int(i) for i in exclude}
        kept: list = []
        ask = int(limit)
        for _ in range(self.MAX_ROUNDS):
            hits = search(ask, set(skip))
            for hit in hits:
                skip.add(int(hit.id))
                if len(kept) < limit and self.accept(hit):
                    kept.append(hit)
            if len(kept) >= limit or len(hits) < ask:
                break
            ask *= 2
        return kept
