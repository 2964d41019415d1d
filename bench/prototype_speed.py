#!/usr/bin/env python3
"""Prototype (issue 19): speed-invariant landmark hashes, in process.

Step 1 (``--extract``) decodes the dev corpus once and caches every
constellation (library tracks at the reference density, clips at the query
density, every frame shift) with sub-bin frequencies and sub-frame times.
Step 2 (default) builds an in-memory index of a hash design, searches the
cached clips and prints per degradation: right track, right place, and
chance answers (unknown clips; library clips with their own track held out).

The peak picking is the shipped one (copied here so the prototype does not
depend on where the package keeps it), plus a parabolic sub-frame time.

The pair key (:class:`Design`) is invariant under a speed change (every
frequency times s, every time over s): ``ln(f_b / f_a)`` and
``ln(f_a * dt)``, plus the anchor's log frequency in 1 % bands. A clip
looks up, for each of its pairs, the bands its anchor can come from over
the speed range searched (and the neighbouring cell where a value sits
near a cell border); each hit says its speed (clip frequency over the
band's), so votes gather in (track, speed, offset) cells; the winning
cell's anchors give the speed (their time slope) and the peaks are counted
at that speed and a few steps either side. Usage (docs/benchmarks.md)::

    python bench/prototype_speed.py --extract          # ~5 min, once
    python bench/prototype_speed.py --held-out --two-pass --min-votes 4 \
        --speed-step 0.01 --check=-0.006,-0.003,0,0.003,0.006 \
        --set band=0.01 dr=0.006 dp=0.04 tol_r=0.003 tol_p=0.015 band_speed=True
"""

from __future__ import annotations

import argparse
import itertools
import math
import pickle
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from prototype_peaks import BIN_HI, BLOCK, FRAME, extract  # noqa: E402

# ---------------------------------------------------------------- step 2

def select(t, f, s, ti, density):
    """The ``density`` most salient peaks a second, per 0.5 s block."""
    per_block = max(1, int(round(density * BLOCK * FRAME)))
    blk = ti // BLOCK
    order = np.lexsort((-s, blk))
    bs = blk[order]
    rank = np.arange(order.size) - np.searchsorted(bs, bs, side="left")
    keep = np.sort(order[rank < per_block])
    return t[keep], f[keep]


