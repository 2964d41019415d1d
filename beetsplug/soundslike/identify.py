"""``beet identify``: which library recording is this clip, where, how sure.

Two signals, each for what it is good at:

* the landmark fingerprint index answers *which recording* and *where*,
  and says "not in your library" when the evidence is weak;
* the vector store answers *what sounds like it*: the matched track's
  stored vector finds same-vibe suggestions with no model call, and a clip
  with no fingerprint match (a live version, a cover) is embedded with the
  model to say what in the library it sounds like.

torch is imported only in that last case.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from beets import ui

from .audio import SAMPLE_RATE, AudioError, decode, is_silent

#: Clips shorter than this cannot be identified reliably.
MIN_CLIP_SECONDS = 1.0
#: Only the first this-many seconds of a clip are used.
MAX_CLIP_SECONDS = 30.0
#: The matched track is compared with the clip this far either side of
#: the votes' place: variations of a passage come back within a song's
#: length, and decoding costs about 0.1 s a minute of audio.
PLACE_SECONDS = 120.0


class ClipError(Exception):
    """A clip that cannot be identified; one line for the user."""


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


class Identifier:
    """Holds the fingerprint index and store open across many clips
    (``beet listen`` keeps one for the life of the server)."""

    def __init__(self, settings, lib, embedder_factory=None, log=None) -> None:
        from .fpindex import open_fingerprints
        from .store import open_store

        self.settings = settings
        self.lib = lib
        self.store = open_store(settings)
        self.fingerprints = open_fingerprints(settings, self.store)
        self._embedder_factory = embedder_factory
        self._embedder = None
        self._log = log

    def close(self) -> None:
        self.fingerprints.close()
        self.store.close()

    def identify_path(self, path: str, similar: int) -> Answer:
        answer = Answer(clip=path)
        started = time.perf_counter()
        try:
            audio = decode(path, SAMPLE_RATE, max_seconds=MAX_CLIP_SECONDS, probe=False)
            self._identify(audio.samples, similar, answer)
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
            refresh = getattr(self.fingerprints, "refresh", None)
            if refresh is not None:
                refresh()  # tracks imported since the index was opened
            self._identify(samples, similar, answer)
        except ClipError as exc:
            answer.error = str(exc)
        answer.seconds = time.perf_counter() - started
        return answer

    def _identify(self, samples, similar: int, answer: Answer) -> None:
        from .fpindex import MIN_CONFIDENCE, ClipTooShort

        seconds = len(samples) / SAMPLE_RATE
        if seconds < MIN_CLIP_SECONDS:
            raise ClipError(
                f"clip too short ({seconds:.1f} s): record at least "
                f"{MIN_CLIP_SECONDS:.0f} s, ideally 5 s or more"
            )
        if is_silent(samples):
            raise ClipError("clip is silent: nothing to identify")
        try:
            match = self.fingerprints.identify(samples, SAMPLE_RATE, min_confidence=0.0)
        except ClipTooShort as exc:
            raise ClipError(str(exc))
        if match is not None:
            self._explain(answer.clip, match)
            if match.confidence < MIN_CONFIDENCE:
                match = self._second_look(samples, answer.clip, match)
        item = self.lib.get_item(match.item_id) if match is not None else None
        if item is not None:
            match.offset = self._place(samples, item, match)
            answer.match = {
                "id": item.id,
                "artist": item.artist,
                "title": item.title,
                "album": item.album,
                "path": os.fsdecode(item.path),
                "offset": round(float(match.offset), 2),
                "confidence": round(float(match.confidence), 3),
                "speed": round(float(getattr(match, "speed", 1.0)), 4),
            }
        if similar > 0:
            answer.similar = self._similar(samples, item, similar, answer)

    def _explain(self, clip: str, match) -> None:
        """The evidence behind an answer, or behind "not in your library"
        (``beet -v identify``): why a clip was or was not recognised."""
        if self._log is not None:
            self._log.debug(
                "{}: best candidate item {} at {:.1f} s: {} of its peaks in the clip "
                "against {} for the best unrelated track ({} pair votes); confidence {:.3f}",
                clip, match.item_id, match.offset, match.score, match.runner_up,
                match.votes, match.confidence,
            )

    def _second_look(self, samples, clip: str, match):
        """The landmarks are not conclusive: compare the clip with the
        candidate tracks' own audio (:mod:`audiocheck`). A Match when one
        track fits clearly better than chance, else None."""
        from .audiocheck import CANDIDATES, read_stretch, second_look
        from .fpindex import MIN_CONFIDENCE

        # Paths are looked up here: the tracks are decoded in threads.
        paths = {}
        for candidate in match.candidates[:CANDIDATES]:
            item = self.lib.get_item(candidate.item_id)
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

    def _place(self, samples, item, match) -> float:
        """Where in the track the clip sits. Landmark votes cannot rank the
        places where a passage repeats (loops, choruses) or comes back
        varied (a theme restated): the clip is compared with the track's
        own audio, first at the repeats the votes found
        (:func:`audiocheck.refine_offset`), then over the whole track
        (:func:`audiocheck.best_place`)."""
        from .audiocheck import place, read_stretch

        start = max(0.0, match.offset - PLACE_SECONDS)
        track = read_stretch(item.path, start, 2 * PLACE_SECONDS)
        if track is None:
            return match.offset  # the votes' best guess still stands
        return place(samples, SAMPLE_RATE, track, match, track_start=start)

    def _similar(self, samples, item, count: int, answer: Answer) -> list[dict]:
        from .playlist import sounds_like
        from .store import StoreError

        collection = self.settings.spec.collection
        try:
            if self.store.dimension(collection) is None:
                return []
            if item is not None:
                with self.store.session(collection):
                    if not self.store.vectors(collection, [item.id]):
                        return []
                    hits, _ = sounds_like(self.store, collection, [item.id], count)
            else:
                vector = self._embed_clip(samples)
                hits = self.store.nearest(collection, vector, count)
                answer.sounds_like = True
        except StoreError:
            raise
        out = []
        for hit in hits:
            other = self.lib.get_item(hit.id)
            if other is None:
                continue
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


def identify_command(plugin, lib, opts, args) -> bool:
    """Run ``beet identify``; True when every clip could be read."""
    if not args:
        raise ui.UserError("give one or more audio clips to identify")
    settings = plugin.settings(lib)
    similar = opts.similar if opts.similar is not None else plugin.config["similar"].get(int)
    if not settings.url and not settings.fingerprint_dir.exists():
        raise ui.UserError(
            "no fingerprints yet: import music with the plugin enabled, "
            "or run 'beet embed' to analyse the library"
        )

    def embedder_factory():
        return plugin.indexer(lib).embedder

    identifier = Identifier(settings, lib, embedder_factory, log=plugin._log)
    all_read = True
    try:
        for clip in args:
            answer = identifier.identify_path(clip, similar)
            if answer.error:
                all_read = False
                plugin._log.error("{}: {}", clip, answer.error)
            if opts.json:
                from .commands import print_json

                print_json(answer.as_json())
            elif not answer.error:
                _print_answer(answer, lib, opts.format)
    finally:
        identifier.close()
    return all_read


def _print_answer(answer: Answer, lib, fmt: str | None) -> None:
    match = answer.match
    if fmt:
        if match is None:
            ui.print_(f"{answer.clip}: not in your library")
            return
        item = lib.get_item(match["id"])
        item["offset"] = match["offset"]
        item["confidence"] = match["confidence"]
        ui.print_(format(item, fmt))
        return
    if match is None:
        ui.print_(f"{answer.clip}: not in your library")
    else:
        album = f" ({match['album']})" if match["album"] else ""
        speed = match.get("speed", 1.0)
        speed_note = f", played {100 * (speed - 1):+.1f}% speed" if abs(speed - 1) > 0.004 else ""
        ui.print_(
            f"{answer.clip}: {_label(match)}{album}\n"
            f"  at {_clock(match['offset'])}, confidence {100 * match['confidence']:.0f}%"
            f"{speed_note}"
        )
    if answer.similar:
        heading = "  sounds like:" if answer.sounds_like else "  same vibe:"
        ui.print_(heading)
        for n, entry in enumerate(answer.similar, 1):
            ui.print_(f"    {n}. {_label(entry)}  ({entry['score']:.2f})")


def _label(entry: dict) -> str:
    """"Artist - Title", or the file name for an untagged file."""
    if entry.get("artist") and entry.get("title"):
        return f"{entry['artist']} - {entry['title']}"
    return entry.get("title") or os.path.basename(entry.get("path", "")) or "?"


def _clock(seconds: float) -> str:
    minutes, secs = divmod(max(0.0, float(seconds)), 60)
    return f"{int(minutes)}:{secs:04.1f}"
