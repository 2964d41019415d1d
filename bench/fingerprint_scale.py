#!/usr/bin/env python3
"""Identify latency and memory of the fingerprint index at library scale.

Usage::

    python bench/fingerprint_scale.py [CORPUS_DIR] [--sizes 1000,10000] [--work DIR]

Builds an index of a few real tracks of the dev corpus plus synthetic
tracks up to each size, then identifies clips of the real tracks (clean,
pink noise at 5 dB SNR, played 2 % fast and 2 % slow) in a fresh process
per size and prints per kind: found (right track), identify p50/p95 in
that process, and the process's peak RSS and wall time (import + open +
all clips).

Synthetic tracks are made of *real constellations*: 30 s chunks of the real
tracks' peaks, each from a random track, time and pitch shift (+-24 bins),
time-reversed and maybe mirrored in frequency, paired and hashed by
the fingerprint code itself, so posting lists have the
skew of real music whatever the hash layout is (``synthetic_tracks.py``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from beetsplug.soundslike.fingerprint import landmarks as fp  # noqa: E402
from beetsplug.soundslike.fingerprint import spectrum  # noqa: E402
from synthetic_tracks import fake_track, real_peaks  # noqa: E402

SR = 16000
N_REAL = 8

CHILD = r"""
import sys, time, json
t0 = time.perf_counter()
import numpy as np
from beetsplug.soundslike.fingerprint import FingerprintIndex
t_import = time.perf_counter() - t0
d = np.load(sys.argv[2])
index = FingerprintIndex(sys.argv[1])
t_open = time.perf_counter() - t0
out = []
for clip, truth, kind in zip(d["clips"], d["truth"], d["kinds"]):
    t = time.perf_counter()
    m = index.identify(clip, int(d["rate"]))
    out.append((str(kind), int(truth), m.item_id if m else None, time.perf_counter() - t))
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
print(json.dumps(dict(import_s=t_import, open_s=t_open, wall_s=time.perf_counter() - t0,
                      rss_mb=hwm / 1024, results=out)))
"""


def main():
    from beetsplug.soundslike.audio import decode
    from beetsplug.soundslike.fingerprint import FingerprintIndex

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", nargs="?", default="/tmp/soundslike-dev-corpus")
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--work", default="/tmp/fpscale")
    ap.add_argument("--clips", type=int, default=8, help="clips per kind")
    args = ap.parse_args()
    corpus, work = Path(args.corpus), Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rows = [r for r in csv.DictReader(open(corpus / "tracks.csv")) if r["in_library"] == "1"][:N_REAL]
    rng = np.random.default_rng(5)
    audio, peaks, lms = [], [], []
    for r in rows:
        x = decode(corpus / r["file"], sample_rate=SR).samples
        audio.append(x)
        lms.append(fp.reference_landmarks(x, SR))
        peaks.append(real_peaks(lms[-1]))
    clips, truth, kinds = [], [], []
    n = 5 * SR
    for j in range(args.clips):
        k = j % N_REAL
        for _ in range(50):  # a clip of a silent stretch has no right answer
            a = int(rng.uniform(2, len(audio[k]) / SR - 8) * SR)
            c = audio[k][a:a + n]
            frames = c[: n // 1600 * 1600].reshape(-1, 1600)
            if np.mean(np.sqrt(np.mean(frames ** 2, axis=1)) > 1e-3) >= 0.8:
                break
        noise = np.cumsum(rng.standard_normal(n)).astype(np.float32)
        noise -= np.convolve(noise, np.ones(400) / 400, "same")
        noise *= np.sqrt(np.mean(c ** 2) / np.mean(noise ** 2)) / 10 ** (5 / 20)
        for kind, y in (("clean", c), ("pink5dB", c + noise),
                        ("speed+2", spectrum.resample_fft(audio[k][a:a + int(n * 1.02)], n)),
                        ("speed-2", spectrum.resample_fft(audio[k][a:a + int(n * 0.98)], n))):
            clips.append(y.astype(np.float32))
            truth.append(k + 1)
            kinds.append(kind)
    clips_file = work / "clips.npz"
    np.savez(clips_file, clips=np.stack(clips), truth=np.array(truth), kinds=np.array(kinds), rate=SR)

    index = FingerprintIndex(work / "index")
    for k, lm in enumerate(lms):
        index.add_landmarks(k + 1, lm)
    have = N_REAL
    for size in [int(s) for s in args.sizes.split(",")]:
        t0 = time.perf_counter()
        for item in range(have + 1, size + 1):
            index.add_landmarks(1_000_000 + item, fake_track(rng, peaks))
        index.flush()
        have = size
        build_s = time.perf_counter() - t0
        st = index.stats()
        env = dict(os.environ, PYTHONPATH=str(REPO))
        # Twice: the first run warms the page cache, the second is measured.
        for _ in range(2):
            out = subprocess.run([sys.executable, "-c", CHILD, str(work / "index"), str(clips_file)],
                                 capture_output=True, text=True, env=env, check=True).stdout
        res = json.loads(out)
        print(f"{size} tracks: {st['landmarks'] / size:.0f} landmarks/track,"
              f" {st['bytes'] / size / 1024:.0f} KiB/track, {st['segments']} segments, build {build_s:.0f} s;"
              f" identify process: import {res['import_s']:.2f} s, open {res['open_s']:.2f} s,"
              f" wall {res['wall_s']:.2f} s for {len(clips)} clips, peak RSS {res['rss_mb']:.0f} MB")
        for kind in ("clean", "pink5dB", "speed+2", "speed-2"):
            r = [x for x in res["results"] if x[0] == kind]
            lat = np.array([x[3] for x in r]) * 1000
            found = sum(x[1] == x[2] for x in r)
            print(f"  {kind:<8} found {found}/{len(r)}  p50 {np.percentile(lat, 50):6.0f} ms"
                  f"  p95 {np.percentile(lat, 95):6.0f} ms  max {lat.max():6.0f} ms", flush=True)
    index.close()


if __name__ == "__main__":
    main()
