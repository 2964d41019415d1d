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

from beets import logging

from .base import (
    MIN_FREE_BYTES,
    OPTIMIZE_AFTER,
    Hit,
    StoreBusy,
    StoreError,
    StoreUnavailable,
    VectorStore,
    ensure_free_space,
    os_reason,
)
from .edge import EdgeStore
from .server import ServerStore

log = logging.getLogger("beets.soundslike")

__all__ = [
    "MIN_FREE_BYTES", "OPTIMIZE_AFTER", "EdgeStore", "Hit", "ServerStore", "StoreBusy",
    "StoreError", "StoreUnavailable", "VectorStore", "ensure_free_space", "open_store",
    "os_reason",
]


def open_store(settings) -> VectorStore:
    """The store the settings ask for: a server with ``url:``, else the
    embedded engine in ``store_dir``. A local model folder's collection
    that earlier versions named by the folder's path gets its name by
    content now (:attr:`.settings.ModelSpec.legacy_collection`)."""
    if settings.url:
        store = ServerStore(settings.url, settings.api_key or None, settings.timeout)
    else:
        store = EdgeStore(settings.store_dir / "qdrant", settings.timeout)
    legacy = settings.spec.legacy_collection
    if legacy is None:
        return store
    try:
        if legacy in store.collections():
            log.info(
                "the vectors of {} now follow the model folder's content, "
                "not its path ({} -> {})",
                settings.spec.model, legacy, settings.spec.collection,
            )
            store.rename(legacy, settings.spec.collection)
    except StoreError as exc:
        # A server that is down, a store another process holds: the next
        # command tries again; this one goes on with what it can reach.
        log.debug("collection {} not renamed yet: {}", legacy, exc)
    return store
