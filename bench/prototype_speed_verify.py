#!/usr/bin/env python3
"""Prototype (issue 19), end to end in process: candidates from the
speed-invariant pair keys of bench/prototype_speed.py, judged by the
package's own verification (dense exact pairs at speeds around each
candidate's read-back speed, peaks counted, calibrated confidence)
against the landmarks today's code stores for the candidates.

Usage (after ``bench/prototype_speed.py --extract``)::

    python bench/prototype_speed_verify.py KINDS [--index DIR]

KINDS is a comma-separated list of degradations. Each clip is searched
twice (+-2.5 %, then +-8.5 % unless the first is certain), and again
with its own track (and any copy) left out: every answer of those is a
chance answer.
"""

from __future__ import annotations

import argparse
import collections
import csv
import math
import os
import pickle
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import prototype_speed as P  # noqa: E402
from beetsplug.soundslike.audio import decode  # noqa: E402
from beetsplug.soundslike.fingerprint import FingerprintIndex, reference_landmarks  # noqa: E402
from beetsplug.soundslike.fingerprint import landmarks as L  # noqa: E402
from beetsplug.soundslike.fingerprint import match as M  # noqa: E402
from beetsplug.soundslike.fingerprint.params import CONF_CENTER, CONF_SLOPE, MIN_CONFIDENCE  # noqa: E402

PASSES = (1.025, 1.085)
#: Verification speeds around each candidate's read-back speed.
AROUND = (-0.005, 0.0, 0.005)


def build_index(corpus: str, tracks: list, directory: str) -> None:
    with FingerprintIndex(directory) as ix:
        for k, r in enumerate(tracks):
            a = decode(os.path.join(corpus, r["file"]), sample_rate=16000)
            ix.add_landmarks(k, reference_landmarks(a.samples, a.sample_rate))


def rejudge(m, runner_up) -> None:
    """Judge ``m`` against a stronger runner-up (the package's logistic)."""
    m.runner_up = int(runner_up)
    z = M.evidence(m.score, runner_up)
    m.confidence = float(1.0 / (1.0 + math.exp(-CONF_SLOPE * (z - CONF_CENTER))))


def search(index, runs_of, clip, peaks, exclude=()):
    best = None
    for s_max in PASSES:
        cands = P.search1(index, clip, exclude=set(exclude), s_max=s_max, speed_step=0.01,
                          return_cands=True)
        if not cands:
            continue
        speeds = sorted({round(c["speed"] * (1 + k), 4) for c in cands[:16] for k in AROUND})
        q = L.query_landmarks(None, None, speeds=tuple(speeds), peaks=peaks)
        m = M.verify(q, [runs_of[c["track"]] for c in cands[:16]], peaks)
        if m is None:
            continue
        if best is not None:
            # two searches are two looks at chance (as the package does)
            chance = max(m.runner_up, best.runner_up)
            if best.item_id != m.item_id:
                rejudge(best, max(best.runner_up, m.score))
                chance = max(chance, best.score)
            rejudge(m, chance)
            if m.confidence <= best.confidence:
                continue
        best = m
        if best.confidence >= 0.999:
            break
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kinds")
    ap.add_argument("corpus", nargs="?", default="/tmp/soundslike-dev-corpus")
    ap.add_argument("--cache", default="/tmp/protoG/peaks.pkl")
    ap.add_argument("--index", default="/tmp/protoG/curidx", help="today's index of the library (built if missing)")
    args = ap.parse_args()
    with open(args.cache, "rb") as fh:
        data = pickle.load(fh)
    P.MIN_VOTES = 4
    index = P.Index(P.Design(band=0.01, dr=0.006, dp=0.04, tol_r=0.003, tol_p=0.015, band_speed=True),
                    data["tracks"])
    copies = P.find_copies(data["tracks"])
    pos = {tr["id"]: n for n, tr in enumerate(data["tracks"])}
    tracks = [r for r in csv.DictReader(open(os.path.join(args.corpus, "tracks.csv"))) if r["in_library"] == "1"]
    if not os.path.exists(args.index):
        build_index(args.corpus, tracks, args.index)
    ix = FingerprintIndex(args.index)
    runs_of = {}
    for k in range(len(tracks)):
        lm = ix.landmarks(k)
        runs_of[k] = (k, lm.hashes, lm.times)
    kinds = set(args.kinds.split(","))
    clips = {c["query"]: c for c in data["clips"]}
    rows = collections.defaultdict(lambda: [0, 0, 0, 0])
    t0, n = time.time(), 0
    for q in csv.DictReader(open(os.path.join(args.corpus, "queries.csv"))):
        if q["degradation"] not in kinds:
            continue
        a = decode(os.path.join(args.corpus, q["query"]), sample_rate=16000)
        peaks = L.clip_peaks(a.samples, a.sample_rate)
        known = q["track_id"] in pos
        r = rows[q["degradation"] + ("" if known else " (unknown)")]
        r[0] += 1
        n += 1
        m = search(index, runs_of, clips[q["query"]], peaks)
        answered = m is not None and m.confidence >= MIN_CONFIDENCE
        if known:
            own = {pos[q["track_id"]], *copies.get(pos[q["track_id"]], ())}
            r[1] += answered and m.item_id in own
            r[2] += answered and m.item_id not in own
            h = search(index, runs_of, clips[q["query"]], peaks, exclude=own)
            r[3] += h is not None and h.confidence >= MIN_CONFIDENCE
        else:
            r[2] += answered
    print(f"{n} clips, {1000 * (time.time() - t0) / max(n, 1):.0f} ms/clip (decode, search, held-out search)")
    for k in sorted(rows):
        r = rows[k]
        print(f"{k:26s} {r[0]:4d} right {r[1]:3d} ({100 * r[1] / r[0]:5.1f}%) wrong {r[2]} held-out answered {r[3]}")


if __name__ == "__main__":
    main()
