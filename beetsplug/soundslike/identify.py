"""Identification: which library recording is this clip, where, how sure.

Two signals, each for what it is good at:

* the landmark fingerprint index answers *which recording* and *where*,
  and says "not in your library" when the evidence is weak;
* the vector store answers *what sounds like it*: the matched track's
  stored vector finds same-vibe suggestions with no model call, and a clip
  with no fingerprint match (a live version, a cover) is embedded with the
  model to say what in the library it sounds like.

torch is imported only in that last case. This module is the service
behind ``beet identify`` and ``beet listen``; it prints nothing (the
commands and the web app present an :class:`Answer`).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field

from .audio import SAMPLE_RATE, AudioError, decode, decode_bytes, is_silent, warm_up
from .compute import import_numpy_ma_meanwhile, one_blas_thread, reuse_freed_memory
from .fingerprint import (
    MAX_CLIP_SECONDS,
    MIN_CLIP_SECONDS,
    MIN_CONFIDENCE,
    MIN_SCORE,
    SECOND_LOOK_CANDIDATES,
    ClipTooShort,
    audio_at,
    deficits,
    holes,
    open_fingerprints,
    place_and_audio,
    read_stretch,
    second_look,
)


class NoFingerprints(Exception):
    """Nothing has been fingerprinted yet: there is nothing to identify against."""


class ClipError(Exception):
    """A clip that cannot be identified; one line for the user."""


def check_clip(samples) -> None:
    """The one check of a clip before matching: long enough and not silent
    (16 kHz samples); a :class:`ClipError` says what is wrong."""
    seconds = len(samples) / SAMPLE_RATE
    if seconds < MIN_CLIP_SECONDS:
        raise ClipError(
            f"clip too short ({seconds:.1f} s): record at least "
            f"{MIN_CLIP_SECONDS:.0f} s, ideally 5 s or more"
        )
    if is_silent(samples):
        raise ClipError("clip is silent: nothing to identify")


def open_identifier(settings, lib, embedder_factory=None, log=None) -> Identifier:
    """An :class:`Identifier` for ``beet identify`` and ``beet listen``, or
    :class:`NoFingerprints` when the library has not been analysed yet."""
    empty = NoFingerprints(
        "no fingerprints yet: import music with the plugin enabled, "
        "or run 'beet embed' to analyse the library"
    )
    if not settings.url and not settings.fingerprint_dir.exists():
        raise empty
    warm_up()  # the decoding process loads while the indexes open
    import_numpy_ma_meanwhile()
    reuse_freed_memory()
    one_blas_thread()
    identifier = Identifier(settings, lib, embedder_factory, log=log)
    if identifier.fingerprints.is_empty():  # made, but nothing in it (yet)
        identifier.close()
        raise empty
    return identifier


@dataclass
class Answer:
    """The result for one clip, shaped like the ``--json`` output."""

    clip: str
    match: dict | None = None
    similar: list[dict] = field(default_factory=list)
    sounds_like: bool = False  # similar list comes from the clip's own sound
    error: str | None = None
    seconds: float = 0.0

    def as_json(self) -> dict:
        out = {"clip": self.clip, "match": self.match, "similar": self.similar}
        if self.error:
            out["error"] = self.error
        return out


class SharedGate:
    """Many readers at once or one writer: the fingerprint index is
    searched by many threads at a time and refreshed, rarely, by one. A
    waiting writer holds back new readers, so a refresh is not starved."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._waiting = 0

    @contextlib.contextmanager
    def shared(self):
        with self._cond:
            while self._writing or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self):
        with self._cond:
            self._waiting += 1
            while self._writing or self._readers:
                self._cond.wait()
            self._waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


