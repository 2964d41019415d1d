"""The clip's speed against each candidate track, read from the
speed-invariant keys they share (:func:`read_speeds`), and the speeds
verification hashes the clip at (:func:`verify_speeds`): a candidate is
verified at its own speed, never at every speed searched.
"""

from __future__ import annotations

import numpy as np

from .arrays import best_per_group, counted
from .landmarks import QueryKeys, landmark_keys
from .params import (
    KEY_BAND,
    SPEED_FIT_MIN_ANCHORS,
    SPEED_FIT_MIN_FRAMES,
    VERIFY_SPEED_GRID,
    VERIFY_SPEED_STEPS,
)
from .voting import hits_in_runs, offset_cells


def read_speeds(qk: QueryKeys, runs) -> list:
    """The clip's speed against each candidate run (item, words, frames),
    read from the keys they share: the hits of the run's best (speed,
    offset) cell give the speed, refined by the slope of reference time
    against clip time when their anchors span enough of the clip; None
    for a run without two hits that agree."""
    hits = hits_in_runs(qk.hashes, [landmark_keys(r[1]) for r in runs], [r[2] for r in runs])
    if hits is None:
        return [None] * len(runs)
    owner, t_ref, entry = hits
    log_speed = np.log(qk.entry_speed[entry].astype(np.float64))
    t_clip = qk.clip_time[entry].astype(np.float64)
    offset = np.rint(t_ref - t_clip * np.exp(log_speed)).astype(np.int64)
    # Votes per (run, speed cell, offset cell), on staggered grids of both;
    # each run keeps its best cell (the first grid's on a tie).
    best = np.ones(len(runs), np.int64)  # a cell needs two hits
    grids: list = []
    chosen: list = [None] * len(runs)  # (grid, key) of each run's best cell
    for stagger in (0.0, 0.5):
        cell = (owner << 12) + np.floor(log_speed / KEY_BAND + stagger).astype(np.int64) + 2048
        for key in offset_cells(cell, offset, bias=1 << 21):
            grids.append(key)
            uk, counts = counted(key)
            run_of = uk >> 34
            for u in best_per_group(run_of, counts):
                r = int(run_of[u])
                if counts[u] > best[r]:
                    best[r], chosen[r] = int(counts[u]), (len(grids) - 1, uk[u])
    out = []
    for r in range(len(runs)):
        if chosen[r] is None:
            out.append(None)
            continue
        grid, key = chosen[r]
        members = grids[grid] == key
        speed = float(np.exp(np.median(log_speed[members])))
        tc, tr = t_clip[members], t_ref[members]
        if tc.size >= SPEED_FIT_MIN_ANCHORS and np.ptp(tc) >= SPEED_FIT_MIN_FRAMES:
            slope = float(np.polyfit(tc, tr, 1)[0])
            if abs(np.log(slope / speed)) <= KEY_BAND:
                speed = slope
        out.append(speed)
    return out


def verify_speeds(speeds: list, always=()) -> tuple[tuple, np.ndarray]:
    """The speeds verification hashes the clip at, and which of them each
    run is verified at: its read-back speed (None: none) and the speeds
    ``always``, each with :data:`.params.VERIFY_SPEED_STEPS` around it, on
    a grid of a quarter of the exact hashes' tolerance, so that
    candidates at nearby speeds share their hashes (and an unaltered clip
    is hashed at 1 exactly). A run is verified at its own speeds only:
    every other speed would be one more look at chance."""
    steps = [[int(round((np.log(s) + step) / VERIFY_SPEED_GRID))
              for s in ([speed] if speed is not None else []) + list(always)
              for step in VERIFY_SPEED_STEPS] for speed in speeds]
    grid = sorted({k for ks in steps for k in ks}, key=abs)
    column = {k: i for i, k in enumerate(grid)}
    allowed = np.zeros((len(speeds), len(grid)), bool)
    for r, ks in enumerate(steps):
        allowed[r, [column[k] for k in ks]] = True
    return tuple(float(np.exp(k * VERIFY_SPEED_GRID)) for k in grid), allowed
