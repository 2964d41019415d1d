"""The vector store: Qdrant, embedded by default, a server when ``url:`` is set.

Two backends share one interface (:class:`VectorStore`):

* :class:`EdgeStore` (default) runs Qdrant's own engine in process through
  ``qdrant-edge-py``: one shard folder per collection beside the library,
  memory-mapped segments, a write-ahead log and a real HNSW index. A whole
  ``similar`` process takes 0.5 s at 10,000 tracks where qdrant-client's
  local mode takes over 4 s (it unpickles every point into Python memory
  and inserts at 80 points/s); see ``bench/scale.py`` and
  docs/benchmarks-scale.md.
* :class:`ServerStore` talks to a Qdrant server or cluster with
  qdrant-client, for libraries that outgrow one machine or for several
  machines sharing one index.

Points are keyed by the beets item id. One collection per (model, layer,
pooling) keeps incompatible vectors apart (see ``ModelSpec.collection``).

Several beet processes may use the embedded store at once: every access
takes an advisory lock on the collection for the length of one operation
(a write batch or a query, milliseconds), and a process that waits longer
than ``timeout`` seconds gets :class:`StoreBusy` with a one-line reason.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: HNSW candidate list size at search time: playlists ask for few results
#: over a large library, so a wider search keeps recall near 1 at 100k
#: tracks for a few milliseconds (edge's default gave 0.92 recall@10).
SEARCH_EF = 256

#: Points searched without an HNSW index before ``beet embed`` and imports
#: build one: exhaustive search over a few thousand vectors is as fast, and
#: building the index costs seconds.
OPTIMIZE_AFTER = 5000

#: Payload fields the plugin filters or groups on (indexed on a server).
INDEXED_FIELDS = ("artist", "album", "model")


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
    def payloads(self, name: str) -> dict[int, dict]:
        """Every point's payload, by id (no vectors)."""

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

    def count(self, name: str) -> int:
        return len(self.ids(name))

    def ids(self, name: str) -> set[int]:
        return set(self.payloads(name))

    def drop(self, name: str) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

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


def open_store(settings) -> VectorStore:
    """The store the settings ask for: a server with ``url:``, else the
    embedded engine in ``store_dir``."""
    if settings.url:
        return ServerStore(settings.url, settings.api_key or None, settings.timeout)
    return EdgeStore(settings.store_dir / "qdrant", settings.timeout)


# --------------------------------------------------------------------------
# Embedded: qdrant-edge
# --------------------------------------------------------------------------


