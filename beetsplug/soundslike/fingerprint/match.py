"""Stage 3: matching a clip against library landmarks.

Two stages, so that the cost of a query grows slowly with the library:

1. Candidates: the clip's speed-invariant keys
   (:func:`.landmarks.query_keys`, one frame shift) find the tracks worth
   a closer look, whatever the speed. Each backend does this its own way
   (:meth:`LandmarkMatcher.candidate_rounds`): the local index reads its
   inverted index, rarest keys first, within a small budget of postings
   and, when those candidates do not settle the clip, a larger one
   (two rounds); the
   server runs a sparse-vector search. At most
   :data:`.params.VERIFY_CANDIDATES` tracks go on, and the keys they
   share with the clip say each one's speed (:func:`read_speeds`).
2. Verification (:func:`verify`): the dense query (every frame shift, the
   exact hashes at each candidate's speed) is matched against the
   candidates' own landmarks, not against the index, over the places the
   candidate stage found (the local index's best offset cells, the
   server's best parts); its cost does not depend on the library size.

:func:`.landmarks.query_landmarks` gives the clip's hashes for each speed.
Every hit of a query hash on a reference landmark votes for
(item, speed, offset = reference frame - clip frame * speed). A true match
piles its votes into one offset (within a frame); chance hits scatter over
every item, offset and speed. Votes are counted in coarse offset cells
first (:func:`.voting.offset_cells`: 4-frame cells on two staggered grids, the one
voting rule of the candidate stage, of verification and of
``same_recording``), in a count-min sketch (:func:`.voting.may_reach`) that
throws away the hits that cannot reach a meaningful score; verification
then counts the survivors exactly with +-1 frame tolerance.

Speeds within +-2.5 % are searched first; +-8.5 % only when that gives
no confident answer, so most clips pay for the narrow search (about a
third of the keys). The wide search's winner is judged against the
stronger runner-up of both searches: two looks at chance must not make
chance look confident.

Verification and confidence: each candidate's votes are recounted as
distinct clip anchors (a clip peak hit through several pairs or several
frame shifts counts once); one with fewer than :data:`.params.MIN_SCORE`
cannot be the answer. Votes place a candidate; its score is the number of
its reference peaks over the clip's span that the clip has too (peaks
survive noise about twice as often as pairs of peaks). The speed is
refined by fitting reference time against clip time over the matched
landmarks. The best score is then compared with what chance gives *for
this query*: the best candidate of an unrelated item (not the winner's
recording filed again). That runner-up reflects how many
peaks the clip has and how much the music resembles the library.
Confidence is a logistic function of the excess in Poisson units;
``identify`` answers ``None`` below :data:`.params.MIN_CONFIDENCE`. A
runner-up whose own landmarks over the clip's span are largely the
winner's, at the same times, is the same recording filed twice, not a
rival: the answer is one of them, not "unknown".
Offsets where the passage repeats in the winning track (loops, choruses)
come back as ``Match.alternatives``; votes cannot rank identical passages,
:func:`.audiocheck.refine_offset` can with the track's audio.

Both backends implement :class:`.backend.FingerprintBackend`, a
:class:`LandmarkMatcher` with buffered writes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from .arrays import best_per_group, distinct, runs
from .landmarks import (
    ClipPeaks,
    QueryKeys,
    QueryLandmarks,
    clip_peaks,
    covered_peaks,
    landmark_keys,
    landmark_peaks,
    peak_cover,
    query_keys,
    query_landmarks,
)
from .params import (
    CANDIDATE_SHIFTS,
    CONF_CENTER,
    CONF_SLOPE,
    DT_MAX,
    EARLY_STOP_CONFIDENCE,
    FRAME_SECONDS,
    HASH_MASK,
    MAX_CLIP_SECONDS,
    MAX_REPEATS,
    MAX_SPEED,
    MIN_CLIP_SECONDS,
    MIN_CONFIDENCE,
    MIN_SCORE,
    NEAR_SPEED,
    NO_KEY,
    REPEAT_GAP_SECONDS,
    REPEAT_SHARE,
    RUNNER_UP_SHARE,
    SAME_RECORDING_SHARE,
    SPEED_FIT_MIN_ANCHORS,
    SPEED_FIT_MIN_FRAMES,
    SPEED_FIT_RANGE,
    VERIFY_CANDIDATES,
)
from .speed import read_speeds, verify_speeds
from .voting import hits_in_runs, may_reach, offset_cells


class FingerprintError(Exception):
    """The index cannot be used (corrupt, or built by an incompatible version)."""


class IndexVersionError(FingerprintError):
    """The index was written with another format or fingerprint version."""


class ClipTooShort(ValueError):
    """The clip is too short to be identified."""


@dataclass
class Candidate:
    """A place in a library track that a clip may come from."""

    item_id: int
    #: Seconds into the track where the clip would start.
    offset: float
    #: Clip speed relative to the track, as verified (before the fit).
    speed: float
    #: Reference peaks over the clip's span that the clip has too.
    score: int
    #: Offset-consistent landmark votes (distinct clip anchors).
    votes: int


@dataclass
class Match:
    """A library recording that a clip comes from."""

    item_id: int
    #: Seconds into the library track where the clip starts.
    offset: float
    #: Estimated share of answers like this one that are right (0..1).
    confidence: float
    #: Clip speed relative to the library track (1.02: clip plays 2 % fast).
    speed: float
    #: Reference peaks over the clip's span that the clip has too: the
    #: evidence ``confidence`` weighs.
    score: int
    #: Offset-consistent landmark votes (distinct clip anchors).
    votes: int = 0
    #: Other offsets (seconds) in the same track that match almost as well:
    #: the passage repeats there (loops, choruses). A caller holding the
    #: track's audio can pick among ``[offset] + alternatives`` with
    #: :func:`.audiocheck.refine_offset`.
    alternatives: list = field(default_factory=list)
    #: Score of the best unrelated candidate (never under a share of the
    #: answer's span: :data:`.params.RUNNER_UP_SHARE`): what chance gives
    #: for this clip, the yardstick of ``confidence``. Kept as it was
    #: measured, not rounded: a rounded yardstick is a different verdict.
    runner_up: float = 0.0
    #: The best place in each candidate track, this answer's first, then
    #: by ``score``: what a second look at the tracks' own audio
    #: (:mod:`.audiocheck`) compares when the landmarks are not conclusive.
    candidates: list = field(default_factory=list)


# ---------------------------------------------------------------- matcher


class LandmarkMatcher(ABC):
    """The clip search shared by the local index and the Qdrant server
    backend; subclasses say how to find candidate tracks and read their
    landmarks (:meth:`candidate_rounds`)."""

    def identify(self, samples: np.ndarray, sample_rate: int,
                 min_confidence: float = MIN_CONFIDENCE) -> Match | None:
        """The library item a clip comes from, or None when nothing matches
        convincingly (confidence under ``min_confidence``). Raises
        :class:`ClipTooShort` for clips under :data:`MIN_CLIP_SECONDS`."""
        self.check_open()
        samples = np.asarray(samples, np.float32)
        if samples.ndim == 2:
            samples = samples.mean(axis=1)
        seconds = samples.shape[0] / float(sample_rate)
        if seconds < MIN_CLIP_SECONDS:
            raise ClipTooShort(
                f"clip is {seconds:.1f} s long; at least {MIN_CLIP_SECONDS:.0f} s is needed "
                "(5 s or more works best)"
            )
        if seconds > MAX_CLIP_SECONDS:
            samples = samples[: int(MAX_CLIP_SECONDS * sample_rate)]
        if self.is_empty():
            return None
        # Most clips play within 2.5 % of the track's speed; the whole
        # range is searched only when that is not conclusive.
        peaks = clip_peaks(samples, sample_rate)
        best = self._search(peaks, NEAR_SPEED, always=(1.0,))
        if best is None or best.confidence < EARLY_STOP_CONFIDENCE:
            # Not settled near 1.0: a stranger, heavy noise or a clip far
            # off speed, which a first round rarely settles; one round
            # for all the candidates.
            best = two_looks(best, self._search(peaks, MAX_SPEED, quick=False))
        if best is None or best.confidence < min_confidence:
            return None
        return best

    def _search(self, peaks: ClipPeaks, max_speed: float, always=(), quick: bool = True) -> Match | None:
        """Candidates from the clip's keys over speeds up to ``max_speed``
        (one frame shift), verified with every frame shift at the speeds
        their keys read back and at the speeds ``always``; round after round
        (:meth:`candidate_rounds`, a ``quick`` first one or not) until one
        settles the clip."""
        qk = query_keys(peaks, max_speed, shift=CANDIDATE_SHIFTS[0])
        if qk.hashes.size == 0:
            return None
        best = None
        for found in self.candidate_rounds(qk, quick):
            best = self._verified(qk, found, peaks, always)
            if best is not None and best.confidence >= EARLY_STOP_CONFIDENCE:
                break
        return best

    def _verified(self, qk: QueryKeys, found, peaks: ClipPeaks, always) -> Match | None:
        """The best of the candidate runs ``found`` in one round for the clip
        (:func:`verify`), each at the speeds its keys read back and at the
        speeds ``always``."""
        speeds = read_speeds(qk, found)
        kept = [k for k, speed in enumerate(speeds) if speed is not None or always]
        if not kept:
            return None
        grid, allowed = verify_speeds([speeds[k] for k in kept], always)
        return verify(query_landmarks(None, None, speeds=grid, peaks=peaks), [found[k] for k in kept],
                      peaks, allowed)

    def check_open(self) -> None:
        """Raise :class:`FingerprintError` when the store is closed (a
        backend that can be closed says so)."""

    @abstractmethod
    def is_empty(self) -> bool:
        """Whether the store holds no fingerprints at all."""

    @abstractmethod
    def candidate_rounds(self, qk: QueryKeys, quick: bool = True
                        ) -> Iterator[list[tuple[int, np.ndarray, np.ndarray]]]:
        """(item id, landmark words, frames) of the tracks worth verifying
        for the clip's keys ``qk``, best first: the landmarks over the
        places where the clip may sit in each (a track's run may leave
        out the rest of it). One list a round, each from more of the index
        than the last; the search asks for the next only while the clip
        is not settled. Not ``quick``: no cheaper first round before the
        last."""


def two_looks(near: Match | None, wide: Match | None) -> Match | None:
    """The answer of the search within +-2.5 % (``near``) and the search
    over the whole speed range (``wide``) together.

    Two searches are two looks at chance: the answer of either is judged
    against the stronger of both runner-ups, also when both name the same
    track (each search verifies its own candidates, so the wide one can
    meet an unrelated track the near one did not). When they name
    different tracks, each answer is also a rival of the other."""
    if wide is None:
        return near
    chance = max(wide.runner_up, near.runner_up if near is not None else 0.0)
    if near is not None and near.item_id != wide.item_id:
        _rejudge(near, max(near.runner_up, wide.score))
        chance = max(chance, near.score)
    elif near is not None:
        _rejudge(near, chance)
    _rejudge(wide, chance)
    if near is None:
        return wide
    winner, other = (wide, near) if wide.confidence > near.confidence else (near, wide)
    winner.candidates = _merged_candidates(winner, other)
    return winner


# ----------------------------------------------------------- verification


def verify(q: QueryLandmarks, runs: list[tuple[int, np.ndarray, np.ndarray]],
           peaks: ClipPeaks, allowed: np.ndarray | None = None) -> Match | None:
    """The best of the candidate tracks ``runs`` (item id, words, frames)
    for the dense clip query ``q`` built from the clip's ``peaks``, with
    its confidence; None when no track has offset-consistent votes.
    ``allowed[run, speed]`` says which of ``q``'s speeds each run is
    verified at (default: all). The cost depends on the candidates, not
    on the library size."""
    hits = _match_runs(q, runs, allowed)
    if hits is None:
        return None
    ranked, bins = _count(q, *hits)
    if not ranked:
        return None
    return _decide(q, ranked, bins, runs, peaks)


def _match_runs(q: QueryLandmarks, runs, allowed=None):
    """Hits of the query hashes on the candidates' landmarks, all matched
    in one pass: (run number, reference frame, query entry), at the
    speeds ``allowed`` for each run."""
    hits = hits_in_runs(q.hashes, [r[1] & np.uint32(HASH_MASK) for r in runs], [r[2] for r in runs])
    if hits is None or allowed is None:
        return hits
    slots, frames, entries = hits
    keep = allowed[slots, q.speed_index[entries]]
    return slots[keep], frames[keep], entries[keep]


def _count(q: QueryLandmarks, slot, tref, entry):
    """Offset-consistent vote counts of hits (run, reference frame,
    query entry): list of (score, run, speed index, offset frames,
    entries, reference frames) for the best bins, best first, one per
    run, and every bin's (cell, offset, score)."""
    ns = len(q.speeds)
    offset = np.rint(tref - q.ref_time[entry]).astype(np.int64)
    sp = q.speed_index[entry].astype(np.int64)
    cell = slot * ns + sp
    # Pass 1: approximate counts of 4-frame offset cells (two staggered
    # grids so a cluster on a cell border is not split) in a hashed
    # histogram; hits in cells below the bar cannot win.
    keep = np.zeros(cell.size, bool)
    for k in offset_cells(cell, offset):
        keep |= may_reach(k, MIN_SCORE - 1)
    cell, offset, entry = cell[keep], offset[keep], entry[keep]
    if cell.size == 0:
        return [], None
    # Pass 2: exact counts per (cell, offset), +-1 frame tolerance.
    key = (cell << 24) + (offset + (1 << 23))
    order = np.argsort(key, kind="stable")
    key, entry, tref = key[order], entry[order], tref[keep][order]
    uk, first, cnt = runs(key)  # already sorted: no second sort
    left = np.searchsorted(uk, uk - 1)
    right = np.searchsorted(uk, uk + 1)
    has_l = (left < uk.size) & (uk[np.minimum(left, uk.size - 1)] == uk - 1)
    has_r = (right < uk.size) & (uk[np.minimum(right, uk.size - 1)] == uk + 1)
    score = cnt + np.where(has_l, cnt[np.minimum(left, uk.size - 1)], 0) + np.where(
        has_r, cnt[np.minimum(right, uk.size - 1)], 0)
    cells = uk >> 24
    # Best bin per slot (over speeds and offsets).
    firsts = best_per_group(cells // ns, score)
    firsts = firsts[np.argsort(-score[firsts], kind="stable")][:VERIFY_CANDIDATES]
    ranked = []
    for i in firsts:
        k0 = uk[i]
        lo = np.searchsorted(key, k0 - 1, side="left")
        hi = np.searchsorted(key, k0 + 1, side="right")
        c = int(cells[i])
        ranked.append((int(score[i]), c // ns, c % ns, int((k0 & ((1 << 24) - 1)) - (1 << 23)),
                       entry[lo:hi], tref[lo:hi]))
    return ranked, (uk >> 24, (uk & ((1 << 24) - 1)) - (1 << 23), score)


def _decide(q: QueryLandmarks, ranked, bins, runs, peaks: ClipPeaks) -> Match | None:
    """Verify the candidates and attach a calibrated confidence.

    Votes of pairs find each candidate's place (speed and offset); the
    verdict counts *peaks*: how many of the candidate's reference peaks
    over the clip's span the clip has too (:func:`.landmarks.peak_cover`).
    A pair needs both of its peaks to survive noise, so a noisy clip keeps
    about twice as much evidence in peaks as in pairs, and every candidate
    is measured over the same span, so they compare fairly. Only a
    candidate with :data:`MIN_SCORE` distinct votes can be the answer.

    The evidence is the best count's excess over the best *unrelated*
    candidate's, in Poisson units: ``(s1 - s2) / sqrt(s2 + 1)``. The
    runner-up measures what chance gives for this very clip (how many
    peaks it has, how much the music resembles the library); it is never
    taken below :data:`RUNNER_UP_SHARE` of the top's span. A candidate
    that holds the best one's recording at its place
    (:func:`_same_recording`) is a copy filed twice, not a rival, and is
    skipped as runner-up.
    """
    votes = [_distinct_anchors(q, r[4]) for r in ranked]
    eligible = [k for k in range(len(ranked)) if votes[k] >= MIN_SCORE]
    if not eligible:
        return None
    covers: dict[int, np.ndarray] = {}
    seen = []
    for _, run, si, off, _, _ in ranked:
        if si not in covers:
            covers[si] = peak_cover(peaks, q.speeds[si])
        seen.append(_peaks_seen(runs[run], off, covers[si]))
    top = max(eligible, key=lambda k: (seen[k][0], votes[k]))
    _, run, si, off, ents, tref = ranked[top]
    best_score, span = seen[top]
    runner_up = RUNNER_UP_SHARE * span
    length = covers[si].shape[0]
    top_span = None
    for k, r in enumerate(ranked):
        if k != top and seen[k][0] > runner_up:
            if top_span is None:
                top_span = _span_keys(runs[run], off, 1.0, length)
            rival = _span_keys(runs[r[1]], r[3], q.speeds[si] / q.speeds[r[2]], length)
            if not _same_recording(top_span, rival):
                runner_up = seen[k][0]
    conf = _confidence(best_score, runner_up)
    speed = _fit_speed(q.ref_time[ents] / q.speeds[si], tref, q.speeds[si])
    cell = run * len(q.speeds) + si
    order = [top] + sorted((k for k in range(len(ranked)) if k != top),
                           key=lambda k: (-seen[k][0], -votes[k]))
    candidates = [Candidate(item_id=int(runs[ranked[k][1]][0]),
                            offset=max(0.0, ranked[k][3] * FRAME_SECONDS),
                            speed=float(q.speeds[ranked[k][2]]), score=int(seen[k][0]),
                            votes=int(votes[k])) for k in order]
    return Match(item_id=int(runs[run][0]), offset=max(0.0, off * FRAME_SECONDS),
                 confidence=conf, speed=speed, score=int(best_score), votes=int(votes[top]),
                 alternatives=_repeats(bins, cell, off, ranked[top][0]),
                 runner_up=float(runner_up), candidates=_one_per_track(candidates))


def _merged_candidates(winner: Match, other: Match) -> list:
    """Both searches' places: the winner's own first, then the others by
    peak count, one per track."""
    rest = sorted(winner.candidates[1:] + other.candidates, key=lambda c: -c.score)
    return _one_per_track(winner.candidates[:1] + rest)


def _one_per_track(candidates: list) -> list:
    """The first (best) candidate of each track, in order."""
    seen_items: set[int] = set()
    out = []
    for c in candidates:
        if c.item_id not in seen_items:
            seen_items.add(c.item_id)
            out.append(c)
    return out


def _peaks_seen(run, offset: int, cover: np.ndarray) -> tuple[int, int]:
    """(reference peaks the clip has, reference peaks in its span) of one
    candidate run (item, hashes, frames) with the clip at ``offset``."""
    _, hashes, frames = run
    near = (frames >= offset - DT_MAX) & (frames < offset + cover.shape[0])
    ref_t, ref_f = landmark_peaks(hashes[near], frames[near])
    return covered_peaks(cover, ref_t, ref_f, offset)


def _span_keys(run, offset: int, scale: float, length: int) -> np.ndarray:
    """The landmarks of candidate ``run`` (item, words, frames) over the
    clip's span, ``length`` frames from ``offset`` with times scaled by
    ``scale``: speed-invariant key << 16 | frame from the offset."""
    _, words, frames = run
    t = (frames.astype(np.float64) - offset) * scale
    near = (t >= 0) & (t < length)
    keys = landmark_keys(words[near]).astype(np.int64)
    has = keys != NO_KEY
    return (keys[has] << 16) + np.rint(t[near][has]).astype(np.int64)


def _same_recording(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two candidates hold the same recording at their places,
    given their :func:`_span_keys` (the second's times scaled by the two
    verified speeds: a copy from another source may run a little faster
    or slower): at least :data:`.params.SAME_RECORDING_SHARE` of their
    landmarks have the same key at the same time, within a frame, as
    ``same_recording`` defines it for whole tracks. So a track filed twice
    is not a rival of its copy."""
    if a.size == 0 or b.size == 0:
        return False
    matched = np.zeros(a.size, bool)
    for delta in (-1, 0, 1):
        matched |= np.isin(a + delta, b)
    return matched.sum() >= SAME_RECORDING_SHARE * min(a.size, b.size)


def _distinct_anchors(q: QueryLandmarks, entries: np.ndarray) -> int:
    """Votes from distinct clip anchors: a clip anchor that hits the same
    place through several pairs (or both frame shifts) counts once."""
    t = np.rint(q.ref_time[entries] * 2).astype(np.int64)
    return int(distinct(t).size)


def _repeats(bins, cell: int, offset: int, best: int, share: float = REPEAT_SHARE,
             limit: int = MAX_REPEATS) -> list:
    """Offsets (seconds) of the same item and speed, at least 1 s from
    ``offset`` and from each other, with at least ``share`` of the best votes."""
    cells, offsets, score = bins
    mine = np.flatnonzero((cells == cell) & (score >= share * best))
    mine = mine[np.argsort(-score[mine], kind="stable")]
    taken = [offset]
    out = []
    min_gap = int(round(REPEAT_GAP_SECONDS / FRAME_SECONDS))
    for i in mine:
        o = int(offsets[i])
        if all(abs(o - t) >= min_gap for t in taken):
            taken.append(o)
            out.append(round(max(0.0, o * FRAME_SECONDS), 3))
            if len(out) >= limit:
                break
    return out


def _fit_speed(t_clip: np.ndarray, t_ref: np.ndarray, s_hyp: float) -> float:
    """Clip speed from a least-squares line through the matched anchors
    (reference frame against clip frame); the hypothesis when the anchors
    span too little time to measure a slope."""
    if t_clip.size < SPEED_FIT_MIN_ANCHORS or np.ptp(t_clip) < SPEED_FIT_MIN_FRAMES:
        return float(s_hyp)
    slope = float(np.polyfit(t_clip, t_ref, 1)[0])
    # The vote already pinned the speed to within a grid step.
    return float(np.clip(slope, s_hyp - SPEED_FIT_RANGE, s_hyp + SPEED_FIT_RANGE))


def _rejudge(match: Match, runner_up: float) -> None:
    """Judge ``match`` again against a stronger runner-up."""
    match.runner_up = float(runner_up)
    match.confidence = _confidence(match.score, runner_up)


def _confidence(score: float, runner_up: float) -> float:
    """Share of right answers among matches with this evidence.

    The statistic is the best score's excess over the unrelated runner-up
    in units of the runner-up's Poisson spread. The logistic was fitted
    once (``bench/calibrate.py``), with equal weight on right answers and
    on chance: clips of tracks not in the library and library clips
    searched with their own track hidden, on the dev corpus (48 tracks,
    688 trials) and against 10,000 tracks (590 trials), where chance has
    many more candidates to pick its best from; 0.5 was then put where at
    most 0.5 % of either pool's chance trials pass (1 of 688, 2 of 590).
    With fewer unknown clips than known ones the true share of right
    answers is higher than this number, with more it is lower.
    """
    z = evidence(score, runner_up)
    return float(1.0 / (1.0 + np.exp(-CONF_SLOPE * (z - CONF_CENTER))))


def evidence(score: float, runner_up: float) -> float:
    """The statistic the confidence is a logistic of (``bench/calibrate.py``
    fits it): the score's excess over the runner-up in units of the
    runner-up's Poisson spread."""
    return float((score - runner_up) / np.sqrt(runner_up + 1.0))
