#!/usr/bin/env python3
"""What the same-recording check costs an import in a large library, and
whether it still links the copies of a recording.

Usage::

    python bench/fingerprint_scale.py --sizes 100000 --work /tmp/fps100k   # an index to stand in for a library
    python bench/same_recording.py [CORPUS_DIR] --work /tmp/fps100k [--tracks 2]

After every batch an import stores, each new track is checked for other
copies of its recording (``FingerprintIndex.same_recording``: the same
master re-encoded, copied or trimmed). This bench works on a copy of the
index under ``--work`` (links to its files, so the index itself is not
changed): it adds, for each of the first ``--tracks`` real tracks of the
dev corpus, a full copy, an MP3 re-encode at 96 kbit/s and an excerpt of
its middle 60%, then prints for every one of them and for the original
the items found and the time of the check (twice: the first from the
page cache as the copy left it, the second warm), and the time for a
sample of the synthetic tracks, which have no copy.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from beetsplug.soundslike.audio import decode  # noqa: E402
from beetsplug.soundslike.fingerprint import FingerprintIndex  # noqa: E402
from beetsplug.soundslike.fingerprint import landmarks as fp  # noqa: E402
from beetsplug.soundslike.fingerprint.local.format import MANIFEST  # noqa: E402

SR = 16000
#: Item ids of the added copies: COPIES + 10 * track + 1, 2, 3.
COPIES = 7_000_000
#: Synthetic tracks of ``bench/fingerprint_scale.py`` start here.
SYNTHETIC = 1_000_000


def linked_copy(index: Path, into: Path) -> None:
    """A copy of the index at ``index`` whose segment files are links:
    writes add files and replace the manifest, never change a file."""
    into.mkdir(parents=True)
    for name in os.listdir(index):
        if name == "LOCK":
            continue
        if name == MANIFEST:
            shutil.copy(index / name, into / name)
        else:
            os.symlink(os.path.realpath(index / name), into / name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", nargs="?", default="/tmp/soundslike-dev-corpus")
    ap.add_argument("--work", default="/tmp/fpscale")
    ap.add_argument("--tracks", type=int, default=2)
    ap.add_argument("--synthetic", type=int, default=8, help="synthetic tracks timed")
    args = ap.parse_args()
    corpus = Path(args.corpus)
    rows = [r for r in csv.DictReader(open(corpus / "tracks.csv")) if r["in_library"] == "1"]
    scratch = Path(tempfile.mkdtemp(prefix="same-recording-"))
    try:
        linked_copy(Path(args.work) / "index", scratch / "index")
        index = FingerprintIndex(scratch / "index")
        checked = []
        for k in range(args.tracks):
            path = corpus / rows[k]["file"]
            x = decode(path, sample_rate=SR).samples
            mp3 = scratch / "copy.mp3"
            subprocess.run(["ffmpeg", "-v", "quiet", "-y", "-i", str(path), "-b:a", "96k", str(mp3)], check=True)
            copies = {"full copy": x, "mp3 96k": decode(mp3, sample_rate=SR).samples,
                      "middle 60%": x[int(x.size * 0.2): int(x.size * 0.8)]}
            checked.append((f"track {k + 1}", k + 1))
            for j, (name, y) in enumerate(copies.items(), start=1):
                index.add_landmarks(COPIES + 10 * k + j, fp.reference_landmarks(y, SR))
                checked.append((f"track {k + 1}, {name}", COPIES + 10 * k + j))
        index.flush()
        n = len(index)
        print(f"{n} tracks ({index.stats()['segments']} segments); same_recording per track:")
        print("| item | found | ms (as cached) | ms (warm) |")
        print("| --- | --- | --- | --- |")
        for label, item in checked:
            times = []
            for _ in range(2):
                started = time.perf_counter()
                found = index.same_recording(item)
                times.append(1000 * (time.perf_counter() - started))
            print(f"| {label} | {json.dumps(found)} | {times[0]:.0f} | {times[1]:.0f} |")
        rng = np.random.default_rng(1)
        synthetic = [i for i in rng.choice(n, size=args.synthetic * 4, replace=False).tolist()
                     if index.landmarks(SYNTHETIC + i) is not None][: args.synthetic]
        warm, linked = [], 0
        for i in synthetic:
            index.same_recording(SYNTHETIC + i)
            started = time.perf_counter()
            linked += bool(index.same_recording(SYNTHETIC + i))
            warm.append(1000 * (time.perf_counter() - started))
        if warm:
            print(f"{len(warm)} synthetic tracks (no copy; {linked} linked to any): "
                  f"warm p50 {np.median(warm):.0f} ms, max {max(warm):.0f} ms")
        index.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