class EdgeStore(VectorStore):
    """Qdrant's engine in process, one shard folder per collection."""

    def __init__(self, root: Path, timeout: float = 10.0) -> None:
        self.root = Path(root)
        self.timeout = timeout
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the store folder {self.root}: "
                f"{exc.strerror or exc} (set soundslike.store_dir)"
            ) from exc
        import qdrant_edge

        self._qe = qdrant_edge
        # Shards held open by session(): name -> [shard, depth].
        self._held: dict[str, list] = {}

    # Collections are folders; a folder only counts once its creation has
    # completed (the marker file is written last).
    def collections(self) -> list[str]:
        return sorted(
            p.name for p in self.root.iterdir()
            if p.is_dir() and (p / _DIM_MARKER).exists()
        )

    def dimension(self, name: str) -> int | None:
        marker = self.root / _safe(name) / _DIM_MARKER
        try:
            return int(marker.read_text().strip())
        except (OSError, ValueError):
            return None

    def upsert(self, name, ids, vectors, payloads) -> None:
        if not ids:
            return
        vectors = np.asarray(vectors, dtype=np.float32)
        qe = self._qe
        points = [
            qe.Point(int(i), v.tolist(), _clean_payload(p))
            for i, v, p in zip(ids, vectors, payloads)
        ]
        with self._shard(name, create_dim=vectors.shape[1]) as shard:
            shard.update(qe.UpdateOperation.upsert_points(points))
            shard.flush()

    def delete(self, name, ids) -> None:
        ids = [int(i) for i in ids]
        if not ids or self.dimension(name) is None:
            return
        with self._shard(name) as shard:
            shard.update(self._qe.UpdateOperation.delete_points(ids))
            shard.flush()

    def set_payloads(self, name, payloads) -> None:
        if not payloads or self.dimension(name) is None:
            return
        qe = self._qe
        with self._shard(name) as shard:
            existing = {
                int(r.id)
                for r in shard.retrieve(
                    [int(i) for i in payloads], with_payload=False, with_vector=False
                )
            }
            for point_id, payload in payloads.items():
                if int(point_id) in existing:
                    shard.update(
                        qe.UpdateOperation.set_payload(
                            [int(point_id)], _clean_payload(payload)
                        )
                    )
            shard.flush()

    def payloads(self, name) -> dict[int, dict]:
        if self.dimension(name) is None:
            return {}
        qe = self._qe
        with self._shard(name) as shard:
            return _all_payloads(
                lambda offset: shard.scroll(
                    qe.ScrollRequest(
                        offset=offset, limit=1000, with_payload=True, with_vector=False
                    )
                )
            )

    def count(self, name) -> int:
        if self.dimension(name) is None:
            return 0
        with self._shard(name) as shard:
            return int(shard.count(self._qe.CountRequest(exact=True)))

    def vectors(self, name, ids) -> dict[int, np.ndarray]:
        ids = [int(i) for i in ids]
        if not ids or self.dimension(name) is None:
            return {}
        with self._shard(name) as shard:
            records = shard.retrieve(ids, with_payload=False, with_vector=True)
        return {int(r.id): _as_array(r.vector) for r in records}

    def nearest(self, name, vector, limit, exclude=(), allowed=None, variety=0.0) -> list[Hit]:
        if self.dimension(name) is None or limit <= 0:
            return []
        qe = self._qe
        query_filter = _edge_filter(qe, exclude, allowed)
        values = np.asarray(vector, np.float32).tolist()
        if variety > 0:
            query = qe.Mmr(
                values, lambda_=1.0 - float(variety),
                candidates_limit=max(100, 10 * int(limit)),
            )
        else:
            query = qe.Query.Nearest(values)
        with self._shard(name) as shard:
            points = shard.query(
                qe.QueryRequest(
                    limit=int(limit),
                    query=query,
                    with_payload=True,
                    with_vector=False,
                    filter=query_filter,
                    params=qe.SearchParams(hnsw_ef=SEARCH_EF),
                )
            )
        return [Hit(int(p.id), float(p.score), dict(p.payload or {})) for p in points]

    def drop(self, name) -> None:
        path = self.root / _safe(name)
        with self._lock(name):
            (path / _DIM_MARKER).unlink(missing_ok=True)
            shutil.rmtree(path, ignore_errors=True)

    def optimize(self, min_unindexed: int = 0) -> bool:
        ran = False
        for name in self.collections():
            with self._shard(name) as shard:
                info = shard.info()
                if info.points_count - info.indexed_vectors_count >= min_unindexed:
                    shard.optimize()
                    ran = True
        return ran

    @contextlib.contextmanager
    def session(self, name: str) -> Iterator[None]:
        """Keep collection ``name`` loaded (and locked) for several
        operations: a command that reads vectors and then searches loads
        the shard once instead of twice (0.3 s saved at 100k tracks)."""
        if self.dimension(name) is None or name in self._held:
            yield
            return
        with self._shard(name) as shard:
            self._held[name] = [shard]
            try:
                yield
            finally:
                del self._held[name]

    # -- plumbing -----------------------------------------------------------

    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        """Exclusive advisory lock on one collection, waiting up to
        ``timeout`` seconds."""
        lock_path = self.root / f".{_safe(name)}.lock"
        try:
            handle = open(lock_path, "a+")
        except OSError as exc:
            raise StoreError(
                f"cannot open the store in {self.root}: {exc.strerror or exc}"
            ) from exc
        with handle:
            deadline = time.monotonic() + self.timeout
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() > deadline:
                        raise StoreBusy(
                            f"the store in {self.root} is busy: another beet "
                            f"process held it for over {self.timeout:.0f} s; "
                            "try again when it finishes"
                        ) from None
                    time.sleep(0.05)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _shard(self, name: str, create_dim: int | None = None):
        held = self._held.get(name)
        if held is not None:
            yield held[0]
            return
        qe = self._qe
        path = self.root / _safe(name)
        # Loading a shard can write (its write-ahead log) through memory maps.
        ensure_free_space(self.root)
        with self._lock(name):
            dim = self.dimension(name)
            if dim is None and create_dim is None:
                raise StoreError(f"collection {name} does not exist")
            if dim is not None and create_dim is not None and dim != create_dim:
                raise StoreError(
                    f"collection {name} holds {dim}-dimensional vectors, "
                    f"not {create_dim}: remove it with 'beet embed --drop'"
                )
            try:
                if dim is None:
                    # A half-created folder from a crash is not a collection:
                    # start it afresh.
                    shutil.rmtree(path, ignore_errors=True)
                    config = qe.EdgeConfig(
                        vectors=qe.EdgeVectorParams(
                            size=int(create_dim), distance=qe.Distance.Cosine
                        ),
                    )
                    shard = qe.EdgeShard.create(str(path), config)
                    shard.flush()
                    _write_atomic(path / _DIM_MARKER, f"{int(create_dim)}\n")
                else:
                    shard = qe.EdgeShard.load(str(path))
            except Exception as exc:  # noqa: BLE001 - engine errors are opaque
                raise StoreError(os_reason(exc, path)) from exc
            try:
                yield shard
            except Exception as exc:
                if isinstance(exc, StoreError):
                    raise
                raise StoreError(os_reason(exc, path)) from exc
            finally:
                shard.close()