class Design:
    """Speed-invariant pair hash: (coarse band of the anchor's log frequency,
    log frequency ratio, log of anchor frequency x time difference)."""

    def __init__(self, ref_density=18, ref_fanout=5, q_fanout=12, dt_min=2.0, dt_max=63.0,
                 r_max=0.7, band=0.16, dr=0.012, dp=0.06, tol_r=0.004, tol_p=0.02,
                 s_max=1.085, ref_frac=True, time_frac=True, q_density=50, band_speed=False, fold=0):
        self.__dict__.update(locals())
        del self.__dict__["self"]

    def pairs(self, t, f, fanout, lo, hi):
        n = t.size
        look = 4 * fanout
        i = np.arange(n)[:, None]
        j = i + np.arange(1, look + 1)[None, :]
        inside = j < n
        j = np.where(inside, j, n - 1)
        dt = t[j] - t[i]
        r = np.log(f[j] / f[i])
        ok = inside & (dt >= lo) & (dt <= hi) & (np.abs(r) <= self.r_max)
        ok &= np.cumsum(ok, axis=1) <= fanout
        ii, kk = np.nonzero(ok)
        return ii, j[ii, kk]

    def invariants(self, t, f, a, b):
        r = np.log(f[b] / f[a])
        p = np.log(f[a] * (t[b] - t[a]))
        return r, p

    def key(self, band, qr, qp):
        k = (band.astype(np.int64) << 24) | ((qr.astype(np.int64) + 2048) << 12) | (qp.astype(np.int64) + 2048)
        if self.fold:
            # fold into ``fold`` bits (today's HASH_BITS is 23) by
            # multiplicative hashing: collisions only add chance hits
            k = ((k.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(64 - self.fold)).astype(np.int64)
        return k

    def ref(self, tr):
        t, f = select(tr["t"], tr["f"], tr["s"], tr["ti"], self.ref_density)
        if not self.time_frac:
            t = np.rint(t)
        if not self.ref_frac:
            f = np.rint(f)
        a, b = self.pairs(t, f, self.ref_fanout, self.dt_min, self.dt_max)
        r, p = self.invariants(t, f, a, b)
        band = np.floor(np.log(f[a]) / self.band)
        k = self.key(band, np.floor(r / self.dr), np.floor(p / self.dp))
        return k, t[a], f[a]

    def query(self, t, f, s_max=None):
        s_max = s_max or self.s_max
        if not self.time_frac:
            t = np.rint(t)
        a, b = self.pairs(t, f, self.q_fanout, self.dt_min / s_max, self.dt_max * s_max)
        r, p = self.invariants(t, f, a, b)
        ent = np.arange(a.size)
        keys, ents = [], []
        lf = np.log(f[a])
        b_lo = np.floor((lf - math.log(s_max)) / self.band)
        b_hi = np.floor((lf + math.log(s_max)) / self.band)
        for band in range(int((b_hi - b_lo).max(initial=0)) + 1):
            bb = b_lo + band
            okb = bb <= b_hi
            for dr, dp in itertools.product((-self.tol_r, self.tol_r), (-self.tol_p, self.tol_p)):
                qr, qp = np.floor((r + dr) / self.dr), np.floor((p + dp) / self.dp)
                keys.append(self.key(bb[okb], qr[okb], qp[okb]))
                ents.append(ent[okb])
        k = np.concatenate(keys)
        e = np.concatenate(ents)
        u = unique_sorted((k << 20) | e)  # one key per entry once
        return u >> 20, u & ((1 << 20) - 1), t[a], f[a]


class TripletDesign(Design):
    """Speed-invariant triplet hash: anchor a with two later targets b, c:
    (coarse band of log f_a, log f_b/f_a, log f_c/f_a, (t_b-t_a)/(t_c-t_a),
    log f_a (t_c-t_a))."""

    def __init__(self, ref_fanout=4, q_fanout=10, dtau=0.05, tol_tau=0.015, dr=0.012, dp=0.08,
                 tol_p=0.03, band=0.16, **kw):
        super().__init__(ref_fanout=ref_fanout, q_fanout=q_fanout, dr=dr, dp=dp, tol_p=tol_p,
                         band=band, **kw)
        self.dtau, self.tol_tau = dtau, tol_tau

    def triplets(self, t, f, fanout, lo, hi):
        a, b = self.pairs(t, f, fanout, lo, hi)
        # every two targets of one anchor, earlier first
        o = np.lexsort((t[b], a))
        a, b = a[o], b[o]
        first = np.searchsorted(a, a, "left")
        rank = np.arange(a.size) - first
        aa, bb, cc = [], [], []
        for k in range(1, fanout):
            sel = rank >= k
            j = np.flatnonzero(sel)
            aa.append(a[j]); cc.append(b[j]); bb.append(b[j - k])
        a, b, c = np.concatenate(aa), np.concatenate(bb), np.concatenate(cc)
        ok = t[c] - t[b] >= 0.5
        return a[ok], b[ok], c[ok]

    def inv3(self, t, f, a, b, c):
        rb = np.log(f[b] / f[a])
        rc = np.log(f[c] / f[a])
        tau = (t[b] - t[a]) / (t[c] - t[a])
        p = np.log(f[a] * (t[c] - t[a]))
        return rb, rc, tau, p

    def key3(self, band, qb, qc, qt, qp):
        k = band.astype(np.int64)
        for q, bits in ((qb, 9), (qc, 9), (qt, 6), (qp, 9)):
            k = (k << bits) | ((q.astype(np.int64) + (1 << (bits - 1))) & ((1 << bits) - 1))
        return k

    def ref(self, tr):
        t, f = select(tr["t"], tr["f"], tr["s"], tr["ti"], self.ref_density)
        a, b, c = self.triplets(t, f, self.ref_fanout, self.dt_min, self.dt_max)
        rb, rc, tau, p = self.inv3(t, f, a, b, c)
        band = np.floor(np.log(f[a]) / self.band)
        k = self.key3(band, np.floor(rb / self.dr), np.floor(rc / self.dr), np.floor(tau / self.dtau),
                      np.floor(p / self.dp))
        return k, t[a], f[a]

    def query(self, t, f, s_max=None):
        s_max = s_max or self.s_max
        a, b, c = self.triplets(t, f, self.q_fanout, self.dt_min / s_max, self.dt_max * s_max)
        rb, rc, tau, p = self.inv3(t, f, a, b, c)
        ent = np.arange(a.size)
        lf = np.log(f[a])
        b_lo = np.floor((lf - math.log(s_max)) / self.band)
        b_hi = np.floor((lf + math.log(s_max)) / self.band)
        keys, ents = [], []
        for band in (0, 1):
            bb = b_lo + band
            ok = bb <= b_hi
            for x, y, z, w in itertools.product((-1, 1), repeat=4):
                qb = np.floor((rb + x * self.tol_r) / self.dr)
                qc = np.floor((rc + y * self.tol_r) / self.dr)
                qt = np.floor((tau + z * self.tol_tau) / self.dtau)
                qp = np.floor((p + w * self.tol_p) / self.dp)
                keys.append(self.key3(bb[ok], qb[ok], qc[ok], qt[ok], qp[ok]))
                ents.append(ent[ok])
        k = np.concatenate(keys)
        e = np.concatenate(ents)
        u = unique_sorted((k << 22) | e)
        return u >> 22, u & ((1 << 22) - 1), t[a], f[a]


class Index:
    def __init__(self, design, tracks):
        self.d = design
        ks, ts, fs, ids = [], [], [], []
        for n, tr in enumerate(tracks):
            k, t, f = design.ref(tr)
            ks.append(k); ts.append(t); fs.append(f); ids.append(np.full(k.size, n))
        k = np.concatenate(ks)
        o = np.argsort(k, kind="stable")
        self.k = k[o]
        self.t = np.concatenate(ts)[o]
        self.f = np.concatenate(fs)[o]
        if getattr(design, "band_speed", False):
            # the posting does not keep the anchor's frequency: read the
            # speed from the key's band (its centre), as the index will
            self.f = np.exp((np.floor(np.log(self.f) / design.band) + 0.5) * design.band)
        self.id = np.concatenate(ids)[o]
        self.n_landmarks = k.size
        self.seconds = sum(tr["n"] for tr in tracks) * FRAME
        self.ref_peaks = [select(tr["t"], tr["f"], tr["s"], tr["ti"], design.ref_density) for tr in tracks]

    def hits(self, qk, qe):
        lo = np.searchsorted(self.k, qk, "left")
        hi = np.searchsorted(self.k, qk, "right")
        c = hi - lo
        nz = c > 0
        lo, c, qe = lo[nz], c[nz], qe[nz]
        idx = np.repeat(lo - (np.cumsum(c) - c), c) + np.arange(int(c.sum()))
        return idx, np.repeat(qe, c)


def cover(shifts, speed, n_frames, q_density):
    """Boolean map (ref frame from clip start, bin) of clip peaks at ``speed``."""
    nf = int(np.ceil(n_frames * speed)) + 2
    grid = np.zeros((nf + 2, BIN_HI + 2), bool)
    for t, f, s, ti in shifts.values():
        if q_density < 60:
            t, f = select(t, f, s, ti, q_density)
        tt = np.rint(t * speed).astype(int)
        ff = np.rint(f / speed).astype(int)
        ok = (tt >= 0) & (tt < nf) & (ff >= 0) & (ff < BIN_HI)
        grid[tt[ok] + 1, ff[ok] + 1] = True
    out = np.zeros_like(grid)
    for dt in (-1, 0, 1):
        for df in (-1, 0, 1):
            out[1:-1, 1:-1] |= grid[1 + dt: grid.shape[0] - 1 + dt, 1 + df: grid.shape[1] - 1 + df]
    return out[1:-1, 1:-1]


def seen(index, track, offset, speed, cov):
    t, f = index.ref_peaks[track]
    tt = np.rint(t).astype(int) - int(round(offset))
    ff = np.rint(f).astype(int)
    inside = (tt >= 0) & (tt < cov.shape[0]) & (ff < BIN_HI)
    return int(cov[tt[inside], ff[inside]].sum()), int(inside.sum())


def unique_inverse(a):
    o = np.argsort(a, kind="stable")
    sa = a[o]
    new = np.r_[True, sa[1:] != sa[:-1]]
    inv = np.empty(a.size, np.int64)
    inv[o] = np.cumsum(new) - 1
    return sa[new], inv


def unique_sorted(a):
    sa = np.sort(a)
    return sa[np.r_[True, sa[1:] != sa[:-1]]] if sa.size else sa


SPEED_STEP = 0.004
check_steps = (0.0,)
MIN_VOTES = 5
OFF_STEP = 2.0


def search(index, clip, exclude=(), n_cand=16, min_votes=None, refine=True, speed_step=None, two_pass=False):
    if two_pass:
        first = search1(index, clip, exclude, n_cand, min_votes, refine, speed_step, s_max=1.025)
        if first is not None and first["z"] >= 5.45:
            return first
        wide = search1(index, clip, exclude, n_cand, min_votes, refine, speed_step)
        if wide is None:
            return first
        chance = max(wide["runner_up"], first["runner_up"] if first else 0)
        if first is not None and first["track"] != wide["track"]:
            rejudge(first, max(first["runner_up"], wide["seen"]))
            chance = max(chance, first["seen"])
        rejudge(wide, chance)
        return wide if first is None or wide["z"] > first["z"] else first
    return search1(index, clip, exclude, n_cand, min_votes, refine, speed_step)


def rejudge(m, ru):
    m["runner_up"] = ru
    m["z"] = (m["seen"] - ru) / math.sqrt(ru + 1)


def search1(index, clip, exclude=(), n_cand=16, min_votes=None, refine=True, speed_step=None, s_max=None,
            return_cands=False):
    speed_step = speed_step or SPEED_STEP
    s_max = s_max or index.d.s_max
    min_votes = min_votes or MIN_VOTES
    d = index.d
    t, f, s, ti = clip["shifts"][0.0]
    t, f = select(t, f, s, ti, d.q_density)
    if t.size < 3:
        return None
    qk, qe, qt, qf = d.query(t, f, s_max)
    idx, ent = index.hits(qk, qe)
    if idx.size == 0:
        return None
    trk = index.id[idx]
    if exclude:
        keep = ~np.isin(trk, list(exclude))
        idx, ent, trk = idx[keep], ent[keep], trk[keep]
    sp = qf[ent] / index.f[idx]
    ok = np.abs(np.log(sp)) <= math.log(s_max)
    idx, ent, trk, sp = idx[ok], ent[ok], trk[ok], sp[ok]
    off = index.t[idx] - qt[ent] * sp
    cs = np.floor(np.log(sp) / speed_step).astype(np.int64)
    co = np.floor(off / OFF_STEP).astype(np.int64)
    # votes per (track, speed cell, offset cell), with the 2x2 neighbourhood
    best = {}
    anchor = np.rint(qt[ent] * 2).astype(np.int64)
    for dsc in (0, -1):
        for doc in (0, -1):
            kk = (trk.astype(np.int64) << 40) | ((cs + dsc + 512) << 28) | (co + doc + (1 << 27))
            u, inv = unique_inverse(kk)
            # distinct clip anchors per cell
            ua = unique_sorted((inv.astype(np.int64) << 24) | anchor)
            votes = np.bincount(ua >> 24, minlength=u.size)
            for j in np.argsort(-votes)[:400]:
                tr = int(u[j] >> 40)
                if votes[j] > best.get(tr, (0,))[0]:
                    best[tr] = (int(votes[j]), int(u[j]))
    ranked = sorted(best.items(), key=lambda kv: -kv[1][0])[:n_cand]
    cands = []
    for tr, (v, cellkey) in ranked:
        if v < min_votes:
            continue
        sc = ((cellkey >> 28) & 0xFFF) - 512
        oc = (cellkey & ((1 << 28) - 1)) - (1 << 27)
        m = (trk == tr) & (cs >= sc) & (cs <= sc + 1) & (co >= oc) & (co <= oc + 1)
        speed = float(np.exp(np.median(np.log(sp[m]))))
        tq, tr_ = qt[ent[m]], index.t[idx[m]]
        if refine and np.ptp(tq) > 40 and m.sum() >= 4:
            # the speed read back from the match: the slope of reference
            # time against clip time over the voting anchors
            slope = np.polyfit(tq, tr_, 1)[0]
            if abs(slope / speed - 1) < 0.01:
                speed = float(slope)
        offset = float(np.median(tr_ - tq * speed))
        cands.append(dict(track=tr, votes=v, speed=speed, offset=offset, ents=set(ent[m].tolist())))
    if not cands:
        return None
    covs = {}
    for c in cands:
        best_seen = None
        # the speed is checked in verification: the peaks are counted at
        # the read-back speed and a step either side
        for ds in check_steps:
            sk = round(c["speed"] * (1 + ds), 4)
            if sk not in covs:
                covs[sk] = cover(clip["shifts"], sk, clip["n"], 50)
            sc = seen(index, c["track"], c["offset"] - (clip["n"] / 2) * (sk - c["speed"]), sk, covs[sk])
            if best_seen is None or sc[0] > best_seen[0]:
                best_seen, c["vspeed"] = sc, sk
        c["seen"], c["span"] = best_seen
    cands.sort(key=lambda c: (-c["seen"], -c["votes"]))
    if return_cands:
        return cands
    top = cands[0]
    cands = [top] + [c for c in cands[1:] if c["track"] != top["track"]]
    ru = 0.2 * top["span"]
    for c in cands[1:]:
        # a candidate matched by the same clip pairs is the same recording
        # filed twice, not a rival
        if c["seen"] > ru and len(top["ents"] & c["ents"]) < 0.3 * len(c["ents"]):
            ru = c["seen"]
    z = (top["seen"] - ru) / math.sqrt(ru + 1)
    return dict(top, z=z, runner_up=ru, hits=int(idx.size))


def exact_keys(ti, fi, fanout):
    """Today's 23-bit hash (anchor bin | bin difference | frame difference)
    of integer peaks, and the anchors' frames: the baseline the survival
    numbers are compared with."""
    n = ti.size
    i = np.arange(n)[:, None]
    j = i + np.arange(1, 4 * fanout + 1)[None, :]
    inside = j < n
    j = np.where(inside, j, n - 1)
    dt = ti[j] - ti[i]
    df = fi[j] - fi[i]
    ok = inside & (dt >= 1) & (dt <= 63) & (np.abs(df) <= 127)
    ok &= np.cumsum(ok, axis=1) <= fanout
    a, kk = np.nonzero(ok)
    b = j[a, kk]
    return (fi[a] << 14) | ((fi[b] - fi[a] + 128) << 6) | (ti[b] - ti[a]), ti[a].astype(float)


def find_copies(tracks):
    """Tracks filed twice (most of their peaks shared): either is a right answer."""
    sets = [set(zip(t["ti"].tolist(), np.rint(t["f"]).astype(int).tolist())) for t in tracks]
    copies = defaultdict(set)
    for i in range(len(tracks)):
        for j in range(i + 1, len(tracks)):
            if abs(tracks[i]["n"] - tracks[j]["n"]) < 40:
                if len(sets[i] & sets[j]) > 0.5 * min(len(sets[i]), len(sets[j])):
                    copies[i].add(j)
                    copies[j].add(i)
    return copies


def run(args):
    with open(args.cache, "rb") as fh:
        data = pickle.load(fh)
    tracks = data["tracks"]
    kw = {kv.split("=")[0]: eval(kv.split("=")[1]) for kv in args.set}
    d = TripletDesign(**kw) if args.triplets else Design(**kw)
    global check_steps, MIN_VOTES
    MIN_VOTES = args.min_votes
    check_steps = tuple(float(x) for x in args.check.split(","))
    t0 = time.time()
    index = Index(d, tracks)
    pos = {tr["id"]: n for n, tr in enumerate(tracks)}
    copies = find_copies(tracks)
    print(f"design {d.__dict__}")
    print(f"index: {index.n_landmarks / index.seconds:.1f} landmarks/s, {np.unique(index.k).size} keys, "
          f"build {time.time() - t0:.1f}s")
    clips = data["clips"]
    kinds = set(args.kinds.split(",")) if args.kinds else None
    rng = np.random.default_rng(0)
    rows = defaultdict(lambda: [0, 0, 0, 0, 0])  # n, track, place, answered-wrong, held-out-answered
    speed_err = defaultdict(list)
    zs_wrong = []
    t0 = time.time()
    n = 0
    dump = open(args.dump, "w") if args.dump else None
    for c in clips:
        kind = c["degradation"]
        if kinds and kind not in kinds:
            continue
        if args.sample and rng.random() > args.sample:
            continue
        n += 1
        known = c["track_id"] in pos
        label = kind + ("" if known else " (unknown)")
        m = search(index, c, speed_step=args.speed_step, two_pass=args.two_pass)
        row = rows[label]
        row[0] += 1
        if dump is not None:
            dump.write(f"{c['query']} {pos.get(c['track_id'])} " + ("None" if m is None else
                       f"{m['track']} z={m['z']:.2f} seen={m['seen']} span={m['span']} ru={m['runner_up']:.0f} "
                       f"v={m['votes']} s={m['speed']:.4f} off={m['offset'] * FRAME:.2f}") + "\n")
        ans = m is not None and m["z"] >= args.z
        if known:
            own = {pos[c["track_id"]], *copies.get(pos[c["track_id"]], ())}
            if ans and m["track"] in own:
                row[1] += 1
                if abs(m["offset"] * FRAME - float(c["offset_s"])) <= 1.0:
                    row[2] += 1
                if kind.startswith("speed"):
                    x = float(kind.split("_")[1]) / 100
                    true = 1 + x if x > 0 else 1 / (1 - x)
                    speed_err[kind].append(m["speed"] - true)
            elif ans:
                row[3] += 1
            if args.held_out:
                h = search(index, c, exclude=own, speed_step=args.speed_step, two_pass=args.two_pass)
                if h is not None:
                    zs_wrong.append(h["z"])
                    if h["z"] >= args.z:
                        row[4] += 1
        elif ans:
            row[3] += 1
            zs_wrong.append(m["z"])
        elif m is not None:
            zs_wrong.append(m["z"])
    el = time.time() - t0
    print(f"{n} clips, {1000 * el / max(1, n):.0f} ms/clip")
    print(f"{'kind':28s} {'n':>4s} {'track':>7s} {'place':>7s} {'wrong':>5s} {'heldout':>7s}  speed err p50/max")
    for k in sorted(rows):
        r = rows[k]
        e = np.abs(speed_err.get(k, [0]))
        print(f"{k:28s} {r[0]:4d} {100 * r[1] / r[0]:6.1f}% {100 * r[2] / r[0]:6.1f}% {r[3]:5d} {r[4]:7d}"
              f"  {np.median(e):.4f}/{e.max():.4f}")
    tot = sum(r[0] for k, r in rows.items())
    wrong = sum(r[3] + r[4] for r in rows.values())
    if zs_wrong:
        zw = np.sort(zs_wrong)
        print(f"chance trials {len(zw)}: z p50 {np.median(zw):.2f} p99 {np.percentile(zw, 99):.2f} max {zw[-1]:.2f};"
              f" wrong answers {wrong}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", nargs="?", default="/tmp/soundslike-dev-corpus")
    ap.add_argument("--cache", default="/tmp/protoG/peaks.pkl")
    ap.add_argument("--extract", action="store_true", help="decode the corpus and cache its peaks")
    ap.add_argument("--ref-density", type=int, default=30, help="(--extract) reference peaks kept a second")
    ap.add_argument("--query-density", type=int, default=60, help="(--extract) clip peaks kept a second")
    ap.add_argument("--set", nargs="*", default=[], help="design parameters, name=value (see Design)")
    ap.add_argument("--triplets", action="store_true", help="triplet keys instead of pair keys")
    ap.add_argument("--kinds", default="", help="only these degradations (comma-separated)")
    ap.add_argument("--sample", type=float, default=0.0, help="search this share of the clips")
    ap.add_argument("--held-out", action="store_true",
                    help="also search each library clip with its own track (and copies) left out")
    ap.add_argument("--z", type=float, default=2.64, help="evidence needed to answer (confidence 0.5)")
    ap.add_argument("--two-pass", action="store_true", help="+-2.5%% first, +-8.5%% when not conclusive")
    ap.add_argument("--speed-step", type=float, default=0.004, help="speed cell of the votes (log)")
    ap.add_argument("--check", default="0", help="relative speed steps tried in verification")
    ap.add_argument("--min-votes", type=int, default=5)
    ap.add_argument("--dump", help="per-clip results here")
    args = ap.parse_args()
    Path(args.cache).parent.mkdir(parents=True, exist_ok=True)
    if args.extract:
        extract(Path(args.corpus), Path(args.cache), args.ref_density, args.query_density)
    else:
        run(args)
