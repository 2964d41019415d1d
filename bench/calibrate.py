#!/usr/bin/env python3
"""Fit the confidence of `beet identify` on the dev corpus.

Usage::

    python bench/calibrate.py [CORPUS_DIR]

The matcher's evidence for an answer is ``z = (score - runner_up) /
sqrt(runner_up + 1)``: the answer's verified score against the best
unrelated candidate's (see ``fingerprint.match._decide``). Its confidence is a
logistic of z, ``1 / (1 + exp(-CONF_SLOPE * (z - CONF_CENTER)))``. This
bench collects z for

* right answers: library clips answered with their track (any offset);
* chance: clips of tracks kept out of the library, library clips whose
  track (and any copy of the same recording) is removed from the index
  before the search, and library clips answered with a wrong track;

fits the logistic with equal weight on both groups and prints the two
constants, the false-positive rate on the chance trials at confidence 0.5
with the fitted and with the current constants, and the share of right
answers kept per degradation.

The same is then done for the second look (``audiocheck``), which
`beet identify` takes at every clip the landmarks leave under confidence
0.5: its evidence is the best candidate's audio correlation in units of
the clip's chance spread, fitted on the second looks of the dev corpus
(right: the clip's own track named; chance: unknown clips, held-out
trials and wrong tracks) into AUDIO_SLOPE and AUDIO_CENTER, the center
raised above every chance trial the landmarks leave uncertain (the
second look cannot be measured against the scale index, whose synthetic
tracks have no audio, so it gets no share of the 0.5% at 48 tracks).
``--save-looks FILE.npz`` keeps the second looks for a refit.

``--scale-index DIR/index`` (``bench/fingerprint_scale.py --sizes 10000
--work DIR`` builds one) adds the same searches against thousands of
tracks, where chance has many more candidates to pick its best from:
clips of the index's real tracks are right answers, every other clip a
chance trial. Both pools are fitted together. The constants in fingerprint/params.py were set from
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

from fingerprint_accuracy import SR, build, corpus_reader, held_out_trials, load_csv  # noqa: E402
from fingerprint_scale import N_REAL  # noqa: E402

from beetsplug.soundslike.fingerprint import audiocheck, params  # noqa: E402
from beetsplug.soundslike.fingerprint import match  # noqa: E402
from beetsplug.soundslike.audio import decode  # noqa: E402
from beetsplug.soundslike.fingerprint import FingerprintIndex  # noqa: E402


def evidence(m) -> float:
    return match.evidence(m.score, m.runner_up)


def fit_logistic(z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(slope, center) of the logistic that best separates y from z, each
    class weighted to half of the total (Newton steps on the log loss,
    halved while they do not lower it)."""
    w = np.where(y == 1, 0.5 / max(1, (y == 1).sum()), 0.5 / max(1, (y == 0).sum()))
    x = np.clip(z, -10.0, 30.0)

    def loss(a, b):
        u = a * x + b
        return float(np.sum(w * (np.logaddexp(0.0, -u) * y + np.logaddexp(0.0, u) * (1 - y))))

    a, b = 1.0, 0.0  # p = sigmoid(a * x + b)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(a * x + b)))
        g = np.array([np.sum(w * (p - y) * x), np.sum(w * (p - y))])
        r = w * p * (1 - p)
        h = np.array([[np.sum(r * x * x), np.sum(r * x)], [np.sum(r * x), np.sum(r)]]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(h, g)
        t = 1.0
        while t > 1e-6 and loss(a - t * step[0], b - t * step[1]) > loss(a, b):
            t /= 2
        a, b = a - t * step[0], b - t * step[1]
        if np.abs(t * step).max() < 1e-9:
            break
    return float(a), float(-b / a)


def kind_of(q) -> str:
    return q["degradation"] + ("" if q["length_s"] == "5.0" else f" {q['length_s']} s")


def collect(index, corpus: Path, queries, truth_of, same, looks=None):
    """Search every clip: (right answers' z with their kinds, wrong-track
    answers' z, chance answers' z, chance trials) for an index holding the
    tracks ``truth_of`` (corpus id -> item id). Every clip with a
    candidate is added to ``looks`` as (query, truth item or None, match)
    for the second look."""
    right, kinds, wrong, chance = [], [], [], []
    n_trials = 0
    for q in queries:
        audio = decode(corpus / q["query"], sample_rate=SR)
        m = index.identify(audio.samples, audio.sample_rate, min_confidence=0.0)
        truth = truth_of.get(q["track_id"]) if q["track_id"] else None
        n_trials += truth is None
        if looks is not None and m is not None:
            looks.append((q, truth, m))
        if m is None:
            continue
        if truth is None:
            chance.append(evidence(m))
        elif m.item_id == truth or m.item_id in same.get(truth, ()):
            right.append(evidence(m))
            kinds.append(kind_of(q))
        else:
            wrong.append(evidence(m))
    return right, kinds, wrong, chance, n_trials


def second_looks(looks, corpus: Path, path_of, same):
    """The second look at each trial: arrays of its z, whether it named
    the clip's own track, whether the landmarks had left the trial
    uncertain (only those reach the second look in `beet identify`), and
    the clip's kind."""
    read = corpus_reader(path_of)
    rows = []
    for q, truth, m in looks:
        audio = decode(corpus / q["query"], sample_rate=SR, probe=False)
        v = audiocheck.second_look(audio.samples, audio.sample_rate, m.candidates, read)
        if v is not None:
            right = truth is not None and (v.item_id == truth or v.item_id in same.get(truth, ()))
            rows.append((v.z, right, m.confidence < params.MIN_CONFIDENCE, kind_of(q)))
    z, right, uncertain, kinds = (np.asarray(c) for c in zip(*rows))
    return z, right.astype(bool), uncertain.astype(bool), kinds


def calibrate_second_look(looks, corpus: Path, path_of, same, n_trials: int, chance_answers: int,
                          save: str | None = None):
    """Fit the second look's confidence: the logistic on every trial's
    second look (right: the clip's own track named), then its center
    raised above every chance trial the landmarks leave uncertain. The
    landmarks' 0.5% of chance answers were measured at 10,000 tracks too;
    the second look's cannot be (the scale index's synthetic tracks have
    no audio), so at 48 tracks it gets none."""
    z, right, uncertain, kinds = second_looks(looks, corpus, path_of, same)
    if save:
        np.savez(save, z=z, right=right, uncertain=uncertain, kinds=kinds)
    chance = z[~right & uncertain]
    print(f"second look at {z.size} trials: {int(right.sum())} name the clip's track "
          f"({int((right & uncertain).sum())} of them left uncertain by the landmarks); "
          f"{chance.size} uncertain trials name another track: z p50 {np.percentile(chance, 50):.2f}, "
          f"p99 {np.percentile(chance, 99):.2f}, top {np.sort(chance)[-4:].round(2).tolist()}")
    slope, center = fit_logistic(z, right.astype(float))
    print(f"logistic fit: slope {slope:.2f}, center {center:.2f}")
    center = max(center, chance_center(chance, n_trials, rate=0.0))
    print(f"fitted:  AUDIO_SLOPE = {slope:.2f}  AUDIO_CENTER = {center:.2f} (raised above every chance trial)")
    print(f"current: AUDIO_SLOPE = {params.AUDIO_SLOPE:.2f}  AUDIO_CENTER = {params.AUDIO_CENTER:.2f}")
    found = right & uncertain
    for name, c in (("fitted", center), ("current", params.AUDIO_CENTER)):
        passed = int(np.sum(chance >= c))
        print(f"  confidence 0.5 with the {name} constants (z >= {c:.2f}): other tracks named {passed}"
              f" (with the landmarks' {chance_answers}: {passed + chance_answers}/{n_trials} chance"
              f" trials answered), uncertain clips found {int(np.sum(z[found] >= c))}/{int(found.sum())}")
    print("uncertain clips found by the second look per degradation (current constants):")
    for k in sorted(set(kinds[found])):
        print(f"  {k:<20}{int(np.sum(z[found & (kinds == k)] >= params.AUDIO_CENTER)):>4}")


def chance_center(chance, n_trials: int, rate: float = 0.005) -> float:
    """A z that at most ``rate`` of ``n_trials`` chance trials reach:
    midway between the last chance answer allowed and the first not."""
    allowed = int(rate * n_trials)
    z = np.sort(np.asarray(chance))[::-1]
    if z.size <= allowed:
        return -np.inf
    upper = z[allowed - 1] if allowed > 0 else z[0] + 0.1
    return float(np.ceil(100 * (upper + z[allowed]) / 2) / 100)


def report(label, chance, n_trials, wrong, right, centers):
    for name, c in centers:
        print(f"  {label}, confidence 0.5 with the {name} constants (z >= {c:.2f}): false positives"
              f" {int(np.sum(np.asarray(chance) >= c))}/{n_trials}"
              f" ({100 * np.sum(np.asarray(chance) >= c) / max(1, n_trials):.2f}%),"
              f" wrong tracks {int(np.sum(np.asarray(wrong) >= c))},"
              f" right answers kept {int(np.sum(np.asarray(right) >= c))}/{len(right)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", nargs="?", default="/tmp/soundslike-dev-corpus")
    ap.add_argument("--scale-index",
                    help="also search against this index from bench/fingerprint_scale.py --work DIR "
                         "(DIR/index: its first real tracks plus thousands of synthetic ones), where "
                         "chance has many more candidates to choose from")
    ap.add_argument("--save-looks", metavar="FILE.npz",
                    help="keep every trial's second look (z, right, uncertain, kind) here")
    args = ap.parse_args()
    corpus_path = Path(args.corpus)
    queries = load_csv(corpus_path / "queries.csv")
    index_dir = tempfile.mkdtemp(prefix="fpcalib-")
    try:
        ids, _ = build(corpus_path, index_dir, 0)
        id_of = {v: k for k, v in ids.items()}
        index = FingerprintIndex(index_dir)
        same = {k: set(index.same_recording(k)) for k in ids}
        looks = []
        right, kinds, wrong, chance, n_trials = collect(index, corpus_path, queries, id_of, same, looks)
        for q, m in held_out_trials(index, queries, id_of, same, corpus_path):
            n_trials += 1
            if m is not None:
                chance.append(evidence(m))
                looks.append((q, None, m))
        index.close()
    finally:
        shutil.rmtree(index_dir, ignore_errors=True)
    pools = [("dev corpus (48 tracks)", right, wrong, chance, n_trials)]
    if args.scale_index:
        library = [r for r in load_csv(corpus_path / "tracks.csv") if r["in_library"] == "1"]
        with FingerprintIndex(args.scale_index) as index:
            # fingerprint_scale.py files its real tracks first, as items 1..N_REAL.
            real = {r["id"]: k + 1 for k, r in enumerate(library[:N_REAL])}
            r2, k2, w2, c2, n2 = collect(index, corpus_path, queries, real, {})
            pools.append((f"{len(index):,} tracks", r2, w2, c2, n2))
            kinds += k2

    all_right = np.concatenate([p[1] for p in pools])
    negative = np.concatenate([np.r_[p[2], p[3]] for p in pools])
    slope, center = fit_logistic(np.r_[all_right, negative],
                                 np.r_[np.ones(all_right.size), np.zeros(negative.size)])
    # The center is then put where at most 0.5% of each pool's chance
    # trials pass (no answer at all counts as passing nothing): a library
    # of thousands gives chance more candidates to pick its best from.
    center = max(center, *(chance_center(p[3], p[4]) for p in pools))
    print(f"fitted:  CONF_SLOPE = {slope:.2f}  CONF_CENTER = {center:.2f}"
          " (the logistic's center, raised where more than 0.5% of a pool's chance trials would pass)")
    print(f"current: CONF_SLOPE = {params.CONF_SLOPE:.2f}  CONF_CENTER = {params.CONF_CENTER:.2f}")
    for label, r, w, c, n in pools:
        c = np.asarray(c)
        print(f"{label}: right answers {len(r)}, wrong-track answers {len(w)}, answers to chance trials"
              f" {c.size} of {n}; chance z p50 {np.percentile(c, 50):.2f}, p99 {np.percentile(c, 99):.2f},"
              f" max {c.max():.2f}")
        report(label, c, n, w, r, (("fitted", center), ("current", params.CONF_CENTER)))
    kinds = np.array(kinds)
    print("right answers kept per degradation (current constants, all searches):")
    for k in sorted(set(kinds)):
        print(f"  {k:<20}{int(np.sum(all_right[kinds == k] >= params.CONF_CENTER)):>4}/{int(np.sum(kinds == k))}")
    # The second look reads the candidates' audio: the dev corpus only (the
    # scale index's synthetic tracks have none).
    path_of = {k: corpus_path / r["file"] for r in load_csv(corpus_path / "tracks.csv")
               for k, v in ids.items() if v == r["id"]}
    dev_chance = np.r_[wrong, chance]
    calibrate_second_look(looks, corpus_path, path_of, same, n_trials,
                          int(np.sum(dev_chance >= params.CONF_CENTER)), args.save_looks)


if __name__ == "__main__":
    main()
