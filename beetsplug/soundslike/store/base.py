"""What every vector store backend shares: the interface, the search
result, the errors and the helpers both backends use."""

from __future__ import annotations

import contextlib
import errno
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Points searched without an HNSW index before ``beet embed`` and imports
#: build one: exhaustive search over a few thousand vectors is as fast, and
#: building the index costs seconds.
OPTIMIZE_AFTER = 5000
#: Points copied at a time by :meth:`VectorStore.rename` where the backend
#: cannot rename in place.
RENAME_BATCH = 512


class StoreError(Exception):
    """The store cannot do what was asked; the message says why in a line."""


class StoreBusy(StoreError):
    """Another process holds the embedded store for longer than the timeout."""


class StoreUnavailable(StoreError):
    """The Qdrant server cannot be reached."""


@dataclass
class Hit:
    """One search result."""

    id: int
    score: float
    payload: dict


class VectorStore(ABC):
    """What the plugin needs from Qdrant, whichever way it runs."""

    @abstractmethod
    def collections(self) -> list[str]:
        """Names of the plugin's collections that exist."""

    @abstractmethod
    def dimension(self, name: str) -> int | None:
        """Vector length of collection ``name``, or None if it does not exist."""

    @abstractmethod
    def upsert(
        self,
        name: str,
        ids: list[int],
        vectors: np.ndarray,
        payloads: list[dict],
    ) -> None:
        """Insert or replace points, creating the collection if needed."""

    @abstractmethod
    def delete(self, name: str, ids: Iterable[int]) -> None:
        """Remove points (missing ids are ignored)."""

    @abstractmethod
    def set_payloads(self, name: str, payloads: Mapping[int, dict]) -> None:
        """Replace the payload fields given for existing points."""

    @abstractmethod
    def payloads(self, name: str, ids: Iterable[int] | None = None) -> dict[int, dict]:
        """Every point's payload, by id (no vectors); only of ``ids``
        (those that exist) when given."""

    @abstractmethod
    def vectors(self, name: str, ids: Iterable[int]) -> dict[int, np.ndarray]:
        """Stored vectors of the given ids that exist."""

    @abstractmethod
    def nearest(
        self,
        name: str,
        vector: np.ndarray,
        limit: int,
        exclude: Iterable[int] = (),
        allowed: Iterable[int] | None = None,
        variety: float = 0.0,
    ) -> list[Hit]:
        """HNSW search: the ``limit`` points closest to ``vector`` by cosine,
        never an id in ``exclude``, only ids in ``allowed`` when given.
        ``variety`` > 0 re-ranks with Qdrant's maximal marginal relevance
        (0: nearest first, 1: most diverse)."""

    @abstractmethod
    def recommend(
        self,
        name: str,
        positive: list[np.ndarray],
        negative: list[np.ndarray],
        limit: int,
        exclude: Iterable[int] = (),
        allowed: Iterable[int] | None = None,
        variety: float = 0.0,
        around: np.ndarray | None = None,
    ) -> list[Hit]:
        """Qdrant's recommend query: the ``limit`` points most like the
        ``positive`` examples and least like the ``negative`` ones (best-score
        strategy: a point closer to a negative example than to every positive
        one ranks after all that are not), with the filters of
        :meth:`nearest`. With ``variety`` > 0 the recommended candidates
        (those closer to a positive example than to every negative one) are
        re-ranked by maximal marginal relevance around ``around``."""

    def count(self, name: str) -> int:
        return len(self.ids(name))

    def ids(self, name: str) -> set[int]:
        return set(self.payloads(name))

    def drop(self, name: str) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def rename(self, old: str, new: str) -> None:
        """Give collection ``old`` the name ``new``. Where ``new`` exists
        already (a rename that was interrupted), the points it lacks join
        it. ``old`` is dropped only once every point is in ``new``, so an
        interruption loses nothing."""
        payloads = self.payloads(old)
        todo = sorted(set(payloads) - self.ids(new)) if self.dimension(new) else sorted(payloads)
        for start in range(0, len(todo), RENAME_BATCH):
            chunk = todo[start:start + RENAME_BATCH]
            found = self.vectors(old, chunk)
            chunk = [i for i in chunk if i in found]
            if chunk:
                self.upsert(new, chunk, np.stack([found[i] for i in chunk]),
                            [payloads[i] for i in chunk])
        self.drop(old)

    def optimize(self, min_unindexed: int = 0) -> bool:
        """Build search indexes once at least ``min_unindexed`` points lack
        one; True when it ran (a no-op where the engine does it itself)."""
        return False

    def close(self) -> None:
        """Release files and connections."""

    @contextlib.contextmanager
    def session(self, name: str) -> Iterator[None]:
        """Group several operations on one collection (a no-op for a server)."""
        yield

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def all_payloads(fetch_page) -> dict[int, dict]:
    """Page through a collection with ``fetch_page(offset) -> (records,
    next_offset)`` (both backends scroll the same way)."""
    out: dict[int, dict] = {}
    offset = None
    while True:
        records, offset = fetch_page(offset)
        for record in records:
            out[int(record.id)] = dict(record.payload or {})
        if offset is None:
            return out


def clean_payload(payload: dict) -> dict:
    """JSON-safe payload: bytes paths become text, None values are dropped."""
    out = {}
    for key, value in payload.items():
        if isinstance(value, bytes):
            value = os.fsdecode(value)
        if value is not None:
            out[key] = value
    return out


def as_array(vector) -> np.ndarray:
    if isinstance(vector, dict):
        vector = vector.get("") or next(iter(vector.values()))
    return np.asarray(vector, dtype=np.float32)


#: Writes stop with a clear error when less than this is free on the
#: store's disk. Qdrant and the fingerprint index write through memory maps,
#: and a memory-mapped write to a full disk kills the process (SIGBUS)
#: instead of raising an error: better to refuse while there is room.
MIN_FREE_BYTES = 64 * 1024 * 1024


def ensure_free_space(path: Path, need: int = MIN_FREE_BYTES) -> None:
    """Raise :class:`StoreError` when the disk holding ``path`` (or its
    nearest existing parent) has less than ``need`` bytes free."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        stat = os.statvfs(probe)
    except OSError:
        return
    free = stat.f_bavail * stat.f_frsize
    if free < need:
        raise StoreError(
            f"the disk holding {path} is full ({free // (1024 * 1024)} MB free, "
            f"{need // (1024 * 1024)} MB needed): free space, then run 'beet embed'"
        )


def os_reason(exc: BaseException, path: Path) -> str:
    text = str(exc)
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC or "No space" in text:
        return f"the disk holding {path} is full: free space, then run 'beet embed'"
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EROFS) or (
        "Permission denied" in text or "Read-only" in text
    ):
        return f"cannot write the store at {path}: permission denied (soundslike.store_dir)"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"cannot use the store at {path}: {first[:200]}"