_DIM_MARKER = "soundslike-dim"


def _edge_filter(qe, exclude, allowed):
    must = []
    must_not = []
    exclude = {int(i) for i in exclude}
    if exclude:
        must_not.append(qe.HasIdCondition(exclude))
    if allowed is not None:
        must.append(qe.HasIdCondition({int(i) for i in allowed}))
    if not must and not must_not:
        return None
    return qe.Filter(must=must or None, must_not=must_not or None)


# --------------------------------------------------------------------------
# Server: qdrant-client
# --------------------------------------------------------------------------


class ServerStore(VectorStore):
    """A Qdrant server or cluster reached over HTTP with qdrant-client."""

    def __init__(
        self, url: str, api_key: str | None, timeout: float = 10.0, client=None
    ) -> None:
        from qdrant_client import QdrantClient, models

        self.url = url
        self._models = models
        self.client = client or QdrantClient(
            url=url, api_key=api_key, timeout=int(timeout), check_compatibility=False
        )

    @contextlib.contextmanager
    def _call(self) -> Iterator[None]:
        """Turn transport failures into one clear line."""
        try:
            yield
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - httpx/grpc/qdrant errors
            text = str(exc).strip().splitlines()
            reason = text[0] if text else type(exc).__name__
            if _looks_unreachable(exc, reason):
                raise StoreUnavailable(
                    f"cannot reach the Qdrant server at {self.url} ({reason}); "
                    "is it running? (soundslike.url)"
                ) from exc
            raise StoreError(f"Qdrant server at {self.url}: {reason}") from exc

    def collections(self) -> list[str]:
        with self._call():
            names = [c.name for c in self.client.get_collections().collections]
        return sorted(n for n in names if n.startswith("soundslike_"))

    def dimension(self, name) -> int | None:
        with self._call():
            if not self.client.collection_exists(name):
                return None
            info = self.client.get_collection(name)
        params = info.config.params.vectors
        return int(params.size)

    def _ensure(self, name: str, dim: int) -> None:
        existing = self.dimension(name)
        if existing == dim:
            return
        if existing is not None:
            raise StoreError(
                f"collection {name} holds {existing}-dimensional vectors, not {dim}"
            )
        m = self._models
        with self._call():
            self.client.create_collection(
                name,
                vectors_config=m.VectorParams(size=dim, distance=m.Distance.COSINE),
            )
            for field in INDEXED_FIELDS:
                self.client.create_payload_index(
                    name, field, field_schema=m.PayloadSchemaType.KEYWORD
                )

    def upsert(self, name, ids, vectors, payloads) -> None:
        if not ids:
            return
        vectors = np.asarray(vectors, dtype=np.float32)
        self._ensure(name, vectors.shape[1])
        m = self._models
        points = [
            m.PointStruct(id=int(i), vector=v.tolist(), payload=_clean_payload(p))
            for i, v, p in zip(ids, vectors, payloads)
        ]
        with self._call():
            self.client.upsert(name, points=points, wait=True)

    def delete(self, name, ids) -> None:
        ids = [int(i) for i in ids]
        if not ids:
            return
        with self._call():
            self.client.delete(
                name, points_selector=self._models.PointIdsList(points=ids), wait=True
            )

    def set_payloads(self, name, payloads) -> None:
        existing = set(self.vectors(name, payloads).keys()) if payloads else set()
        with self._call():
            for point_id, payload in payloads.items():
                if int(point_id) in existing:
                    self.client.set_payload(
                        name, payload=_clean_payload(payload),
                        points=[int(point_id)], wait=True,
                    )

    def payloads(self, name) -> dict[int, dict]:
        if self.dimension(name) is None:
            return {}
        with self._call():
            return _all_payloads(
                lambda offset: self.client.scroll(
                    name, limit=1000, offset=offset,
                    with_payload=True, with_vectors=False,
                )
            )

    def count(self, name) -> int:
        if self.dimension(name) is None:
            return 0
        with self._call():
            return int(self.client.count(name, exact=True).count)

    def vectors(self, name, ids) -> dict[int, np.ndarray]:
        ids = [int(i) for i in ids]
        if not ids:
            return {}
        with self._call():
            records = self.client.retrieve(
                name, ids=ids, with_payload=False, with_vectors=True
            )
        return {int(r.id): _as_array(r.vector) for r in records}

    def nearest(self, name, vector, limit, exclude=(), allowed=None, variety=0.0) -> list[Hit]:
        if limit <= 0:
            return []
        m = self._models
        must, must_not = [], []
        exclude = [int(i) for i in exclude]
        if exclude:
            must_not.append(m.HasIdCondition(has_id=exclude))
        if allowed is not None:
            must.append(m.HasIdCondition(has_id=[int(i) for i in allowed]))
        query_filter = (
            m.Filter(must=must or None, must_not=must_not or None)
            if (must or must_not) else None
        )
        query = np.asarray(vector, np.float32).tolist()
        if variety > 0:
            query = m.NearestQuery(
                nearest=query,
                mmr=m.Mmr(diversity=float(variety), candidates_limit=max(100, 10 * int(limit))),
            )
        with self._call():
            result = self.client.query_points(
                name,
                query=query,
                limit=int(limit),
                query_filter=query_filter,
                with_payload=True,
            )
        return [Hit(int(p.id), float(p.score), dict(p.payload or {})) for p in result.points]

    def drop(self, name) -> None:
        with self._call():
            self.client.delete_collection(name)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def _all_payloads(fetch_page) -> dict[int, dict]:
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


def _clean_payload(payload: dict) -> dict:
    """JSON-safe payload: bytes paths become text, None values are dropped."""
    out = {}
    for key, value in payload.items():
        if isinstance(value, bytes):
            value = os.fsdecode(value)
        if value is not None:
            out[key] = value
    return out


def _as_array(vector) -> np.ndarray:
    if isinstance(vector, dict):
        vector = vector.get("") or next(iter(vector.values()))
    return np.asarray(vector, dtype=np.float32)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


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


def _looks_unreachable(exc: BaseException, reason: str) -> bool:
    names = {type(e).__name__ for e in _chain(exc)}
    unreachable = {
        "ConnectError", "ConnectTimeout", "ReadTimeout", "ResponseHandlingException",
        "ConnectionRefusedError", "TimeoutException", "WriteTimeout", "PoolTimeout",
        "RemoteProtocolError",
    }
    return bool(names & unreachable) or "Connection refused" in reason


def _chain(exc: BaseException | None):
    seen = 0
    while exc is not None and seen < 10:
        yield exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
