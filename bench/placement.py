#!/usr/bin/env python3
"""What the placement buys: `beet identify`'s answers on the dev corpus
with each way of placing a clip in its matched track, and what each costs.

The placement (``fingerprint.placement.place``) decodes windows of the
matched track around the votes' place, the repeats the votes found and
the places where the track's stored peaks meet the clip's, and compares
the clip with them, unless the landmarks settled the match at one place.
This bench runs the identifier in process (the library of
``bench/identify.py``, which it imports once when missing) over every
clip with one variant at a time:

* ``full``: what `beet identify` does;
* ``whole``: the design before (2026-11-30): up to 4 minutes of the track
  around the votes' place decoded and searched, no likely places;
* ``none``: the votes' place as it is, no audio read;
* ``repeats``: audio compared only at the repeats the votes found, no
  search for a better place;
* ``settled``: a settled match keeps the votes' place even when the votes
  found repeats; only unsettled matches are placed with the audio.

and prints, per variant, the accuracy table of ``bench/identify.py`` and
the mean wall and CPU seconds a clip (decode, search, placement).

Usage: python bench/placement.py [CORPUS_DIR] [--variants full,whole,none,repeats,settled]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import identify as identify_bench  # noqa: E402
from beetsplug.soundslike import identify as identify_service  # noqa: E402
from beetsplug.soundslike.fingerprint import audiocheck, params, placement  # noqa: E402

FULL = identify_service.place
WHOLE_SECONDS = 120.0  # the design before: this far either side of the votes' place


def whole_track(samples, sample_rate, match, path, looked_again, landmarks):
    offset = float(match.offset)
    settled = not looked_again and match.confidence >= params.EARLY_STOP_CONFIDENCE
    if path is None or (settled and not match.alternatives):
        return offset
    start = max(0.0, offset - WHOLE_SECONDS)
    track = audiocheck.read_stretch(path, start, 2 * WHOLE_SECONDS)
    if track is None:
        return offset
    stretches = [placement.Stretch(start, track)]
    x = audiocheck.analysis_clip(samples, sample_rate)
    repeats = [offset] + list(match.alternatives)
    if match.alternatives:
        offset = placement.refine_offset(x, stretches, repeats, match.speed)
    return placement.best_place(x, stretches, offset, repeats, match.speed)


def votes_place(samples, sample_rate, match, path, looked_again, landmarks):
    return float(match.offset)


def repeats_only(samples, sample_rate, match, path, looked_again, landmarks):
    offset = float(match.offset)
    if path is None or not match.alternatives or landmarks is None:
        return offset
    x = audiocheck.analysis_clip(samples, sample_rate)
    places = [offset] + list(match.alternatives)
    stretches = placement.read_places(path, places, x.size * match.speed / params.ANALYSIS_RATE,
                                      landmarks.n_frames)
    if not stretches:
        return offset
    return placement.refine_offset(x, stretches, places, match.speed)


def unsettled_only(samples, sample_rate, match, path, looked_again, landmarks):
    if not looked_again and match.confidence >= params.EARLY_STOP_CONFIDENCE:
        return float(match.offset)
    return FULL(samples, sample_rate, match, path, looked_again, landmarks)


VARIANTS = {"full": FULL, "whole": whole_track, "none": votes_place, "repeats": repeats_only,
            "settled": unsettled_only}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", nargs="?", default="/tmp/soundslike-dev-corpus")
    parser.add_argument("--work", default="/tmp/soundslike-bench-identify")
    parser.add_argument("--variants", default="full,whole,none,repeats,settled")
    args = parser.parse_args()
    corpus = os.path.abspath(args.corpus)
    env = identify_bench.setup_library(corpus, args.work, rebuild=False)
    recording = identify_bench.recordings(env)
    queries, clips = identify_bench.load_queries(corpus)
    identifier = identify_bench.in_process_identifier(env)
    for name in args.variants.split(","):
        # The service looks the placement up by this name at every clip.
        identify_service.place = VARIANTS[name]
        answers = {}
        wall = cpu = 0.0
        for clip in clips:
            started, used = time.perf_counter(), time.process_time()
            answers[clip] = identifier.identify_path(clip, similar=0).as_json()
            wall += time.perf_counter() - started
            cpu += time.process_time() - used
        print(f"\n## placement: {name}")
        identify_bench.print_table(identify_bench.score(corpus, queries, clips, answers, recording))
        print(f"\nper clip: {wall / len(clips):.3f} s wall, {cpu / len(clips):.3f} s CPU in this "
              "process (the decoding processes' CPU not counted)")
    identify_service.place = FULL
    identifier.close()


if __name__ == "__main__":
    main()
