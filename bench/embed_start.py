#!/usr/bin/env python3
"""What a process pays before its first vector: the model loaded through
transformers, or its cached int8 export opened from its record
(beetsplug/soundslike/onnxcache.py).

For each architecture (random weights: the cost does not depend on them),
the model is exported once; then fresh processes, alternating, each make
the plugin's ``Embedder`` (``runtime: auto`` on the CPU, the export cache
beside it) and embed one 60 s track (3 excerpts of 10 s), with the
record in place ("record") and with the records removed before the start
("no record": every earlier version's path, which loads the model and
then opens the same export). Printed per architecture and path: the
median seconds from the process's start to its first vector, the peak
RSS (VmHWM), and whether torch was imported; and how far the two paths'
vectors differ.

Usage: python bench/embed_start.py [--models large,base] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, ROOT)

CHILD = """
import json, sys, time
import numpy as np
sys.path.insert(0, {scripts!r})
import gen_audio
from beetsplug.soundslike.embedder import Embedder
from beetsplug.soundslike.settings import DEFAULTS, ModelSpec
spec = ModelSpec({folder!r}, int(DEFAULTS["layer"]), "mean")
embedder = Embedder(spec, device="auto", runtime="auto", cache_dir={cache!r},
                    excerpts=int(DEFAULTS["excerpts"]),
                    excerpt_seconds=float(DEFAULTS["excerpt_seconds"]))
track = gen_audio.piece(3, 60.0, rate=16000).astype(np.float32)
vector = embedder.embed(track)
with open("/proc/self/status") as status:
    peak = next(int(l.split()[1]) for l in status if l.startswith("VmHWM:"))
print(json.dumps({{"vector": vector.tolist(), "peak_mb": peak / 1024,
                  "torch": "torch" in sys.modules, "runtime": embedder.runtime}}))
"""


def one_run(folder: str, cache: Path) -> tuple[float, dict]:
    code = CHILD.format(scripts=os.path.join(ROOT, "scripts"), folder=folder, cache=str(cache))
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(out.stderr[-2000:])
    return wall, json.loads(out.stdout.strip().splitlines()[-1])


def bench_arch(arch: str, tmp: str, runs: int) -> None:
    from embed import build

    import numpy as np

    folder = build(arch, os.path.join(tmp, arch))
    cache = Path(tmp) / f"onnx-{arch}"
    first, _ = one_run(folder, cache)  # exports, writes the record
    print(f"{arch}: first run (export included) {first:.1f} s")
    results: dict[str, list] = {"record": [], "no record": []}
    for k in range(2 * runs):
        path = ("record", "no record")[(k + k // 2) % 2]
        if path == "no record":
            shutil.rmtree(cache / "records", ignore_errors=True)
        results[path].append(one_run(folder, cache))
    vectors = {}
    for path, rows in results.items():
        walls = [wall for wall, _ in rows]
        info = rows[-1][1]
        vectors[path] = np.array(info["vector"])
        print(f"  {path:>9}: {statistics.median(walls):.2f} s to the first vector "
              f"(min {min(walls):.2f}, max {max(walls):.2f}, {len(walls)} runs), "
              f"peak RSS {statistics.median(r['peak_mb'] for _, r in rows):.0f} MB, "
              f"torch imported: {info['torch']}, runtime {info['runtime']}")
    cosine = float(vectors["record"] @ vectors["no record"])
    print(f"  the two paths' vectors: cosine {cosine:.7f}, "
          f"largest difference {float(np.abs(vectors['record'] - vectors['no record']).max()):.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="large,base")
    parser.add_argument("--runs", type=int, default=5, help="runs of each path")
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores, load {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="soundslike-embed-start-") as tmp:
        for arch in args.models.split(","):
            bench_arch(arch, tmp, args.runs)


if __name__ == "__main__":
    main()
