"""Landmark fingerprints stored in a Qdrant server or cluster (``url:``).

With ``url:`` set, the vectors live on the server, and so do the
fingerprints: every machine that points at the server identifies clips
against the same library, and the index grows with the cluster rather
than with one disk.

Layout
------
One collection, :data:`COLLECTION`, holds each track cut into parts of
:data:`.params.PART_SECONDS`. A part is one point:

* a sparse vector ``keys`` whose indices are the speed-invariant keys of
  the part's landmarks (value 1), searched with Qdrant's IDF modifier: a
  key that occurs in many parts (a common interval in a common register)
  weighs little, the same reason the local index reads the rarest keys
  first;
* the payload: ``item`` (beets id) and ``part`` (both indexed), ``start``
  (first frame), ``frames`` (the track's length) and ``landmarks``, the
  part's (landmark word, frame) pairs as base64 little-endian uint32.

Point ids are ``item * 65536 + part``, so rewriting an item replaces its
points. Part 0 is written last: an item counts as fingerprinted once it
is there, and an interrupted write leaves it missing, which ``beet embed``
completes.

Matching
--------
The same two stages as the local index (:class:`.match.LandmarkMatcher`):
the clip's keys as a sparse query return the best parts (the server does
the inverted-index work); their landmarks, read from the payload, go
through the same speed read-back, offset voting, verification and confidence
as locally, so both backends answer alike. Parts are long compared with a
clip (at most :data:`.params.MAX_CLIP_SECONDS`), so a clip spans at most
two parts, and both come back when it straddles them.
"""

from __future__ import annotations

import base64
import warnings
from collections.abc import Iterable, Iterator

import numpy as np

from .arrays import counted, distinct
from .backend import FingerprintBackend
from .landmarks import Landmarks, QueryKeys, landmark_keys
from .match import FingerprintError
from .voting import offset_cells
from .params import (
    CANDIDATE_PARTS,
    FINGERPRINT_VERSION,
    HASH_MASK,
    MAX_PARTS,
    MIN_SCORE,
    NO_KEY,
    PART_FRAMES,
    SAME_RECORDING_SHARE,
    UPSERT_BATCH,
    VERIFY_CANDIDATES,
)

#: The collection's name carries the fingerprint version: a change of the
#: hashes starts a new collection, filled by ``beet embed``.
COLLECTION = f"soundslike-fingerprints-v{FINGERPRINT_VERSION}"
VECTOR = "keys"


def encode_landmarks(hashes: np.ndarray, times: np.ndarray) -> str:
    pairs = np.stack([np.asarray(hashes, "<u4"), np.asarray(times, "<u4")], axis=1)
    return base64.b64encode(pairs.tobytes()).decode("ascii")


def decode_landmarks(text: str) -> tuple[np.ndarray, np.ndarray]:
    pairs = np.frombuffer(base64.b64decode(text), "<u4").reshape(-1, 2)
    return pairs[:, 0].astype(np.uint32), pairs[:, 1].astype(np.uint32)


