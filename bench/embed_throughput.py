#!/usr/bin/env python3
"""Tracks per minute of ``beet embed`` on this machine, GPU or CPU.

Generates ``--tracks`` distinct 4-minute pieces (mp3), builds the default
model's architecture (wav2vec2-large-xlsr-53, random weights: speed does
not depend on the weights) and runs the code ``beet embed`` runs
(``Indexer.run`` into a real embedded store) over them, with
``device: auto`` (the GPU with fp16 when there is one). Rows:

* beet embed: decode + fingerprint + embed + store, decoders overlapping
  the model (what a user sees; target >= 300 tracks/min on a GPU);
* vectors only: the same without fingerprints;
* decode + fingerprint alone: the CPU side's capacity on its own, with the
  same worker threads (the ceiling a fast GPU runs into);
* model alone: ``embed_many`` on already decoded tracks (the ceiling the
  decoders run into).

Usage: python bench/embed_throughput.py [--tracks 200] [--arch large]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, ROOT)

import gen_audio  # noqa: E402
from embed import build  # noqa: E402

from beetsplug.soundslike.audio import SAMPLE_RATE, decode  # noqa: E402
from beetsplug.soundslike.embedder import Embedder  # noqa: E402
from beetsplug.soundslike.indexer import Indexer, decode_workers  # noqa: E402
from beetsplug.soundslike.settings import DEFAULTS, ModelSpec, Settings  # noqa: E402


class Track:
    """The fields of a beets Item that the indexer reads."""

    def __init__(self, number: int, path: str, seconds: float):
        self.id = number
        self.path = os.fsencode(path)
        self.artist = self.title = self.album = self.albumartist = ""
        self.album_id = 0
        self.length = seconds


def _write_piece(args: tuple[int, float, str]) -> str:
    seed, seconds, path = args
    return gen_audio.write(gen_audio.piece(seed, seconds), path)


def make_tracks(folder: str, count: int, seconds: float) -> list[str]:
    paths = [os.path.join(folder, f"track{n:04d}.mp3") for n in range(count)]
    jobs = [(1000 + n, seconds, p) for n, p in enumerate(paths)]
    with concurrent.futures.ProcessPoolExecutor(os.cpu_count()) as pool:
        return list(pool.map(_write_piece, jobs))


def settings_for(spec: ModelSpec, store_dir: Path, fingerprint: bool) -> Settings:
    return Settings(
        spec=spec, device="auto", quantize=False,
        excerpts=int(DEFAULTS["excerpts"]),
        excerpt_seconds=float(DEFAULTS["excerpt_seconds"]),
        batch_size=int(DEFAULTS["batch_size"]), store_dir=store_dir, url="",
        api_key="", timeout=10, fingerprint=fingerprint,
        max_fingerprint_seconds=3600,
    )


def run_indexer(embedder, paths, seconds, store_dir: Path, fingerprint: bool,
                batch_tracks: int) -> float:
    """Tracks per minute of Indexer.run over ``paths`` (after a warm-up
    track that opens the store and the model)."""
    shutil.rmtree(store_dir, ignore_errors=True)
    settings = settings_for(embedder.spec, store_dir, fingerprint)
    indexer = Indexer(settings, lambda: embedder)
    indexer.run([Track(0, paths[0], seconds)])
    tracks = [Track(n + 1, p, seconds) for n, p in enumerate(paths)]
    started = time.perf_counter()
    report = indexer.run(tracks, batch_tracks=batch_tracks)
    elapsed = time.perf_counter() - started
    indexer.close()
    assert report.embedded == len(tracks), report
    return 60 * len(tracks) / elapsed


def cpu_side(paths: list[str]) -> float:
    """Tracks per minute of decode + fingerprint alone, same thread count."""
    from beetsplug.soundslike.fingerprint import reference_landmarks

    def one(path):
        audio = decode(os.fsencode(path), SAMPLE_RATE)
        reference_landmarks(audio.samples, SAMPLE_RATE)

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(decode_workers()) as pool:
        list(pool.map(one, paths))
    return 60 * len(paths) / (time.perf_counter() - started)


def model_alone(embedder, paths: list[str], batch_tracks: int) -> float:
    decoded = [decode(os.fsencode(p), SAMPLE_RATE).samples for p in paths]
    embedder.embed_many(decoded[:batch_tracks])  # warm up
    started = time.perf_counter()
    for start in range(0, len(decoded), batch_tracks):
        embedder.embed_many(decoded[start:start + batch_tracks],
                            batch_size=int(DEFAULTS["batch_size"]))
    _synchronize(embedder)
    return 60 * len(decoded) / (time.perf_counter() - started)


def _synchronize(embedder) -> None:
    if embedder.device.type == "cuda" and embedder.runtime == "torch":
        embedder._torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=240.0)
    parser.add_argument("--arch", default="large", choices=("large", "base"))
    parser.add_argument("--runtime", default="auto", choices=("auto", "torch", "onnx"),
                        help="soundslike.runtime (auto: ONNX int8 on a CPU, torch on a GPU)")
    parser.add_argument("--batch-tracks", type=int, default=8,
                        help="tracks per model batch (beet embed uses 8)")
    args = parser.parse_args()

    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, {device}; "
          f"{decode_workers()} decode workers; {args.tracks} tracks of "
          f"{args.seconds / 60:.0f} min; {args.arch} architecture", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        paths = make_tracks(tmp, args.tracks, args.seconds)
        print(f"generated the tracks in {time.perf_counter() - started:.0f} s", flush=True)
        folder = build(args.arch, os.path.join(tmp, "model"))
        embedder = Embedder(
            ModelSpec(folder, int(DEFAULTS["layer"]), "mean"), device="auto",
            excerpts=int(DEFAULTS["excerpts"]),
            excerpt_seconds=float(DEFAULTS["excerpt_seconds"]),
            runtime=args.runtime, cache_dir=Path(tmp) / "onnx",
        )
        print(f"model on {embedder.device} ({embedder.dtype}), runtime {embedder.runtime}",
              flush=True)
        store = Path(tmp) / "store"
        rows = [
            ("beet embed (decode + fingerprint + embed + store)",
             run_indexer(embedder, paths, args.seconds, store, True, args.batch_tracks)),
            ("vectors only (no fingerprints)",
             run_indexer(embedder, paths, args.seconds, store, False, args.batch_tracks)),
            ("decode + fingerprint alone", cpu_side(paths)),
            ("model alone (decoded tracks)",
             model_alone(embedder, paths[: min(len(paths), 64)], args.batch_tracks)),
        ]
    print()
    print(f"| {device}, {os.cpu_count()} cores | tracks/min |")
    print("| --- | --- |")
    for label, rate in rows:
        print(f"| {label} | {rate:.0f} |")
    print("target: >= 300 tracks/min with the default model on a GPU")


if __name__ == "__main__":
    main()
