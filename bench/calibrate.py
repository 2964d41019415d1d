#!/usr/bin/env python3
"""Fit the confidence of `beet identify` on the dev corpus.

Usage::

    python bench/calibrate.py [CORPUS_DIR]

The matcher's evidence for an answer is ``z = (score - runner_up) /
sqrt(runner_up + 1)``: the answer's verified score against the best
unrelated candidate's (see ``fpindex._decide``). Its confidence is a
logistic of z, ``1 / (1 + exp(-CONF_SLOPE * (z - CONF_CENTER)))``. This
bench collects z for

* right answers: library clips answered with their track (any offset);
* chance: clips of tracks kept out of the library, library clips whose
  track (and any copy of the same recording) is removed from the index
  before the search, and library clips answered with a wrong track;

fits the logistic with equal weight on both groups and prints the two
constants, the false-positive rate on the chance trials at confidence 0.5
with the fitted and with the current constants, and the share of right
answers kept per degradation. The constants in fpindex.py were set from
this output once; the corpus is a sample of music, so do not refit them
for a clip or two.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fingerprint_accuracy import SR, build, held_out_trials, load_csv  # noqa: E402

from beetsplug.soundslike import fpindex  # noqa: E402
from beetsplug.soundslike.audio import decode  # noqa: E402
from beetsplug.soundslike.fpindex import FingerprintIndex  # noqa: E402


def evidence(m) -> float:
    return (m.score - m.runner_up) / np.sqrt(m.runner_up + 1.0)


def fit_logistic(z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(slope, center) of the logistic that best separates y from z, each
    class weighted to half of the total (Newton steps on the log loss)."""
    w = np.where(y == 1, 0.5 / max(1, (y == 1).sum()), 0.5 / max(1, (y == 0).sum()))
    x = np.clip(z, -10.0, 30.0)
    a, b = 1.0, 0.0  # p = sigmoid(a * x + b)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(a * x + b)))
        g = np.array([np.sum(w * (p - y) * x), np.sum(w * (p - y))])
        r = w * p * (1 - p)
        h = np.array([[np.sum(r * x * x), np.sum(r * x)], [np.sum(r * x), np.sum(r)]]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(h, g)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-9:
            break
    return float(a), float(-b / a)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", nargs="?", default="/tmp/soundslike-dev-corpus")
    args = ap.parse_args()
    corpus = Path(args.corpus)
    index_dir = tempfile.mkdtemp(prefix="fpcalib-")
    try:
        ids, _ = build(corpus, index_dir, 0)
        id_of = {v: k for k, v in ids.items()}
        queries = load_csv(corpus / "queries.csv")
        index = FingerprintIndex(index_dir)
        same = {k: set(index.same_recording(k)) for k in ids}
        right, wrong, chance, kinds = [], [], [], []
        n_trials = 0
        for q in queries:
            audio = decode(corpus / q["query"], sample_rate=SR)
            m = index.identify(audio.samples, audio.sample_rate, min_confidence=0.0)
            truth = id_of.get(q["track_id"]) if q["track_id"] else None
            n_trials += truth is None
            if m is None:
                continue
            if truth is None:
                chance.append(evidence(m))
            elif m.item_id == truth or m.item_id in same.get(truth, ()):
                right.append(evidence(m))
                kinds.append(q["degradation"] + ("" if q["length_s"] == "5.0" else f" {q['length_s']} s"))
            else:
                wrong.append(evidence(m))
        for _, m in held_out_trials(index, queries, id_of, same, corpus):
            n_trials += 1
            if m is not None:
                chance.append(evidence(m))
        index.close()
    finally:
        shutil.rmtree(index_dir, ignore_errors=True)

    right, wrong, chance = np.array(right), np.array(wrong), np.array(chance)
    negative = np.r_[chance, wrong]
    slope, center = fit_logistic(np.r_[right, negative], np.r_[np.ones(right.size), np.zeros(negative.size)])
    print(f"right answers: {right.size}; wrong-track answers to library clips: {wrong.size}; "
          f"answers to chance trials: {chance.size} of {n_trials}")
    print(f"fitted:  CONF_SLOPE = {slope:.2f}  CONF_CENTER = {center:.2f}")
    print(f"current: CONF_SLOPE = {fpindex.CONF_SLOPE:.2f}  CONF_CENTER = {fpindex.CONF_CENTER:.2f}")
    print(f"chance z: p50 {np.percentile(chance, 50):.2f}, p99 {np.percentile(chance, 99):.2f},"
          f" p99.5 {np.percentile(chance, 99.5):.2f}, max {chance.max():.2f}")
    kinds = np.array(kinds)
    for label, c in (("fitted", center), ("current", fpindex.CONF_CENTER)):
        print(f"at confidence 0.5 ({label}, z >= {c:.2f}): false positives"
              f" {100 * np.sum(chance >= c) / n_trials:.2f}% of chance trials,"
              f" wrong tracks {int(np.sum(wrong >= c))}; right answers kept {int(np.sum(right >= c))}/{right.size}")
    print("right answers kept per degradation (current constants):")
    for k in sorted(set(kinds)):
        print(f"  {k:<20}{int(np.sum(right[kinds == k] >= fpindex.CONF_CENTER)):>4}/{int(np.sum(kinds == k))}")


if __name__ == "__main__":
    main()