class Identifier:
    """Holds the fingerprint index and store open across many clips
    (``beet listen`` keeps one for the life of the server).

    Clips may be identified from several threads at once: fingerprint
    searches run side by side (:class:`SharedGate`; a refresh after an
    import waits for them), the audio comparisons need no lock, and the
    vector store and the model are used by one thread at a time."""

    def __init__(self, settings, lib, embedder_factory=None, log=None) -> None:
        from .store import open_store

        self.settings = settings
        self.lib = lib
        self.store = open_store(settings)
        self.fingerprints = open_fingerprints(settings, self.store)
        self._embedder_factory = embedder_factory
        self._embedder = None
        self._log = log
        self._gate = SharedGate()
        self._store_lock = threading.Lock()

    def close(self) -> None:
        self.fingerprints.close()
        self.store.close()

    def identify_path(self, path: str, similar: int) -> Answer:
        return self._decoded(
            path, lambda: decode(path, SAMPLE_RATE, max_seconds=MAX_CLIP_SECONDS, probe=False),
            similar,
        )

    def identify_bytes(self, data: bytes, name: str, similar: int) -> Answer:
        """Identify an audio file held in memory (``beet identify -`` reads
        one from standard input)."""
        return self._decoded(
            name, lambda: decode_bytes(data, SAMPLE_RATE, max_seconds=MAX_CLIP_SECONDS),
            similar,
        )

    def _decoded(self, name: str, decoded, similar: int) -> Answer:
        answer = Answer(clip=name)
        started = time.perf_counter()
        try:
            samples = decoded().samples
            if samples.size >= MAX_CLIP_SECONDS * SAMPLE_RATE and self._log is not None:
                # A radio hour or a DJ mix is answered by its beginning only.
                self._log.info("{}: only its first {:.0f} s are identified", name,
                               MAX_CLIP_SECONDS)
            self._identify(samples, similar, answer)
        except (AudioError, ClipError) as exc:
            answer.error = str(exc)
        answer.seconds = time.perf_counter() - started
        return answer

    def identify_samples(self, samples, name: str, similar: int) -> Answer:
        """Identify decoded 16 kHz samples (``beet listen`` decodes uploads
        itself, outside its lock); ``Answer.error`` says why it could not."""
        answer = Answer(clip=name)
        started = time.perf_counter()
        try:
            if self.fingerprints.stale():  # tracks imported since it was opened
                with self._gate.exclusive():
                    self.fingerprints.refresh()
            self._identify(samples, similar, answer)
        except ClipError as exc:
            answer.error = str(exc)
        answer.seconds = time.perf_counter() - started
        return answer

    def _identify(self, samples, similar: int, answer: Answer) -> None:
        check_clip(samples)
        try:
            with self._gate.shared():
                match = self.fingerprints.identify(samples, SAMPLE_RATE, min_confidence=0.0)
        except ClipTooShort as exc:
            raise ClipError(str(exc))
        self._explain(answer.clip, match)
        looked_again = match is not None and match.confidence < MIN_CONFIDENCE
        if looked_again:
            match = self._second_look(samples, answer.clip, match)
        item = self._live_item(match.item_id, answer.clip) if match is not None else None
        if item is not None:
            with self._gate.shared():
                landmarks = self.fingerprints.landmarks(match.item_id)
            match.offset, heard = place_and_audio(samples, SAMPLE_RATE, match, item.path,
                                                  looked_again, landmarks)
            version = self._is_version(samples, answer.clip, match, landmarks, item.path, heard)
            answer.match = {
                "id": item.id,
                "artist": item.artist,
                "title": item.title,
                "album": item.album,
                "path": os.fsdecode(item.path),
                "offset": round(float(match.offset), 2),
                "confidence": round(float(match.confidence), 3),
                "speed": round(float(getattr(match, "speed", 1.0)), 4),
                "version": version,
            }
        if similar > 0:
            with self._store_lock:
                answer.similar = self._similar(samples, item, similar, answer)

    def _is_version(self, samples, clip: str, match, landmarks, path, heard: list) -> bool:
        """Whether the clip is another version of the matched track (its
        stored ``landmarks``, its file at ``path``; a re-arrangement,
        another mix), not its recording (:mod:`.fingerprint.versions`):
        holes at the track's stored peaks say so without its audio; else
        the track's audio over the clip's span (out of the stretches the
        placement ``heard``, or read now) is compared level by level."""
        if landmarks is None:
            return False
        speed = getattr(match, "speed", 1.0)
        found = holes(samples, SAMPLE_RATE, landmarks, match.offset, speed)
        if self._log is not None:
            self._log.debug(
                "{}: {} of the {} peaks of item {} over the clip are holes in the clip ({})",
                clip, found.holes, found.peaks, match.item_id,
                "a version, not the recording" if found.version else "the levels decide",
            )
        if found.version:
            return True
        # The track's seconds the clip plays, and a second more: the level
        # test takes what it needs, to the sample.
        seconds = len(samples) / SAMPLE_RATE * speed + 1.0
        track = audio_at(heard, float(match.offset), seconds)
        if track is None:
            track = read_stretch(path, float(match.offset), seconds)
        if track is None:
            return False  # unreadable now: the landmarks' verdict stands
        lacking = deficits(samples, SAMPLE_RATE, track, speed)
        if self._log is not None:
            self._log.debug(
                "{}: the clip holds {} of the {} audible cells of item {} far under the "
                "track's level ({})", clip, lacking.missing, lacking.audible, match.item_id,
                "a version, not the recording" if lacking.version else "the recording",
            )
        return lacking.version

    def _live_item(self, item_id: int, clip: str):
        """The library item a match names, or None when its fingerprint is
        not the item's file now (an orphan, a reused id, a changed or
        missing file: :mod:`.provenance`)."""
        from .provenance import SETTLED_WITHOUT_POINT, USABLE, Records

        item = self.lib.get_item(item_id)
        if item is None:
            verdict = "orphan"
        else:
            records = Records()
            with self._gate.shared():
                source = self.fingerprints.sources([item_id]).get(item_id)
            verdict = records.fingerprint(item, source)
            if verdict not in SETTLED_WITHOUT_POINT:
                # The store is read (a shard load) only when the item's
                # vector point can change the verdict.
                verdict = records.fingerprint(item, source, self._point(records, item))
            if verdict in USABLE:
                return item
        if self._log is not None:
            self._log.debug(
                "{}: item {}'s fingerprint is not used ({}): run 'beet embed'",
                clip, item_id, verdict,
            )
        return None

    def _point(self, records, item) -> str | None:
        """The verdict on ``item``'s vector point; None when it has none."""
        collection = self.settings.spec.collection
        with self._store_lock:
            if self.store.dimension(collection) is None:
                return None
            payload = self.store.payloads(collection, [item.id]).get(item.id)
        return records.point(item, payload) if payload is not None else None

    def _explain(self, clip: str, match) -> None:
        """The evidence behind an answer, or behind "not in your library"
        (``beet -v identify``): why a clip was or was not recognised."""
        if self._log is not None and match is None:
            self._log.debug(
                "{}: no library track shares {} landmarks at one place and speed with the clip",
                clip, MIN_SCORE,
            )
        elif self._log is not None:
            self._log.debug(
                "{}: best candidate item {} at {:.1f} s: {} of its peaks in the clip "
                "against {:.0f} for the best unrelated track ({} pair votes); confidence {:.3f}",
                clip, match.item_id, match.offset, match.score, match.runner_up,
                match.votes, match.confidence,
            )

    def _second_look(self, samples, clip: str, match):
        """The landmarks are not conclusive: compare the clip with the
        candidate tracks' own audio (:mod:`.fingerprint.audiocheck`). A
        Match when one track fits clearly better than chance, else None."""
        # Paths are looked up here: the tracks are decoded in threads.
        paths = {}
        for candidate in match.candidates[:SECOND_LOOK_CANDIDATES]:
            item = self._live_item(candidate.item_id, clip)
            if item is not None:
                paths[candidate.item_id] = item.path

        def read(item_id: int, start: float, seconds: float):
            return read_stretch(paths.get(item_id), start, seconds)

        verdict = second_look(samples, SAMPLE_RATE, match.candidates, read)
        if verdict is None:
            return None
        if self._log is not None:
            self._log.debug(
                "{}: second look at the audio of {} candidate tracks: item {} at {:.1f} s "
                "correlates {:.1f} times the chance spread; confidence {:.3f}",
                clip, verdict.compared, verdict.item_id, verdict.offset, verdict.z,
                verdict.confidence,
            )
        if verdict.confidence < MIN_CONFIDENCE:
            return None
        return verdict.as_match()

    def _similar(self, samples, item, count: int, answer: Answer) -> list[dict]:
        """Same-vibe suggestions: live items only (:class:`.provenance.LiveStore`),
        never the clip's own recording nor two copies of one recording."""
        from .playlist import sounds_like
        from .provenance import LiveHits, LiveStore

        collection = self.settings.spec.collection
        if self.store.dimension(collection) is None:
            return []
        accept = LiveHits(self.lib, taken=[item] if item is not None else [])
        live = LiveStore(self.store, accept)
        if item is not None:
            with self.store.session(collection):
                if not live.vectors(collection, [item.id]):
                    return []
                hits, _ = sounds_like(live, collection, [item.id], count)
        else:
            vector = self._embed_clip(samples)
            hits = live.nearest(collection, vector, count)
            answer.sounds_like = True
        out = []
        for hit in hits:
            other = accept.items[hit.id]
            out.append({
                "id": other.id,
                "artist": other.artist,
                "title": other.title,
                "path": os.fsdecode(other.path),
                "score": round(float(hit.score), 4),
            })
        return out

    def _embed_clip(self, samples):
        if self._embedder is None:
            self._embedder = self._embedder_factory()
        return self._embedder.embed(samples)
