"""The server backend: a Qdrant server or cluster, through qdrant-client."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

from .base import (
    Hit,
    StoreError,
    StoreUnavailable,
    VectorStore,
    all_payloads,
    as_array,
    clean_payload,
)

#: Payload fields the plugin filters or groups on (indexed on a server).
INDEXED_FIELDS = ("artist", "album", "model")


class ServerStore(VectorStore):
    """A Qdrant server or cluster reached over HTTP with qdrant-client."""

    def __init__(
        self, url: str, api_key: str | None, timeout: float = 10.0, client=None
    ) -> None:
        from qdrant_client import QdrantClient, models

        self.url = url
        self.models = models
        self.client = client or QdrantClient(
            url=url, api_key=api_key, timeout=int(timeout), check_compatibility=False
        )

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
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
        with self.call():
            names = [c.name for c in self.client.get_collections().collections]
        return sorted(n for n in names if n.startswith("soundslike_"))

    def dimension(self, name) -> int | None:
        with self.call():
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
        m = self.models
        with self.call():
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
        m = self.models
        points = [
            m.PointStruct(id=int(i), vector=v.tolist(), payload=clean_payload(p))
            for i, v, p in zip(ids, vectors, payloads)
        ]
        with self.call():
            self.client.upsert(name, points=points, wait=True)

    def delete(self, name, ids) -> None:
        ids = [int(i) for i in ids]
        if not ids:
            return
        with self.call():
            self.client.delete(
                name, points_selector=self.models.PointIdsList(points=ids), wait=True
            )

    def set_payloads(self, name, payloads) -> None:
        existing = set(self.vectors(name, payloads).keys()) if payloads else set()
        with self.call():
            for point_id, payload in payloads.items():
                if int(point_id) in existing:
                    self.client.set_payload(
                        name, payload=clean_payload(payload),
                        points=[int(point_id)], wait=True,
                    )

    def payloads(self, name, ids=None) -> dict[int, dict]:
        if self.dimension(name) is None:
            return {}
        with self.call():
            if ids is not None:
                ids = [int(i) for i in ids]
                records = self.client.retrieve(
                    name, ids=ids, with_payload=True, with_vectors=False
                ) if ids else []
                return {int(r.id): dict(r.payload or {}) for r in records}
            return all_payloads(
                lambda offset: self.client.scroll(
                    name, limit=1000, offset=offset,
                    with_payload=True, with_vectors=False,
                )
            )

    def count(self, name) -> int:
        if self.dimension(name) is None:
            return 0
        with self.call():
            return int(self.client.count(name, exact=True).count)

    def vectors(self, name, ids) -> dict[int, np.ndarray]:
        ids = [int(i) for i in ids]
        if not ids:
            return {}
        with self.call():
            records = self.client.retrieve(
                name, ids=ids, with_payload=False, with_vectors=True
            )
        return {int(r.id): as_array(r.vector) for r in records}

    def nearest(self, name, vector, limit, exclude=(), allowed=None, variety=0.0) -> list[Hit]:
        if limit <= 0:
            return []
        m = self.models
        query_filter = _id_filter(m, exclude, allowed)
        query = np.asarray(vector, np.float32).tolist()
        if variety > 0:
            query = m.NearestQuery(
                nearest=query,
                mmr=m.Mmr(diversity=float(variety), candidates_limit=max(100, 10 * int(limit))),
            )
        with self.call():
            result = self.client.query_points(
                name,
                query=query,
                limit=int(limit),
                query_filter=query_filter,
                with_payload=True,
            )
        return [Hit(int(p.id), float(p.score), dict(p.payload or {})) for p in result.points]

    def recommend(self, name, positive, negative, limit, exclude=(), allowed=None,
                  variety=0.0, around=None) -> list[Hit]:
        if limit <= 0:
            return []
        m = self.models
        query_filter = _id_filter(m, exclude, allowed)
        recommend = m.RecommendQuery(recommend=m.RecommendInput(
            positive=[np.asarray(v, np.float32).tolist() for v in positive],
            negative=[np.asarray(v, np.float32).tolist() for v in negative],
            strategy=m.RecommendStrategy.BEST_SCORE,
        ))
        if variety > 0:
            candidates = max(100, 10 * int(limit))
            search = dict(
                prefetch=m.Prefetch(query=recommend, limit=candidates, filter=query_filter,
                                    score_threshold=0.0),
                query=m.NearestQuery(
                    nearest=np.asarray(around, np.float32).tolist(),
                    mmr=m.Mmr(diversity=float(variety), candidates_limit=candidates),
                ),
            )
        else:
            search = dict(query=recommend, query_filter=query_filter)
        with self.call():
            result = self.client.query_points(
                name, limit=int(limit), with_payload=True, **search
            )
        return [Hit(int(p.id), float(p.score), dict(p.payload or {})) for p in result.points]

    def drop(self, name) -> None:
        with self.call():
            self.client.delete_collection(name)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


def _id_filter(m, exclude, allowed):
    """The id filter of a search: never ``exclude``, only ``allowed``."""
    must, must_not = [], []
    exclude = [int(i) for i in exclude]
    if exclude:
        must_not.append(m.HasIdCondition(has_id=exclude))
    if allowed is not None:
        must.append(m.HasIdCondition(has_id=[int(i) for i in allowed]))
    if not must and not must_not:
        return None
    return m.Filter(must=must or None, must_not=must_not or None)


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
