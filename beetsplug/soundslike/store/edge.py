"""The embedded backend: Qdrant's own engine in process (qdrant-edge)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..files import write_atomic
from .base import (
    Hit,
    StoreBusy,
    StoreError,
    VectorStore,
    all_payloads,
    as_array,
    clean_payload,
    ensure_free_space,
    os_reason,
)

#: HNSW candidate list size at search time: playlists ask for few results
#: over a large library, so a wider search keeps recall near 1 at 100k
#: tracks for a few milliseconds (edge's default gave 0.92 recall@10).
SEARCH_EF = 256


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
            qe.Point(int(i), v.tolist(), clean_payload(p))
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
                            [int(point_id)], clean_payload(payload)
                        )
                    )
            shard.flush()

    def payloads(self, name, ids=None) -> dict[int, dict]:
        if self.dimension(name) is None:
            return {}
        qe = self._qe
        with self._shard(name) as shard:
            if ids is not None:
                ids = [int(i) for i in ids]
                records = shard.retrieve(ids, with_payload=True, with_vector=False) if ids else []
                return {int(r.id): dict(r.payload or {}) for r in records}
            return all_payloads(
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
        return {int(r.id): as_array(r.vector) for r in records}

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

    def recommend(self, name, positive, negative, limit, exclude=(), allowed=None,
                  variety=0.0, around=None) -> list[Hit]:
        if self.dimension(name) is None or limit <= 0:
            return []
        qe = self._qe
        query_filter = _edge_filter(qe, exclude, allowed)
        examples = qe.RecommendQuery(
            positives=[np.asarray(v, np.float32).tolist() for v in positive],
            negatives=[np.asarray(v, np.float32).tolist() for v in negative],
        )
        recommend = qe.Query.RecommendBestScore(examples)
        params = qe.SearchParams(hnsw_ef=SEARCH_EF)
        if variety > 0:
            candidates = max(100, 10 * int(limit))
            request = qe.QueryRequest(
                limit=int(limit),
                prefetches=[qe.Prefetch(limit=candidates, query=recommend,
                                        filter=query_filter, params=params,
                                        score_threshold=0.0)],
                query=qe.Mmr(np.asarray(around, np.float32).tolist(),
                             lambda_=1.0 - float(variety), candidates_limit=candidates),
                with_payload=True, with_vector=False,
            )
        else:
            request = qe.QueryRequest(
                limit=int(limit), query=recommend, with_payload=True,
                with_vector=False, filter=query_filter, params=params,
            )
        with self._shard(name) as shard:
            points = shard.query(request)
        return [Hit(int(p.id), float(p.score), dict(p.payload or {})) for p in points]

    def drop(self, name) -> None:
        path = self.root / _safe(name)
        with self._lock(name):
            (path / _DIM_MARKER).unlink(missing_ok=True)
            shutil.rmtree(path, ignore_errors=True)

    def rename(self, old, new) -> None:
        """A folder rename under both locks; a merge (the base class's)
        where ``new`` exists already, by the time the locks are held (another
        process may have renamed it meanwhile)."""
        if old not in self._held and new not in self._held:
            with self._lock(old), self._lock(new):
                if self.dimension(new) is None and self.dimension(old) is not None:
                    try:
                        os.rename(self.root / _safe(old), self.root / _safe(new))
                    except OSError as exc:
                        raise StoreError(os_reason(exc, self.root / _safe(old))) from exc
                    return
        super().rename(old, new)

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
        # What the caller does inside the session is not the store's: its
        # errors pass unchanged (the store's own calls wrap theirs below).
        with self._shard(name, wrap=False) as shard:
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
    def _shard(self, name: str, create_dim: int | None = None, wrap: bool = True):
        held = self._held.get(name)
        if held is not None:
            try:
                yield held[0]
            except Exception as exc:
                if isinstance(exc, StoreError):
                    raise
                raise StoreError(os_reason(exc, self.root / _safe(name))) from exc
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
                    write_atomic(path / _DIM_MARKER, f"{int(create_dim)}\n")
                else:
                    shard = qe.EdgeShard.load(str(path))
            except Exception as exc:  # noqa: BLE001 - engine errors are opaque
                raise StoreError(os_reason(exc, path)) from exc
            try:
                yield shard
            except Exception as exc:
                if isinstance(exc, StoreError) or not wrap:
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


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)
