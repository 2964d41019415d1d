#!/usr/bin/env python3
"""Peaks for bench/prototype_speed.py (issue 19): the shipped peak picking
(the package's spectrogram and filters) plus parabolic sub-bin frequency
and sub-frame time; and the corpus extraction that caches every
constellation once (``prototype_speed.py --extract``)."""

from __future__ import annotations

import csv
import pickle
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from beetsplug.soundslike.fingerprint.params import (  # noqa: E402, F401 (BIN_HI: for prototype_speed)
    ANALYSIS_RATE as RATE,
    BIN_HI,
    BIN_LO,
    BLOCK_FRAMES as BLOCK,
    FRAME_SECONDS as FRAME,
    HOP,
    MEAN_BOX,
    MIN_SALIENCE as MIN_SAL,
    PEAK_HALF_F,
    PEAK_HALF_T,
    QUERY_SHIFTS as SHIFTS,
)
from beetsplug.soundslike.fingerprint.spectrum import (  # noqa: E402
    log_spectrogram as logspec,
    max_filter,
    uniform_filter,
)


def peaks(x, density, start=0):
    """(time in frames, sub-frame; bin from 0 Hz, sub-bin; salience), time order."""
    ls = logspec(x, start)
    if ls.shape[0] < 3:
        return np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0, int)
    lm = max_filter(ls, PEAK_HALF_T, PEAK_HALF_F)
    sal = ls - uniform_filter(ls, MEAN_BOX)
    ok = (ls == lm) & (sal > MIN_SAL)
    ok[:, 0] = ok[:, -1] = False
    ok[0] = ok[-1] = False
    t, f = np.nonzero(ok)
    s = sal[t, f]
    a, b, c = ls[t, f - 1], ls[t, f], ls[t, f + 1]
    den = a - 2 * b + c
    with np.errstate(divide="ignore", invalid="ignore"):
        ff = np.clip(np.where(den < 0, 0.5 * (a - c) / den, 0.0), -0.5, 0.5)
    a, c = ls[t - 1, f], ls[t + 1, f]
    den = a - 2 * b + c
    with np.errstate(divide="ignore", invalid="ignore"):
        tf = np.clip(np.where(den < 0, 0.5 * (a - c) / den, 0.0), -0.5, 0.5)
    per_block = max(1, int(round(density * BLOCK * FRAME)))
    blk = t // BLOCK
    order = np.lexsort((-s, blk))
    bs = blk[order]
    rank = np.arange(order.size) - np.searchsorted(bs, bs, side="left")
    keep = np.sort(order[rank < per_block])
    tt = t[keep] + tf[keep] + start / HOP
    fq = f[keep] + ff[keep] + BIN_LO
    o = np.argsort(tt, kind="stable")
    return tt[o], fq[o], s[keep][o], t[keep][o]


def load_csv(p):
    with open(p, newline="") as f:
        return list(csv.DictReader(f))


def extract(corpus: Path, out: Path, ref_density: int, query_density: int):
    from beetsplug.soundslike.audio import decode
    tracks = [r for r in load_csv(corpus / "tracks.csv") if r["in_library"] == "1"]
    data = {"tracks": [], "clips": []}
    t0 = time.time()
    for r in tracks:
        a = decode(corpus / r["file"], sample_rate=RATE)
        x = np.asarray(a.samples, np.float32)
        t, f, s, ti = peaks(x, ref_density)
        data["tracks"].append(dict(id=r["id"], t=t, f=f, s=s, ti=ti, n=len(x) // HOP))
    print(f"tracks {time.time() - t0:.0f}s", flush=True)
    for q in load_csv(corpus / "queries.csv"):
        a = decode(corpus / q["query"], sample_rate=RATE)
        x = np.asarray(a.samples, np.float32)
        shifts = {sh: peaks(x, query_density, int(round(sh * HOP))) for sh in SHIFTS}
        data["clips"].append(dict(q, shifts=shifts, n=len(x) // HOP))
    print(f"clips {time.time() - t0:.0f}s", flush=True)
    with open(out, "wb") as fh:
        pickle.dump(data, fh)
