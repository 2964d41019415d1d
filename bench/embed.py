#!/usr/bin/env python3
"""Seconds per track of the plugin's embedding pipeline on this machine.

For a 4-minute track (generated music, encoded to mp3) this prints, for the
default model's architecture (wav2vec2-large-xlsr-53: 24 layers, 1024 wide)
and for the wav2vec2-base architecture, with random weights (speed does not
depend on the weights, and none can be downloaded here), one row per model
path:

* torch float32 (``runtime: torch``): today's path, the reference;
* torch int8 (``runtime: torch`` with ``quantize: yes``);
* ONNX Runtime int8 (``runtime: onnx``, what ``runtime: auto`` picks on a
  CPU where onnxruntime is installed; its one-time export is timed apart).

The columns:

* one track alone s: decode + excerpt choice + model + pooling for one
  track on its own (decode not overlapped);
* beet embed s/track: the steady state of ``beet embed``'s own code in its
  model phase (``Indexer.run`` over ``--run-tracks`` tracks, by default
  one batch of ``beet embed``'s: 8 tracks, their excerpts run 8 at a time
  (``batch_size``), into a real store with the row's runtime setting,
  after the fingerprint phase has read each file whole and chosen its
  excerpts, as ``beet embed`` runs them: only the excerpts are decoded,
  overlapping the model; the fingerprint phase is not embedding, and is
  timed apart);
* speed-up: torch float32's beet embed s/track over the row's, same run;
* bare forward s: the same model called once on the same excerpt batch;
* ratio beet embed / bare forward (target <= 1.10);
* cos vs float32: the row's vector of the track against torch float32's.

The paths run interleaved, round by round (the order reversed every other
round), best of ``--repeats`` rounds, so that load from other jobs hits
them alike. After the rows: the full-depth forward (all layers), to show
what truncating above ``layer`` saves.

Usage: python bench/embed.py [--models large,base] [--repeats 3]
       [--no-int8] [--no-onnx]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, ROOT)

import gen_audio  # noqa: E402

from beetsplug.soundslike.audio import SAMPLE_RATE, decode, pick_excerpts  # noqa: E402
from beetsplug.soundslike.commands.embed import BATCH_TRACKS  # noqa: E402
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


#: (label, runtime setting, quantize) of the paths compared; the first is
#: the reference of the speed-ups and cosines.
PATHS = (
    ("torch float32", "torch", False),
    ("torch int8", "torch", True),
    ("onnx int8", "onnx", True),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="large,base")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--track-seconds", type=float, default=240.0)
    parser.add_argument("--no-int8", action="store_true", help="skip torch int8")
    parser.add_argument("--no-onnx", action="store_true", help="skip ONNX Runtime int8")
    parser.add_argument("--run-tracks", type=int, default=BATCH_TRACKS,
                        help="tracks of the beet embed column (one batch of beet embed's)")
    args = parser.parse_args()

    import torch

    layer = int(DEFAULTS["layer"])
    excerpts = int(DEFAULTS["excerpts"])
    seconds = float(DEFAULTS["excerpt_seconds"])
    ort = ""
    if not args.no_onnx:
        import onnxruntime

        ort = f", onnxruntime {onnxruntime.__version__}"
    print(f"torch {torch.__version__}{ort}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cores, load {_loadavg()}; defaults: layer {layer}, "
          f"{excerpts} x {seconds:.0f} s excerpts", flush=True)
    paths = [p for p in PATHS if not (args.no_int8 and p[0] == "torch int8")
             and not (args.no_onnx and p[1] == "onnx")]

    with tempfile.TemporaryDirectory() as tmp:
        track = os.path.join(tmp, "track.mp3")
        gen_audio.write(gen_audio.piece(1, args.track_seconds), track)
        decode_s, audio = timed(lambda: decode(track, SAMPLE_RATE), args.repeats)
        print(f"decode of a {args.track_seconds / 60:.0f}-minute mp3: {decode_s:.3f} s")
        batch = np.stack(pick_excerpts(audio.samples, excerpts, seconds))

        rows = []
        for arch in args.models.split(","):
            folder = build(arch, os.path.join(tmp, arch))
            spec = ModelSpec(folder, layer, "mean")
            embedders = {}
            for label, runtime, quantize in paths:
                started = time.perf_counter()
                embedders[label] = Embedder(
                    spec, device="cpu", quantize=quantize, runtime=runtime,
                    cache_dir=Path(tmp) / f"onnx-{arch}", excerpts=excerpts,
                    excerpt_seconds=seconds,
                )
                assert embedders[label].runtime == runtime, (label, embedders[label].runtime)
                print(f"{arch:5s} {label}: ready in {time.perf_counter() - started:.1f} s"
                      + (" (one-time export included)" if runtime == "onnx" else ""),
                      flush=True)
                _bare_forward(embedders[label], batch)  # warm up

            # Interleaved rounds, best of N: every path sees the same load.
            best = {label: dict(pipe=float("inf"), bare=float("inf"), run=float("inf"),
                                prints=float("inf"))
                    for label in embedders}
            vectors = {}
            for round_ in range(args.repeats):
                order = list(embedders) if round_ % 2 == 0 else list(reversed(embedders))
                for label in order:
                    embedder = embedders[label]

                    def pipeline():
                        decoded = decode(track, SAMPLE_RATE)
                        return embedder.embed_many([decoded.samples])[0]

                    t, vectors[label] = timed(pipeline, 1)
                    stats = best[label]
                    stats["pipe"] = min(stats["pipe"], t)
                    t, _ = timed(lambda: _bare_forward(embedder, batch), 1)
                    stats["bare"] = min(stats["bare"], t)
                    run_s, prints_s = indexer_seconds_per_track(
                        embedder, track, tmp, args.run_tracks)
                    stats["run"] = min(stats["run"], run_s)
                    stats["prints"] = min(stats["prints"], prints_s)
                print(f"{arch:5s} round {round_ + 1}: " + ", ".join(
                    f"{label} {best[label]['run']:.2f}" for label in embedders)
                    + f" s/track (beet embed, best so far), load {_loadavg()}", flush=True)
            embedders.clear()  # free the models before the next architecture

            reference = paths[0][0]
            for label, runtime, _ in paths:
                stats = best[label]
                rows.append(dict(
                    arch=arch, label=label, runtime=runtime, **stats,
                    speedup=best[reference]["run"] / stats["run"],
                    cosine=float(np.dot(vectors[reference], vectors[label])),
                ))
                print(f"{arch:5s} {label:13s} one track {stats['pipe']:6.2f} s  "
                      f"beet embed {stats['run']:6.2f} s/track ({rows[-1]['speedup']:.2f}x)  "
                      f"bare forward {stats['bare']:6.2f} s  ratio "
                      f"{stats['run'] / stats['bare']:.3f}  cos vs float32 "
                      f"{rows[-1]['cosine']:.4f}; its fingerprint phase "
                      f"{stats['prints']:.2f} s/track", flush=True)

            full_s = _full_depth_forward(folder, batch, args.repeats)
            print(f"{arch:5s} full-depth forward (all layers, untruncated, torch float32): "
                  f"{full_s:.2f} s", flush=True)

    print()
    print("| model | runtime | one track alone s | beet embed s/track | speed-up "
          "| bare forward s | ratio (beet embed / forward) | cos vs float32 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        setting = "`runtime: auto` or `onnx`" if r["runtime"] == "onnx" else "`runtime: torch`"
        if r["label"] == "torch int8":
            setting += ", `quantize: yes`"
        print(f"| {r['arch']} | {r['label']} ({setting}) | {r['pipe']:.2f} | {r['run']:.2f} | "
              f"{r['speedup']:.2f}x | {r['bare']:.2f} | {r['run'] / r['bare']:.3f} | "
              f"{r['cosine']:.4f} |")
    print(f"load average at the end: {_loadavg()}")
    print("targets: <= 15 s/track (large), <= 5 s/track (base), ratio <= 1.10; "
          "issue 17 (ONNX int8): large <= 2.3 s/track and >= 3x torch float32, "
          "base <= 1.2 s/track")


def _loadavg() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def indexer_seconds_per_track(
    embedder, track: str, tmp: str, count: int
) -> tuple[float, float]:
    """Seconds per track of ``beet embed``'s two phases of ``Indexer.run``
    over ``count`` copies of the track, into a real embedded store, with the
    embedder's runtime as the ``runtime`` setting: the model phase, and
    the fingerprint phase before it."""
    import shutil

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
        url="", api_key="", timeout=10, fingerprint=True, max_fingerprint_seconds=3600,
        runtime=embedder.runtime,
    )
    indexer = Indexer(settings, lambda: embedder)
    indexer.run([Track(0)])  # opens the store, warms up
    tracks = [Track(n + 1) for n in range(count)]
    started = time.perf_counter()
    first = indexer.run(tracks, vectors=False)  # as beet embed: fingerprints first
    prints = time.perf_counter() - started
    started = time.perf_counter()
    report = indexer.run(tracks, batch_tracks=BATCH_TRACKS, keep_fingerprints=True)
    elapsed = time.perf_counter() - started
    indexer.close()
    assert first.fingerprinted_only == count and report.embedded == count, (first, report)
    return elapsed / count, prints / count


def _bare_forward(embedder, batch: np.ndarray):
    """The configured (truncated) model on the excerpt batch, nothing else:
    the ONNX session when the embedder runs one, else the torch model."""
    import torch

    if embedder.onnx is not None:
        return embedder.onnx(batch)
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
