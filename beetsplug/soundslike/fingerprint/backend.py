"""The interface both fingerprint stores implement, and what they share:
the clip search (:class:`.match.LandmarkMatcher`), the write buffer,
``close`` and the context manager, written here once.

Writes are buffered: :meth:`FingerprintBackend.add` and
:meth:`FingerprintBackend.remove` take effect at
:meth:`FingerprintBackend.flush`, also called by ``close`` and on leaving
a ``with`` block without an error; each store says how it writes a batch
of changes (:meth:`FingerprintBackend.write_changes`).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable

import numpy as np

from .landmarks import Landmarks, reference_landmarks
from .match import FingerprintError, LandmarkMatcher
from .params import SAME_RECORDING_SHARE


class FingerprintBackend(LandmarkMatcher):
    """What both fingerprint stores (:class:`.local.FingerprintIndex`,
    :class:`.server.ServerFingerprints`) implement, and what they share:
    the matcher, and buffered writes: :meth:`add` / :meth:`remove` take
    effect at :meth:`flush` (also called by :meth:`close` and on leaving
    a ``with`` block without an error)."""

    def __init__(self) -> None:
        self._pending: dict[int, Landmarks] = {}
        self._pending_removals: set[int] = set()
        self._pending_landmarks = 0
        #: Identities (:mod:`...provenance`) to store: item id -> identity,
        #: None for a record added without one.
        self._pending_sources: dict[int, int | None] = {}
        self._closed = False

    # ----------------------------------------------------- the interface

    @abstractmethod
    def stored_ids(self) -> Iterable[int]:
        """Ids of the items stored (flushed), without buffered changes."""

    @abstractmethod
    def stored_sources(self, ids: Iterable[int] | None = None) -> dict[int, int]:
        """Identities of the stored (flushed) records that have one: item
        id -> identity of the file they were computed from; only of
        ``ids`` when given."""

    @abstractmethod
    def landmarks(self, item_id: int) -> Landmarks | None:
        """An item's stored landmarks (flushed state), or None."""

    @abstractmethod
    def same_recording(self, item_id: int, min_share: float = SAME_RECORDING_SHARE) -> list[int]:
        """Items that hold the same recording as ``item_id``: the same master
        re-encoded, copied or trimmed, not a live version or a cover.
        ``min_share`` is the share of the shorter track's landmarks that
        must agree at one offset."""

    @abstractmethod
    def stats(self) -> dict:
        """Sizes: items and more, by backend."""

    @abstractmethod
    def write_changes(self, added: dict[int, Landmarks], removed: set[int], done,
                      sources: dict[int, int | None]) -> None:
        """Store the buffered changes: ``added`` (item id -> landmarks,
        replacing what the item had), ``removed`` (item ids) and
        ``sources`` (item id -> identity of an added record, or a new one
        for a stored record; None: the added record has none); call
        ``done()`` once they are stored, which empties the buffer."""

    def refresh(self) -> None:
        """Pick up changes other processes flushed since this one opened
        (nothing to do where the store is always current)."""

    def stale(self) -> bool:
        """Whether :meth:`refresh` has changes to pick up: a cheap check,
        so a server answering many clips at once refreshes only when it
        must (never where the store is always current)."""
        return False

    def buffer_full(self, items: int, landmarks: int) -> bool:
        """Whether a buffer of ``items`` tracks holding ``landmarks``
        landmarks should be flushed now (bounded memory); never by default."""
        return False

    def release(self) -> None:
        """Let go of what the open store holds (memory maps); nothing
        by default."""

    def older_parts(self) -> int:
        """How many stored parts are in an older layout, read as they are
        until :meth:`upgrade` (or later writes) rewrite them; none where
        the store has one layout."""
        return 0

    def upgrade(self, progress=None) -> None:
        """Rewrite every part of an older layout in the current one, from
        what is stored (no audio is read); ``progress(done)`` after each.
        Nothing to do where the store has one layout."""

    def compact(self) -> None:
        """Merge the stored parts into as few as hold them; nothing to do
        where the store is not kept in parts."""

    # ---------------------------------------------------------- queries

    def item_ids(self) -> set[int]:
        """Ids of items in the index, including unflushed changes."""
        ids = set(self.stored_ids()) - self._pending_removals
        ids |= set(self._pending)
        return ids

    def __contains__(self, item_id) -> bool:
        item_id = int(item_id)
        if item_id in self._pending:
            return True
        if item_id in self._pending_removals:
            return False
        return item_id in self.stored_ids()

    def __len__(self) -> int:
        return len(self.item_ids())

    def sources(self, ids: Iterable[int] | None = None) -> dict[int, int]:
        """Identities of the records that have one, including unflushed
        changes: item id -> identity; only of ``ids`` when given."""
        wanted = None if ids is None else {int(i) for i in ids}
        out = self.stored_sources(wanted)
        for item_id in self._pending_removals:
            out.pop(item_id, None)
        for item_id, source in self._pending_sources.items():
            if wanted is not None and item_id not in wanted:
                continue
            if source is None:
                out.pop(item_id, None)
            elif item_id in self._pending or item_id in out or item_id in self.stored_ids():
                out[item_id] = source
        return out

    def set_sources(self, sources: dict[int, int]) -> None:
        """Record the identity of stored records (at the next flush); ids
        without a record are ignored."""
        self.check_open()
        for item_id, source in sources.items():
            self._pending_sources[int(item_id)] = int(source)

    # ----------------------------------------------------------- writes

    def add(self, item_id: int, samples: np.ndarray, sample_rate: int) -> int:
        """Fingerprint a whole track and store it under ``item_id``
        (replacing an earlier version). Returns the number of landmarks."""
        return self.add_landmarks(item_id, reference_landmarks(samples, sample_rate))

    def add_landmarks(self, item_id: int, landmarks: Landmarks, source: int | None = None) -> int:
        """Store precomputed :func:`.landmarks.reference_landmarks`, with
        the identity of the file they come from (:mod:`...provenance`)."""
        self.check_open()
        item_id = int(item_id)
        self._pending_sources[item_id] = None if source is None else int(source)
        old = self._pending.pop(item_id, None)
        if old is not None:
            self._pending_landmarks -= len(old)
        self._pending_removals.discard(item_id)
        self._pending[item_id] = landmarks
        self._pending_landmarks += len(landmarks)
        if self.buffer_full(len(self._pending), self._pending_landmarks):
            self.flush()
        return len(landmarks)

    def remove(self, item_ids: Iterable[int]) -> None:
        """Forget items (at the next flush). Unknown ids are ignored."""
        self.check_open()
        for item_id in item_ids:
            item_id = int(item_id)
            old = self._pending.pop(item_id, None)
            if old is not None:
                self._pending_landmarks -= len(old)
            self._pending_sources.pop(item_id, None)
            self._pending_removals.add(item_id)

    def flush(self) -> None:
        """Store the buffered changes (:meth:`write_changes`)."""
        self.check_open()
        if not self._pending and not self._pending_removals and not self._pending_sources:
            return
        self.write_changes(self._pending, self._pending_removals, self._written,
                           self._pending_sources)

    def _written(self) -> None:
        self._pending.clear()
        self._pending_removals.clear()
        self._pending_sources.clear()
        self._pending_landmarks = 0

    # --------------------------------------------------------- lifetime

    def check_open(self) -> None:
        if self._closed:
            raise FingerprintError("index is closed")

    def close(self) -> None:
        """Flush buffered changes and let go of the store."""
        if self._closed:
            return
        self.flush()
        self.release()
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.release()
            self._closed = True