class ServerFingerprints(FingerprintBackend):
    """The fingerprint index on a Qdrant server, with the interface of
    :class:`.local.FingerprintIndex` (buffered writes, :meth:`flush`)."""

    def __init__(self, store) -> None:
        """``store`` is the :class:`store.ServerStore` the vectors use: one
        connection, one way of reporting a server that is down."""
        super().__init__()
        self._store = store
        self._client = store.client
        self._m = store.models
        self._exists: bool | None = None

    # ---------------------------------------------------------------- setup

    def _collection_exists(self) -> bool:
        if not self._exists:
            with self._store.call():
                self._exists = bool(self._client.collection_exists(COLLECTION))
        return self._exists

    def _ensure(self) -> None:
        if self._collection_exists():
            return
        m = self._m
        with self._store.call():
            self._client.create_collection(
                COLLECTION, vectors_config={},
                sparse_vectors_config={VECTOR: m.SparseVectorParams(modifier=m.Modifier.IDF)},
            )
            with warnings.catch_warnings():
                # qdrant-client's in-process mode warns that it has no
                # payload indexes; a server builds them.
                warnings.simplefilter("ignore", UserWarning)
                for field in ("item", "part"):
                    self._client.create_payload_index(
                        COLLECTION, field, field_schema=m.PayloadSchemaType.INTEGER
                    )
        self._exists = True

    def _match(self, field: str, values) -> object:
        m = self._m
        values = [int(v) for v in values]
        match = m.MatchValue(value=values[0]) if len(values) == 1 else m.MatchAny(any=values)
        return m.FieldCondition(key=field, match=match)

    def _scroll(self, flt, fields) -> Iterable:
        offset = None
        while True:
            with self._store.call():
                points, offset = self._client.scroll(
                    COLLECTION, scroll_filter=flt, limit=256, offset=offset,
                    with_payload=fields, with_vectors=False,
                )
            yield from points
            if offset is None:
                return

    # -------------------------------------------------------------- queries

    def is_empty(self) -> bool:
        if not self._collection_exists():
            return True
        with self._store.call():
            return self._client.count(COLLECTION, exact=False).count == 0

    def stored_ids(self) -> set[int]:
        """Ids of items on the server (flushed)."""
        if not self._collection_exists():
            return set()
        flt = self._m.Filter(must=[self._match("part", [0])])
        return {int(p.payload["item"]) for p in self._scroll(flt, ["item"])}

    def stats(self) -> dict:
        parts = 0
        if self._collection_exists():
            with self._store.call():
                parts = int(self._client.count(COLLECTION, exact=True).count)
        return {"items": len(self.stored_ids()), "parts": parts, "segments": parts, "bytes": None}

    def landmarks(self, item_id: int) -> Landmarks | None:
        """An item's stored landmarks (all its parts), or None."""
        if not self._collection_exists():
            return None
        flt = self._m.Filter(must=[self._match("item", [item_id])])
        parts = sorted(self._scroll(flt, True), key=lambda p: p.payload["part"])
        if not parts or parts[0].payload["part"] != 0:
            return None
        decoded = [decode_landmarks(p.payload["landmarks"]) for p in parts]
        return Landmarks(np.concatenate([h for h, _ in decoded]),
                         np.concatenate([t for _, t in decoded]),
                         int(parts[0].payload["frames"]))

    def candidate_rounds(self, qk: QueryKeys, quick: bool = True
                        ) -> Iterator[list[tuple[int, np.ndarray, np.ndarray]]]:
        # One round: the parts whose keys match best come back, ready to
        # verify, like the local index's places, not whole tracks.
        yield self._best_parts(distinct(qk.hashes), VERIFY_CANDIDATES)

    def _best_parts(self, keys: np.ndarray, items: int, exclude: int | None = None):
        """(item, landmark words, frames) of the ``items`` tracks whose
        parts score best against ``keys``, the parts of one track joined,
        best first."""
        m = self._m
        query = m.SparseVector(indices=keys.tolist(), values=[1.0] * len(keys))
        flt = (m.Filter(must_not=[self._match("item", [exclude])])
               if exclude is not None else None)
        with self._store.call():
            found = self._client.query_points(
                COLLECTION, query=query, using=VECTOR, query_filter=flt,
                limit=CANDIDATE_PARTS, with_payload=["item", "landmarks"],
            ).points
        runs: dict[int, list] = {}
        for point in found:
            item = int(point.payload["item"])
            if item in runs or len(runs) < items:
                runs.setdefault(item, []).append(decode_landmarks(point.payload["landmarks"]))
        return [(item, np.concatenate([h for h, _ in parts]), np.concatenate([t for _, t in parts]))
                for item, parts in runs.items()]

    def same_recording(self, item_id: int, min_share: float = SAME_RECORDING_SHARE) -> list[int]:
        """Items holding the same recording as ``item_id`` (see
        :meth:`.local.FingerprintIndex.same_recording`): for a few of its
        parts, the best-matching parts of other tracks are fetched and
        must agree on one time offset over ``min_share`` of the shorter
        track's landmarks."""
        lm = self.landmarks(item_id)
        if lm is None or len(lm) == 0:
            return []
        starts = np.arange(0, max(1, lm.n_frames), PART_FRAMES)
        chosen = starts[np.linspace(0, starts.size - 1, min(3, starts.size)).astype(int)]
        others: set[int] = set()
        for start in chosen:
            inside = (lm.times >= start) & (lm.times < start + PART_FRAMES)
            keys = distinct(lm.keys[inside])
            keys = keys[keys != NO_KEY]
            if keys.size:
                others |= {run[0] for run in self._best_parts(keys, 4, exclude=item_id)}
        found = []
        for other in sorted(others):
            theirs = self.landmarks(other)
            if theirs is None:
                continue
            shorter = max(1, min(len(lm), len(theirs)))
            votes = _votes_at_one_offset(lm, theirs)
            if votes >= MIN_SCORE and votes >= min_share * shorter:
                found.append(other)
        return found

    # --------------------------------------------------------------- writes

    def stored_sources(self, ids=None) -> dict[int, int]:
        """Identities on part 0 of each item (the part that marks it stored)."""
        if not self._collection_exists():
            return {}
        must = [self._match("part", [0])]
        if ids is not None:
            ids = sorted(int(i) for i in ids)
            if not ids:
                return {}
            must.append(self._match("item", ids))
        points = self._scroll(self._m.Filter(must=must), ["item", "source"])
        return {int(p.payload["item"]): int(p.payload["source"])
                for p in points if p.payload.get("source") is not None}

    def write_changes(self, added: dict[int, Landmarks], removed: set[int], done,
                      sources: dict[int, int | None]) -> None:
        """Send the changes: old points of changed items go, then the new
        parts, part 0 of each item last."""
        m = self._m
        gone = sorted(set(added) | removed)
        if self._collection_exists() and gone:
            for k in range(0, len(gone), 1024):
                flt = m.Filter(must=[self._match("item", gone[k:k + 1024])])
                with self._store.call():
                    self._client.delete(COLLECTION, points_selector=m.FilterSelector(filter=flt),
                                        wait=True)
        if added:
            self._ensure()
            later, first = [], []
            for item_id, lm in sorted(added.items()):
                for part in self._parts(item_id, lm):
                    if part.payload["part"] == 0 and sources.get(item_id) is not None:
                        part.payload["source"] = int(sources[item_id])
                    (first if part.payload["part"] == 0 else later).append(part)
            for points in (later, first):
                for k in range(0, len(points), UPSERT_BATCH):
                    with self._store.call():
                        self._client.upsert(COLLECTION, points=points[k:k + UPSERT_BATCH],
                                            wait=True)
        relabel = {i: s for i, s in sources.items()
                   if i not in added and i not in removed and s is not None}
        if relabel and self._collection_exists():
            for item_id, source in relabel.items():
                # By filter: an id without a stored part 0 is left alone.
                flt = m.Filter(must=[self._match("item", [item_id]), self._match("part", [0])])
                with self._store.call():
                    self._client.set_payload(COLLECTION, payload={"source": int(source)},
                                             points=flt, wait=True)
        done()

    def _parts(self, item_id: int, lm: Landmarks) -> list:
        m = self._m
        times = np.asarray(lm.times, np.uint32)
        hashes = np.asarray(lm.hashes, np.uint32)
        number = (times // PART_FRAMES).astype(np.int64)
        n_parts = max(1, int(number.max()) + 1 if number.size else 1)
        if n_parts > MAX_PARTS:
            raise FingerprintError(f"item {item_id} is too long for the fingerprint index")
        points = []
        for part in range(n_parts):
            inside = number == part
            if part and not inside.any():
                continue
            h, t = hashes[inside], times[inside]
            unique = distinct(landmark_keys(h))
            unique = unique[unique != NO_KEY]
            points.append(m.PointStruct(
                id=item_id * MAX_PARTS + part,
                vector={VECTOR: m.SparseVector(indices=unique.tolist(),
                                               values=[1.0] * unique.size)},
                payload={"item": item_id, "part": part, "start": part * PART_FRAMES,
                         "frames": int(lm.n_frames), "landmarks": encode_landmarks(h, t)},
            ))
        return points



def _votes_at_one_offset(a: Landmarks, b: Landmarks) -> int:
    """Most hash matches between two tracks at one time offset (4-frame
    cells, two staggered grids)."""
    ha, ta = np.asarray(a.hashes) & np.uint32(HASH_MASK), np.asarray(a.times, np.int64)
    words_b = np.asarray(b.hashes) & np.uint32(HASH_MASK)
    order = np.argsort(words_b, kind="stable")
    hb, tb = words_b[order], np.asarray(b.times, np.int64)[order]
    lo = np.searchsorted(hb, ha, side="left")
    cnt = np.searchsorted(hb, ha, side="right") - lo
    if not cnt.any():
        return 0
    which = np.repeat(np.arange(ha.size), cnt)
    pos = np.repeat(lo - (np.cumsum(cnt) - cnt), cnt) + np.arange(int(cnt.sum()))
    offset = tb[pos] - ta[which]
    best = 0
    for key in offset_cells(0, offset):
        _, counts = counted(key)
        best = max(best, int(counts.max()))
    return best
