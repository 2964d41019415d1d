"""Analyse library items: decode, fingerprint, embed, store.

This is the one place that writes analysis results, used by the import
stage and by ``beet embed``. Its rules:

* **Nothing lost.** A file that cannot be decoded is reported in one line
  and marked ``failed``; the run goes on. A model or store failure stops
  the run (every further item would fail the same way) with all finished
  work kept; unfinished items simply stay missing, and ``beet embed``
  picks them up later.
* **Idempotent writes.** Point ids are beets item ids and a fingerprint
  add replaces the item's old entry, so a run interrupted at any moment
  (even ``kill -9``) is completed by running again, with no duplicates.
* **Overlap.** Decoding and fingerprinting (decoding processes and numpy, which release
  the GIL) run in worker threads while the model runs on the main thread.
"""

from __future__ import annotations

import concurrent.futures
from beets import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from .audio import (
    SAMPLE_RATE, AudioError, decode, decode_windows, excerpt_windows, is_silent, pick_excerpts,
)
from .compute import reuse_freed_memory
from .provenance import SOURCE_FIELD, Audit, audit, file_identity
from .settings import Settings
from .store import StoreError, StoreUnavailable, VectorStore, ensure_free_space, open_store, os_reason

log = logging.getLogger("beets.soundslike")

#: Values of the ``soundslike_status`` flexible attribute.
EMBEDDED, MISSING, FAILED = "embedded", "missing", "failed"

#: Tracks shorter than this are too short to describe or identify.
MIN_TRACK_SECONDS = 1.0


def payload_for(
    item, settings: Settings, duration: float | None = None, source: int | None = None
) -> dict:
    """The payload stored beside an item's vector: what a playlist or an
    identification answer shows without touching the library, and the
    identity of the file it was computed from (:mod:`.provenance`)."""
    return {
        SOURCE_FIELD: source,
        "artist": item.artist or "",
        "title": item.title or "",
        "album": item.album or "",
        "albumartist": item.albumartist or "",
        "album_id": int(item.album_id) if item.album_id else 0,
        "path": os.fsdecode(item.path),
        "duration": round(float(duration if duration else item.length or 0.0), 3),
        "model": settings.spec.model,
        "layer": settings.spec.layer,
        "pooling": settings.spec.pooling,
    }


@dataclass
class Prepared:
    """An item whose audio has been decoded and fingerprinted."""

    item: object
    samples: np.ndarray | None = None
    #: Only the excerpts the model needs, when the fingerprint phase chose
    #: them (then ``samples`` is None).
    excerpts: list[np.ndarray] | None = None
    landmarks: object = None
    duration: float = 0.0
    error: str | None = None
    source: int | None = None  # the file's identity when it was read


@dataclass
class RunReport:
    """What a run did, for the summary line and the exit status."""

    embedded: int = 0
    #: Items fingerprinted whose vector is left for later (no model).
    fingerprinted_only: int = 0
    failed: list[tuple[object, str]] = field(default_factory=list)
    stopped: str | None = None  # a model or store error that ended the run

    @property
    def ok(self) -> bool:
        return not self.failed and self.stopped is None


