#!/usr/bin/env python3
"""Seconds per track of the plugin's embedding pipeline on this machine.

For a 4-minute track (generated music, encoded to mp3) this prints, for the
default model's architecture (wav2vec2-large-xlsr-53: 24 layers, 1024 wide)
and for the wav2vec2-base architecture, with random weights (speed does not
depend on the weights, and none can be downloaded here):

* pipeline s/track: decode + excerpt choice + model + pooling for one
  track on its own (decode not overlapped);
* beet embed s/track: the steady state of ``beet embed``'s own code
  (``Indexer.run`` over several tracks into a real store: decoding the next
  track overlaps the model; fingerprints off, they are not embedding);
* bare forward s: the same model called once on the same excerpt batch;
* ratio pipeline / bare forward (target <= 1.10);
* full-depth forward s: the model with all its layers, to show what
  truncating above ``layer`` saves;
* an int8 row (``quantize: yes``) with the cosine between int8 and float
  vectors of the same track.

Usage: python bench/embed.py [--models large,base] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, ROOT)

import gen_audio  # noqa: E402

from beetsplug.soundslike.audio import SAMPLE_RATE, decode, pick_excerpts  # noqa: E402
from beetsplug.soundslike.embedder import Embedder  # noqa: E402
from beetsplug.soundslike.settings import DEFAULTS, ModelSpec  # noqa: E402

ARCHITECTURES = {
    # facebook/wav2vec2-large-xlsr-53 (the default model)
    "large": dict(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
        intermediate_size=4096, do_stable_layer_norm=True,
        feat_extract_norm="layer", conv_bias=True,
    ),
    # facebook/wav2vec2-base
    "base": dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, do_stable_layer_norm=False,
        feat_extract_norm="group", conv_bias=False,
    ),
}


def build(arch: str, folder: str) -> str:
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(0)
    model = Wav2Vec2Model(Wav2Vec2Config(**ARCHITECTURES[arch]))
    model.save_pretrained(folder)
    Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(folder)
    return folder


def timed(fn, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="large,base")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--track-seconds", type=float, default=240.0)
    parser.add_argument("--no-int8", action="store_true")
    parser.add_argument("--run-tracks", type=int, default=4)
    args = parser.parse_args()

    import torch

    layer = int(DEFAULTS["layer"])
    excerpts = int(DEFAULTS["excerpts"])
    seconds = float(DEFAULTS["excerpt_seconds"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cores; defaults: layer {layer}, "
          f"{excerpts} x {seconds:.0f} s excerpts")

    with tempfile.TemporaryDirectory() as tmp:
        track = os.path.join(tmp, "track.mp3")
        gen_audio.write(gen_audio.piece(1, args.track_seconds), track)
        decode_s, audio = timed(lambda: decode(track, SAMPLE_RATE), args.repeats)
        print(f"decode of a {args.track_seconds / 60:.0f}-minute mp3: {decode_s:.3f} s")

        rows = []
        for arch in args.models.split(","):
            folder = build(arch, os.path.join(tmp, arch))
            variants = [("float32", False)]
            if not args.no_int8:
                variants.append(("int8", True))
            reference = None
            for label, quantize in variants:
                embedder = Embedder(
                    ModelSpec(folder, layer, "mean"), device="cpu", quantize=quantize,
                    excerpts=excerpts, excerpt_seconds=seconds,
                )
                batch = np.stack(pick_excerpts(audio.samples, excerpts, seconds))
                embedder.forward(batch)  # warm up

                def pipeline():
                    decoded = decode(track, SAMPLE_RATE)
                    return embedder.embed_many([decoded.samples])[0]

                # Interleaved, best of N: both see the same machine load.
                pipe_s = bare_s = float("inf")
                for _ in range(args.repeats):
                    t, vector = timed(pipeline, 1)
                    pipe_s = min(pipe_s, t)
                    t, _ = timed(lambda: _bare_forward(embedder, batch), 1)
                    bare_s = min(bare_s, t)
                if reference is None:
                    reference = vector
                cosine = float(np.dot(reference, vector))
                run_s = _indexer_seconds_per_track(embedder, track, tmp, args.run_tracks)
                rows.append((arch, label, pipe_s, run_s, bare_s, run_s / bare_s, cosine))
                print(f"{arch:5s} {label:7s} pipeline {pipe_s:6.2f} s/track  "
                      f"beet embed {run_s:6.2f} s/track  bare forward {bare_s:6.2f} s  "
                      f"ratio {run_s / bare_s:.3f}  cos vs float32 {cosine:.4f}", flush=True)
                embedder = None  # free the model before the next variant

            full_s = _full_depth_forward(folder, batch, args.repeats)
            print(f"{arch:5s} full-depth forward (all layers, untruncated): {full_s:.2f} s")

    print()
    print("| model | weights | one track alone s | beet embed s/track | bare forward s "
          "| ratio (beet embed / forward) | cos vs float32 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for arch, label, pipe_s, run_s, bare_s, ratio, cosine in rows:
        print(f"| {arch} | {label} | {pipe_s:.2f} | {run_s:.2f} | {bare_s:.2f} | "
              f"{ratio:.3f} | {cosine:.4f} |")
    print("targets: <= 15 s/track (large), <= 5 s/track (base), ratio <= 1.10")


def _indexer_seconds_per_track(embedder, track: str, tmp: str, count: int) -> float:
    """Seconds per track of ``Indexer.run`` (what ``beet embed`` runs) over
    ``count`` copies of the track, into a real embedded store."""
    import shutil
    from pathlib import Path

    from beetsplug.soundslike.indexer import Indexer
    from beetsplug.soundslike.settings import Settings

    class Track:  # the fields of a beets Item the indexer reads
        def __init__(self, number: int):
            self.id = number
            self.path = os.fsencode(track)
            self.artist = self.title = self.album = self.albumartist = ""
            self.album_id = 0
            self.length = 240.0

    store_dir = Path(tmp) / "store"
    shutil.rmtree(store_dir, ignore_errors=True)
    settings = Settings(
        spec=embedder.spec, device="cpu", quantize=False, excerpts=embedder.excerpts,
        excerpt_seconds=embedder.excerpt_seconds, batch_size=8, store_dir=store_dir,
        url="", api_key="", timeout=10, fingerprint=False, max_fingerprint_seconds=3600,
    )
    indexer = Indexer(settings, lambda: embedder)
    indexer.run([Track(0)])  # opens the store, warms up
    started = time.perf_counter()
    report = indexer.run([Track(n + 1) for n in range(count)], batch_tracks=1)
    elapsed = time.perf_counter() - started
    indexer.close()
    assert report.embedded == count, report
    return elapsed / count


def _bare_forward(embedder, batch: np.ndarray):
    """The configured (truncated) model on the excerpt batch, nothing else."""
    import torch

    inputs = torch.from_numpy(batch)
    with torch.inference_mode():
        return embedder.model(inputs).last_hidden_state


def _full_depth_forward(folder: str, batch: np.ndarray, repeats: int) -> float:
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(folder).eval()
    inputs = torch.from_numpy(batch)
    with torch.inference_mode():
        model(inputs)
        best, _ = timed(lambda: model(inputs).last_hidden_state, repeats)
    return best


if __name__ == "__main__":
    main()
