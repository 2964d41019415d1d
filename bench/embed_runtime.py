#!/usr/bin/env python3
"""The model runtimes side by side: speed, agreement with torch float32,
memory.

For the default model's architecture (wav2vec2-large-xlsr-53: 24 layers,
1024 wide) and wav2vec2-base, random weights (speed does not depend on the
weights; none can be downloaded here), truncated at the default ``layer``
with the plugin's pooling, this embeds ``--tracks`` generated pieces (the
plugin's real work per track: 3 excerpts x 10 s at 16 kHz, batches of 8
excerpts) with each runtime:

* torch float32: today's path, the reference;
* torch int8: ``quantize: yes`` (torch dynamic quantisation);
* ONNX Runtime float32: the export with graph optimisations, not quantised;
* ONNX Runtime int8: ``runtime: onnx`` (what ``auto`` picks on a CPU).

The runtimes are interleaved, four tracks at a time, so that load from
other jobs hits them alike; torch int8 and ONNX float32 run only the first
``--all-tracks`` (8), torch float32 and ONNX int8 every track. Printed per runtime: seconds per track (median
of the 4-track chunks), the speed-up over torch float32, the lowest cosine
of a track's vector against torch float32's, the agreement of each track's
10 nearest neighbours (min and mean of the 10), and the peak RSS of a fresh
process that loads the runtime and embeds 4 tracks. Then ``beet embed``'s
steady state (``Indexer.run`` over mp3s into a real store, decoding
overlapping the model) for torch float32 and ONNX int8, interleaved.

Usage: python bench/embed_runtime.py [--models large,base] [--tracks 50]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, ROOT)

import gen_audio  # noqa: E402
from embed import build, indexer_seconds_per_track  # noqa: E402

from beetsplug.soundslike.embedder import Embedder  # noqa: E402
from beetsplug.soundslike.runtime import prepare  # noqa: E402
from beetsplug.soundslike.settings import DEFAULTS, ModelSpec  # noqa: E402

LAYER = int(DEFAULTS["layer"])
EXCERPTS = int(DEFAULTS["excerpts"])
SECONDS = float(DEFAULTS["excerpt_seconds"])
BATCH = int(DEFAULTS["batch_size"])
RUNTIMES = ("torch float32", "torch int8", "onnx float32", "onnx int8")
#: The reference and the adopted path run every track; the others the first
#: --all-tracks (their speed is what is asked of them).
MAIN = ("torch float32", "onnx int8")


def make_embedder(folder: str, runtime: str, cache: Path) -> Embedder:
    spec = ModelSpec(folder, LAYER, "mean")
    options = dict(device="cpu", excerpts=EXCERPTS, excerpt_seconds=SECONDS)
    if runtime == "torch float32":
        return Embedder(spec, **options)
    if runtime == "torch int8":
        return Embedder(spec, quantize=True, **options)
    if runtime == "onnx int8":
        embedder = Embedder(spec, runtime="onnx", cache_dir=cache, **options)
        assert embedder.runtime == "onnx"
        return embedder
    embedder = Embedder(spec, **options)  # onnx float32: the same export, unquantised
    embedder.onnx = prepare(
        embedder.model, lambda model, x: model(x).last_hidden_state, spec,
        cache / "float", quantize=False,
    )
    embedder.model = None
    return embedder


def neighbours(vectors: np.ndarray, k: int = 10) -> list[set[int]]:
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    return [set(np.argsort(-row)[:k].tolist()) for row in sims]


def child(folder: str, runtime: str, cache: str) -> None:
    """Peak RSS of a fresh process: load the runtime, embed 8 tracks."""
    embedder = make_embedder(folder, runtime, Path(cache))
    tracks = [gen_audio.piece(seed, 60.0, rate=16000).astype(np.float32) for seed in range(4)]
    embedder.embed_many(tracks, batch_size=BATCH)  # 12 excerpts: batches of 8 and 4
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a child
    # of this (large) process would report the parent's peak.
    with open("/proc/self/status") as status:
        peak = next(int(l.split()[1]) for l in status if l.startswith("VmHWM:"))
    print("MAXRSS_MB", peak / 1024)


def peak_mb(folder: str, runtime: str, cache: Path) -> float:
    result = subprocess.run(
        [sys.executable, __file__, "--child", folder, runtime, str(cache)],
        capture_output=True, text=True,
    )
    lines = [l for l in result.stdout.splitlines() if l.startswith("MAXRSS_MB")]
    if not lines:
        print(result.stderr[-2000:], file=sys.stderr)
        return float("nan")
    return float(lines[-1].split()[1])


def loadavg() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def bench_arch(arch: str, tmp: str, tracks: list[np.ndarray], mp3: str, args) -> list:
    folder = build(arch, os.path.join(tmp, arch))
    cache = Path(tmp) / f"onnx-{arch}"
    # The first ONNX run exports and caches (what a user's first 'beet embed'
    # does once); time it here, before the timed runs.
    started = time.perf_counter()
    embedders = {}
    for runtime in RUNTIMES:
        t0 = time.perf_counter()
        embedders[runtime] = make_embedder(folder, runtime, cache)
        print(f"{arch}: {runtime} ready in {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"{arch}: all runtimes ready in {time.perf_counter() - started:.0f} s, "
          f"load {loadavg()}", flush=True)
    for embedder in embedders.values():  # warm up
        embedder.embed_many(tracks[:1], batch_size=BATCH)

    vectors = {r: [] for r in RUNTIMES}
    chunk_s = {r: [] for r in RUNTIMES}
    loads = []
    for start in range(0, len(tracks), 4):
        chunk = tracks[start:start + 4]
        order = RUNTIMES if start < args.all_tracks else MAIN
        order = order if (start // 4) % 2 == 0 else tuple(reversed(order))
        for runtime in order:
            t0 = time.perf_counter()
            vectors[runtime].extend(embedders[runtime].embed_many(chunk, batch_size=BATCH))
            chunk_s[runtime].append((time.perf_counter() - t0) / len(chunk))
        loads.append(os.getloadavg()[0])
        print(f"{arch}: {start + len(chunk)}/{len(tracks)} tracks, "
              + ", ".join(f"{r} {chunk_s[r][-1]:.2f}" for r in order)
              + f" s/track, load {loads[-1]:.1f}", flush=True)

    reference = np.stack(vectors["torch float32"])
    ref_nn = neighbours(reference)
    rows = []
    for runtime in RUNTIMES:
        if not vectors[runtime]:  # --all-tracks 0: only the reference and ONNX int8
            continue
        mine = np.stack(vectors[runtime])
        cosines = np.sum(mine * reference[:len(mine)], axis=1)
        if len(mine) == len(reference):
            agree = [len(a & b) for a, b in zip(neighbours(mine), ref_nn)]
        else:  # neighbours among the tracks this runtime embedded
            agree = [len(a & b) for a, b in zip(neighbours(mine), neighbours(reference[:len(mine)]))]
        rows.append(dict(
            arch=arch, runtime=runtime, s=float(np.median(chunk_s[runtime])),
            cos_min=float(cosines.min()), nn_min=min(agree), nn_mean=float(np.mean(agree)),
            tracks=len(mine),
        ))
    for row in rows:  # against torch float32 on the same chunks
        same = chunk_s["torch float32"][:len(chunk_s[row["runtime"]])]
        row["speedup"] = float(np.median(same)) / row["s"]
    embedders.clear()

    if not args.no_memory:
        for row in rows:
            row["rss"] = peak_mb(folder, row["runtime"], cache)
            print(f"{arch}: {row['runtime']} peak RSS {row['rss']:.0f} MB", flush=True)

    if args.run_tracks:
        embed_s = {"torch float32": [], "onnx int8": []}
        for _ in range(args.rounds):
            for runtime in embed_s:
                embedder = make_embedder(folder, runtime, cache)
                model_phase, _ = indexer_seconds_per_track(embedder, mp3, tmp, args.run_tracks)
                embed_s[runtime].append(model_phase)
                del embedder
        for row in rows:
            if row["runtime"] in embed_s:
                row["beet_embed"] = min(embed_s[row["runtime"]])
        print(f"{arch}: beet embed s/track " + ", ".join(
            f"{r} {min(v):.2f}" for r, v in embed_s.items()) + f", load {loadavg()}", flush=True)
    for row in rows:
        row["load"] = f"{min(loads):.1f}-{max(loads):.1f}"
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:5])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="large,base")
    parser.add_argument("--tracks", type=int, default=50)
    parser.add_argument("--track-seconds", type=float, default=60.0)
    parser.add_argument("--run-tracks", type=int, default=4,
                        help="tracks per beet embed steady-state run (0: skip)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--all-tracks", type=int, default=8,
                        help="tracks every runtime embeds (the rest: torch float32 and onnx int8)")
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args()

    import onnxruntime
    import torch

    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime "
          f"{onnxruntime.__version__}, {os.cpu_count()} cores, load {loadavg()}; layer "
          f"{LAYER}, {EXCERPTS} x {SECONDS:.0f} s excerpts, batches of {BATCH}", flush=True)
    tracks = [gen_audio.piece(seed, args.track_seconds, rate=16000).astype(np.float32)
              for seed in range(args.tracks)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        mp3 = gen_audio.write(gen_audio.piece(1, 240.0), os.path.join(tmp, "track.mp3"))
        for arch in args.models.split(","):
            rows += bench_arch(arch, tmp, tracks, mp3, args)

    print()
    print("| model | runtime | s/track (model) | speed-up | beet embed s/track | tracks | "
          "min cosine vs torch f32 | top-10 agreement min / mean | peak RSS MB | load |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        embed = f"{r['beet_embed']:.2f}" if "beet_embed" in r else ""
        rss = f"{r['rss']:.0f}" if "rss" in r else ""
        top = f"{r['nn_min']} / {r['nn_mean']:.1f}" if r["tracks"] > 10 else "n/a"
        print(f"| {r['arch']} | {r['runtime']} | {r['s']:.2f} | {r['speedup']:.2f}x | {embed} | "
              f"{r['tracks']} | "
              f"{r['cos_min']:.4f} | {top} | {rss} | {r['load']} |")
    print("targets: large <= 2.3 s/track and 3x torch float32; base <= 1.2 s; cosine >= 0.995; "
          "top-10 >= 9 of 10; peak RSS <= 1.3x torch float32")


if __name__ == "__main__":
    main()
