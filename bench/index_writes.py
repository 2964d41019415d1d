#!/usr/bin/env python3
"""What a library growing by imports costs the fingerprint index's writes.

Usage::

    python bench/index_writes.py [CORPUS_DIR] [--tracks 2000] [--per-write 8] [--work DIR]

Each ``beet import`` stores its tracks' fingerprints a few at a time (4
tracks a write at import, 8 in ``beet embed``), and each write is a new
segment that the index's merges fold into larger ones. This bench adds
synthetic tracks of real constellations (``synthetic_tracks.py``, about
19,000 landmarks each, as the dev corpus's tracks) ``--per-write`` at a
time, through the index's own ``add_landmarks`` and ``flush``, and
prints, every quarter of the way:

* written per track: the tracks' landmarks written to disk (new segments
  and merges), over the tracks added: 1 would be each written once;
* seconds of writing (the writes and their merges) per track, over that
  quarter and the slowest single write;
* the segments, and how many of them hold 4,096 tracks or more (each
  costs a search from a cold page cache about as much as the whole index
  in one segment: docs/benchmarks.md).

The index is built under ``--work`` (removed first).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from beetsplug.soundslike.audio import decode  # noqa: E402
from beetsplug.soundslike.fingerprint import FingerprintIndex  # noqa: E402
from beetsplug.soundslike.fingerprint import landmarks as fp  # noqa: E402
from beetsplug.soundslike.fingerprint.local.format import MANIFEST  # noqa: E402
from beetsplug.soundslike.fingerprint.local.segments import open_segment  # noqa: E402
from synthetic_tracks import fake_track, real_peaks  # noqa: E402

SR = 16000
N_REAL = 8
LARGE = 4096


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", nargs="?", default="/tmp/soundslike-dev-corpus")
    ap.add_argument("--tracks", type=int, default=2000)
    ap.add_argument("--per-write", type=int, default=8)
    ap.add_argument("--work", default="/tmp/index-writes")
    args = ap.parse_args()
    corpus, work = Path(args.corpus), Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rows = [r for r in csv.DictReader(open(corpus / "tracks.csv")) if r["in_library"] == "1"][:N_REAL]
    peaks = [real_peaks(fp.reference_landmarks(decode(corpus / r["file"], sample_rate=SR).samples, SR))
             for r in rows]
    rng = np.random.default_rng(7)
    index = FingerprintIndex(work)
    seen: set[int] = set()
    written = added = 0
    slowest = 0.0
    quarter_s = 0.0
    step = max(1, args.tracks // 4)
    report_at = step
    since = 0
    print(f"{args.tracks} synthetic tracks, {args.per_write} a write:")
    print("| tracks | written per track | write s per track (this quarter) | slowest write s | segments | of 4,096+ tracks |")
    print("| --- | --- | --- | --- | --- | --- |")
    while added < args.tracks:
        batch = [fake_track(rng, peaks) for _ in range(min(args.per_write, args.tracks - added))]
        started = time.perf_counter()
        for lm in batch:
            added += 1
            index.add_landmarks(added, lm)
        index.flush()
        took = time.perf_counter() - started
        quarter_s += took
        since += len(batch)
        slowest = max(slowest, took)
        manifest = json.loads((work / MANIFEST).read_text())
        sizes = {}
        for seq in manifest["segments"]:
            sizes[seq] = len(open_segment(str(work), manifest, seq).item_ids)
            if seq not in seen:
                written += sizes[seq]
        seen |= set(manifest["segments"])
        if added >= report_at or added == args.tracks:
            print(f"| {added} | {written / added:.2f} | {quarter_s / since:.3f} | {slowest:.2f} | "
                  f"{len(sizes)} | {sum(n >= LARGE for n in sizes.values())} |", flush=True)
            quarter_s, since = 0.0, 0
            report_at += step
    index.close()
    print(f"index: {sum(os.path.getsize(work / n) for n in os.listdir(work)) / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
