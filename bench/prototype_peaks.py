#!/usr/bin/env python3
"""Peaks for bench/prototype_speed.py (issue 19): the shipped peak picking,
copied so that the prototype does not depend on where the package keeps
it, plus a parabolic sub-frame time; and the corpus extraction that caches
every constellation once (``prototype_speed.py --extract``)."""

from __future__ import annotations

import csv
import pickle
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RATE = 8000
N_FFT, HOP = 1024, 256
FRAME = HOP / RATE
BIN_LO, BIN_HI = 32, 448
PEAK_HALF_T, PEAK_HALF_F = 3, 8
MEAN_BOX = (31, 43)
MIN_SAL = 1.0
BLOCK = 16
SHIFTS = (0.0, 0.25, 0.5, 0.75)
_WIN = np.hanning(N_FFT).astype(np.float32)


def _running_max(a, width, axis):
    a = np.moveaxis(a, axis, 0)
    out_len = a.shape[0] - width + 1
    m, span = a, 1
    while span * 2 <= width:
        m = np.maximum(m[:-span], m[span:])
        span *= 2
    return np.moveaxis(np.maximum(m[:out_len], m[width - span: width - span + out_len]), 0, axis)


def max_filter(a, ht, hf):
    p = np.pad(a, ((ht, ht), (hf, hf)), mode="edge")
    return _running_max(_running_max(p, 2 * ht + 1, 0), 2 * hf + 1, 1)


def uniform_filter(a, size):
    out = np.asarray(a, np.float64)
    for axis, w in enumerate(size):
        lo, hi = w // 2, (w - 1) // 2
        pad = [(0, 0), (0, 0)]
        pad[axis] = (lo + 1, hi)
        c = np.cumsum(np.pad(out, pad, mode="edge"), axis=axis)
        n = out.shape[axis]
        out = (c[w:w + n] - c[:n]) / w if axis == 0 else (c[:, w:w + n] - c[:, :n]) / w
    return out.astype(np.float32)


def logspec(x, start=0):
    x = x[start:]
    n = 1 + (len(x) - N_FFT) // HOP if len(x) >= N_FFT else 0
    if n <= 0:
        return np.zeros((0, BIN_HI - BIN_LO), np.float32)
    fr = np.lib.stride_tricks.as_strided(x, shape=(n, N_FFT), strides=(x.strides[0] * HOP, x.strides[0]))
    s = np.fft.rfft(fr * _WIN, axis=1)[:, BIN_LO:BIN_HI]
    return np.log(s.real.astype(np.float32) ** 2 + s.imag.astype(np.float32) ** 2 + 1e-7)


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