class Indexer:
    """Runs the analysis of items against one store and one model.

    The model loads on first need and stays loaded for the life of the
    process; a model that failed to load is not retried in the same run.
    """

    def __init__(
        self,
        settings: Settings,
        embedder_factory: Callable[[], object],
        store: VectorStore | None = None,
    ) -> None:
        self.settings = settings
        self._embedder_factory = embedder_factory
        self._embedder = None
        self._model_error: Exception | None = None
        self._store = store
        self._store_failure: str | None = None
        self._fingerprints = None
        #: The excerpts the fingerprint phase of ``beet embed`` chose, by
        #: item id: (file identity, duration, windows); the model's phase
        #: then decodes only those (:func:`.audio.decode_windows`).
        self._windows: dict[int, tuple[int | None, float, list[tuple[int, int]]]] = {}

    # -- resources ------------------------------------------------------------

    @property
    def store(self) -> VectorStore:
        if self._store is None:
            self._store = open_store(self.settings)
        return self._store

    @property
    def embedder(self):
        if self._model_error is not None:
            raise self._model_error
        if self._embedder is None:
            try:
                self._embedder = self._embedder_factory()
            except Exception as exc:
                self._model_error = exc
                raise
        return self._embedder

    @property
    def fingerprints(self):
        """The landmark index, or None when fingerprints are switched off."""
        if not self.settings.fingerprint:
            return None
        if self._fingerprints is None:
            from .fingerprint import open_fingerprints

            # On a server the fingerprints share the vectors' connection.
            # An index of an older format is rebuilt: items lacking
            # fingerprints are redone without running the model (see run()).
            store = self.store if self.settings.url else None
            self._fingerprints = open_fingerprints(self.settings, store, rebuild=True)
        return self._fingerprints

    def close(self) -> None:
        if self._fingerprints is not None:
            self._fingerprints.close()
            self._fingerprints = None
        if self._store is not None:
            self._store.close()
            self._store = None

    # -- what is done ---------------------------------------------------------

    def audit(self, items: Iterable, every: bool = False) -> Audit:
        """The verdicts on the records of ``items`` (:func:`.provenance.audit`):
        which are usable, which belong to another file or a changed or
        missing one, which items are still to analyse. ``every`` reads all
        points at once (cheaper when ``items`` is most of the library)."""
        items = list(items)
        collection = self.settings.spec.collection
        payloads: dict[int, dict] = {}
        if items and self.store.dimension(collection) is not None:
            ids = None if every else [item.id for item in items]
            payloads = self.store.payloads(collection, ids)
        fps = self.fingerprints
        printed = set(fps.item_ids()) if fps is not None else None
        sources = fps.sources() if fps is not None else {}
        return audit(items, payloads, sources, printed)

    def fingerprinted_ids(self) -> set[int]:
        """Items with a fingerprint record (usable or not)."""
        fps = self.fingerprints
        return set(fps.item_ids()) if fps is not None else set()

    def missing(self, items: Iterable) -> list:
        """The items that lack a usable vector or fingerprint."""
        return self.audit(items, every=True).todo

    def settle(self, found: Audit) -> None:
        """Remove the records that may not be used (another file's, a
        changed or missing file's) of the audited items, and record the
        identity of usable legacy records, before a run replaces what it
        redoes: a run that stops half way leaves no wrong record behind."""
        collection = self.settings.spec.collection
        stale = found.stale_points()
        if stale:
            self.store.delete(collection, stale)
        if found.adopt_points:
            self.store.set_payloads(
                collection, {i: {SOURCE_FIELD: s} for i, s in found.adopt_points.items()}
            )
        fps = self.fingerprints
        if fps is not None and (found.stale_prints() or found.adopt_prints):
            fps.remove(found.stale_prints())
            fps.set_sources(found.adopt_prints)
            fps.flush()

    # -- the work -------------------------------------------------------------

    def run(
        self,
        items: list,
        progress: Callable[[int, object], None] | None = None,
        batch_tracks: int = 4,
        mark: Callable[[object, str], None] | None = None,
        on_batch: Callable[[list], None] | None = None,
        force: bool = False,
        lib=None,
        vectors: bool = True,
        keep_fingerprints: bool = False,
    ) -> RunReport:
        """Analyse ``items``; ``progress(done, item)`` after each one,
        ``mark(item, status)`` to record its status in the library and
        ``on_batch(items)`` once a batch is safely stored.

        Records under the items' ids that belong to another file are
        removed first (:meth:`settle`). Items whose vector is usable get
        only their fingerprint redone when it is not usable (after an
        upgrade of the fingerprint format, say), without running the model;
        ``force`` redoes everything. A model
        that cannot load stops only the vectors: every item is still
        fingerprinted (``beet identify`` needs no model) and left
        ``missing`` for ``beet embed``. With ``lib``, items removed from
        the library while the run went on leave no record behind.

        ``vectors=False`` fingerprints only (no model), as the first phase
        of ``beet embed`` does so that ``beet identify`` knows the whole
        library early; ``keep_fingerprints`` keeps usable fingerprints even
        with ``force`` (the second phase after a forced first one)."""
        report = RunReport()
        if not items:
            return report
        if self._store_failure:
            # The store was unreachable earlier in this process: do not wait
            # for another timeout per item.
            report.stopped = self._store_failure
            return report
        from .embedder import ModelError

        done = 0
        try:
            found = self.audit(items)
            self.settle(found)
            keep_vectors = set() if force else found.usable_points()
            keep_prints = set() if force and not keep_fingerprints else found.usable_prints()
            model_error = None
            if not vectors:
                items = [item for item in items if item.id not in keep_prints]
            elif len(keep_vectors) < len(items):
                # Load the model before decoding anything: a model that
                # cannot load is reported at once, not after the first batch.
                try:
                    self.embedder
                except ModelError as exc:
                    model_error = exc
                    # Only what needs a fingerprint is worth decoding now.
                    items = [item for item in items if item.id not in keep_prints]
            embed = vectors and model_error is None
            analysed = self._prepare(items, keep_prints, remember=not vectors)
            for batch in _batches(analysed, batch_tracks):
                ready = []
                for prepared in batch:
                    if prepared.error:
                        log.warning(
                            "{}: {}",
                            os.fsdecode(prepared.item.path), prepared.error,
                        )
                        report.failed.append((prepared.item, prepared.error))
                        if mark:
                            mark(prepared.item, FAILED)
                    else:
                        ready.append(prepared)
                try:
                    self._embed_and_store(ready, keep_vectors, keep_prints, embed)
                except ModelError as exc:  # fingerprints are stored by now
                    model_error = exc
                embed = embed and model_error is None
                gone = self._forget_removed(ready, lib)
                stored = [p for p in ready if p.item.id not in gone]
                for prepared in stored:
                    if embed or prepared.item.id in keep_vectors:
                        report.embedded += 1
                        if mark:
                            mark(prepared.item, EMBEDDED)
                    else:
                        report.fingerprinted_only += 1
                        if mark:
                            mark(prepared.item, MISSING)
                if on_batch and stored:
                    on_batch([p.item for p in stored])
                for prepared in batch:
                    done += 1
                    if progress:
                        progress(done, prepared.item)
            if model_error is not None:
                report.stopped = str(model_error)
        except StoreError as exc:
            report.stopped = str(exc)
            if isinstance(exc, StoreUnavailable):
                self._store_failure = str(exc)
        return report

    def _forget_removed(self, ready: list[Prepared], lib) -> set[int]:
        """Ids of ``ready`` items that left the library (or whose id now
        names another file) while they were analysed; the records this run
        wrote for them are deleted again. A removal made by a beet process
        with the plugin on deletes records itself, but it may come before
        this run writes them."""
        if lib is None or not ready:
            return set()
        gone = {}
        for p in ready:
            now = lib.get_item(p.item.id)
            if now is None or now.path != p.item.path:
                gone[p.item.id] = p.source
        if not gone:
            return set()
        for p in ready:
            if p.item.id in gone:
                log.info("{}: left the library during the run; its records are removed",
                         os.fsdecode(p.item.path))
        collection = self.settings.spec.collection
        ours = [
            i for i, payload in self.store.payloads(collection, list(gone)).items()
            if payload.get(SOURCE_FIELD) == gone[i]
        ]
        self.store.delete(collection, ours)
        fps = self.fingerprints
        if fps is not None:
            fps.remove([i for i, s in fps.sources(list(gone)).items() if s == gone[i]])
            fps.flush()
        return set(gone)

    def _prepare(
        self, items: list, keep_prints: set[int], remember: bool = False
    ) -> Iterator[Prepared]:
        """Decode and fingerprint items in worker threads, a few ahead of
        the model, yielding them in order; items in ``keep_prints`` are
        only decoded. ``remember`` keeps each item's excerpt windows for a
        later run of the model."""
        reuse_freed_memory()  # each track's spectrograms, the next one's
        workers = decode_workers()
        ahead = workers * 2
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            futures: list = []
            queue = iter(items)

            def submit(item):
                # Resolve the path here: beets expands library-relative paths
                # from a context variable that worker threads do not inherit.
                return pool.submit(
                    self._prepare_one, item, item.path, item.id not in keep_prints, remember
                )

            for item in queue:
                futures.append(submit(item))
                if len(futures) >= ahead:
                    break
            while futures:
                prepared = futures.pop(0).result()
                nxt = next(queue, None)
                if nxt is not None:
                    futures.append(submit(nxt))
                yield prepared

    def _prepare_one(
        self, item, path: bytes, fingerprint: bool = True, remember: bool = False
    ) -> Prepared:
        # The identity before the read: a file changed while it is read
        # no longer matches its record, and is read again next time.
        source = file_identity(path)
        known = None if fingerprint else self._windows.pop(item.id, None)
        if known is not None and source is not None and known[0] == source:
            # The fingerprint phase read this very file: only the excerpts.
            try:
                excerpts = decode_windows(path, known[2], SAMPLE_RATE)
            except AudioError:
                pass  # read whole below, which says what is wrong
            else:
                return Prepared(item, excerpts=excerpts, duration=known[1], source=source)
        try:
            audio = decode(
                path, SAMPLE_RATE, max_seconds=self.settings.max_fingerprint_seconds
            )
        except AudioError as exc:
            return Prepared(item, error=str(exc))
        if audio.seconds < MIN_TRACK_SECONDS:
            return Prepared(item, error=f"too short ({audio.seconds:.1f} s of audio)")
        if is_silent(audio.samples):
            return Prepared(item, error="silent (no sound above digital silence)")
        landmarks = None
        if self.settings.fingerprint and fingerprint:
            from .fingerprint import reference_landmarks

            landmarks = reference_landmarks(audio.samples, SAMPLE_RATE)
        if remember and not audio.damaged:
            # (A damaged frame that the windows' read would count, not
            # decode, would shift them against the whole decode's samples.)
            settings = self.settings
            self._windows[item.id] = (source, audio.duration, excerpt_windows(
                audio.samples, settings.excerpts, settings.excerpt_seconds, SAMPLE_RATE))
        return Prepared(
            item, samples=audio.samples, landmarks=landmarks, duration=audio.duration,
            source=source,
        )

    def vector_of(self, item) -> np.ndarray | None:
        """The configured model's vector of ``item``, made as ``beet embed``
        makes it, not stored; None when its file cannot be analysed."""
        prepared = self._prepare_one(item, item.path, fingerprint=False)
        if prepared.error:
            return None
        return self.embedder.embed_excerpts([self._excerpts(prepared)],
                                            batch_size=self.settings.batch_size)[0]

    def _excerpts(self, prepared: Prepared) -> list:
        """The excerpts the model hears of a prepared item: those its
        fingerprint phase chose and read, else picked from its samples."""
        if prepared.excerpts is not None:
            return prepared.excerpts
        settings = self.settings
        return pick_excerpts(prepared.samples, settings.excerpts, settings.excerpt_seconds,
                             SAMPLE_RATE)

    def _embed_and_store(
        self, ready: list[Prepared], keep_vectors: set[int], keep_prints: set[int],
        embed: bool = True,
    ) -> None:
        if not ready:
            return
        started = time.perf_counter()
        fps = self.fingerprints
        if fps is not None:
            if not self.settings.url:
                ensure_free_space(self.settings.fingerprint_dir)
            # Fingerprints first: an item counts as done only once its vector
            # is stored, so a crash in between leaves it "missing", and the
            # next run replaces the fingerprint.
            try:
                for p in ready:
                    if p.item.id not in keep_prints:
                        fps.add_landmarks(p.item.id, p.landmarks, source=p.source)
                fps.flush()
            except OSError as exc:  # a full disk, a read-only folder
                raise StoreError(os_reason(exc, self.settings.fingerprint_dir)) from exc
        to_embed = [p for p in ready if p.item.id not in keep_vectors] if embed else []
        if to_embed:
            settings = self.settings
            vectors = self.embedder.embed_excerpts(
                [self._excerpts(p) for p in to_embed], batch_size=settings.batch_size,
            )
            self.store.upsert(
                self.settings.spec.collection,
                [p.item.id for p in to_embed],
                np.stack(vectors),
                [payload_for(p.item, self.settings, p.duration, p.source) for p in to_embed],
            )
        log.debug(
            "embedded {} tracks in {:.1f} s",
            len(ready), time.perf_counter() - started,
        )
        for p in ready:
            p.samples = p.excerpts = p.landmarks = None  # freed once the batch is stored


def decode_workers() -> int:
    """Threads that decode and fingerprint ahead of the model.

    Two keep a laptop's model busy (decoding a track costs a tenth of its
    embedding on CPU). A GPU embeds a track in milliseconds, so there the
    decoders are the limit and every spare core helps; eight bound the
    memory held by decoded tracks waiting for the model (about 15 MB each).
    """
    return max(2, min(8, (os.cpu_count() or 1) - 1))


def _batches(iterable: Iterable, size: int) -> Iterator[list]:
    batch = []
    for element in iterable:
        batch.append(element)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
