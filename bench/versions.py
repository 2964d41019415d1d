#!/usr/bin/env python3
"""Versions of library pieces: answered as "a version of X", not as X.

Usage::

    python bench/versions.py [CORPUS_DIR] [--work DIR] [--clips N]

The dev corpus has no two recordings of one piece, but nine of its
library tracks are tracker modules (pingus-data: the score and the
instruments' samples, rendered by libopenmpt when the corpus was built).
A module can be rendered again with changes, which makes real versions
of the very piece in the library, with ground truth:

* ``same``: the module as it is, rendered again here (the control: this
  is the recording, and must be answered as it);
* ``evens`` / ``odds``: a re-arrangement that keeps only every other
  channel (half of the parts: a stripped-down mix, the other parts
  dropped), the parts kept sample for sample as in the library track;
* ``orch1`` / ``orch2``: a re-orchestration, every instrument playing the
  sample one or two places on (the same notes at the same times in other
  sounds); modules whose render does not change are skipped;
* each of them also with pink noise at 10 dB (heard in a noisy room).

5 s clips at N seeded places of each, identified in process by the same
:class:`Identifier` as ``beet identify`` on ``bench/identify.py``'s
library (run that first). Prints, per kind, how many clips were answered
as the recording, as "a version of" it, as another track, or not at all.
A version answered as the recording counts against issue 19's false
positives; a re-orchestration that is not answered at all is right too
(the landmarks do not find it: it shares no sound with the track).

Needs libopenmpt (``libopenmpt0``, which Debian's ffmpeg depends on) and
the pingus modules (``pingus-data``, installed by the corpus script).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import csv
import os
import struct
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from identify import in_process_identifier  # noqa: E402 (puts scripts/ on the path)

import gen_audio  # noqa: E402

MODULES = Path("/usr/share/games/pingus/data/music")
RATE = 16000
CLIP_SECONDS = 5.0


class Renderer:
    """Tracker modules to mono float samples through libopenmpt's C API."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("openmpt") or "libopenmpt.so.0"
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            raise SystemExit("libopenmpt is not installed (apt install libopenmpt0)")
        lib.openmpt_module_create_from_memory2.restype = ctypes.c_void_p
        lib.openmpt_module_create_from_memory2.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
            ctypes.c_void_p, ctypes.POINTER(ctypes.c_int), ctypes.c_void_p, ctypes.c_void_p]
        lib.openmpt_module_read_float_mono.restype = ctypes.c_size_t
        lib.openmpt_module_read_float_mono.argtypes = [ctypes.c_void_p, ctypes.c_int32,
                                                       ctypes.c_size_t, ctypes.c_void_p]
        lib.openmpt_module_destroy.argtypes = [ctypes.c_void_p]
        self.lib = lib

    def render(self, data: bytes, max_seconds: float = 900.0) -> np.ndarray:
        error = ctypes.c_int(0)
        buffer = ctypes.create_string_buffer(data, len(data))
        module = self.lib.openmpt_module_create_from_memory2(
            buffer, len(data), None, None, None, None, ctypes.byref(error), None, None)
        if not module:
            raise ValueError(f"libopenmpt cannot read the module (error {error.value})")
        try:
            chunks, total = [], 0
            chunk = np.zeros(RATE, np.float32)
            while total < max_seconds * RATE:
                n = self.lib.openmpt_module_read_float_mono(module, RATE, chunk.size,
                                                            chunk.ctypes.data)
                if n == 0:
                    break
                chunks.append(chunk[:n].copy())
                total += n
            return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        finally:
            self.lib.openmpt_module_destroy(module)


def keep_channels(data: bytes, first: int) -> bytes:
    """An Impulse Tracker module with every other channel disabled
    (channel pan table at 0x40; +128 disables), from channel ``first``."""
    out = bytearray(data)
    for channel in range(64):
        if channel % 2 != first:
            out[0x40 + channel] |= 0x80
    return bytes(out)


def reorchestrate(data: bytes, shift: int) -> bytes:
    """Every instrument's keyboard table plays the sample ``shift`` places
    on: the same notes, other sounds (instrument mode modules)."""
    out = bytearray(data)
    orders, instruments, samples = struct.unpack("<HHH", data[0x20:0x26])
    table = 0xC0 + orders
    for k in range(instruments):
        at = struct.unpack("<I", data[table + 4 * k: table + 4 * k + 4])[0]
        if data[at:at + 4] != b"IMPI":
            continue
        for note in range(120):
            p = at + 0x40 + 2 * note + 1
            if 1 <= out[p] <= samples:
                out[p] = (out[p] - 1 + shift) % samples + 1
    return bytes(out)


def module_of(title: str) -> Path | None:
    """The module a corpus track was rendered from (its title is the file
    stem with '-' and '_' as spaces)."""
    for path in sorted(MODULES.glob("*.it")):
        if path.stem.replace("_", " ").replace("-", " ").strip() == title:
            return path
    return None


def clips_of(x: np.ndarray, count: int, rng) -> list[tuple[float, np.ndarray]]:
    """``count`` 5 s clips at seeded places where the music plays."""
    n = int(CLIP_SECONDS * RATE)
    out = []
    loud = np.max(np.abs(x)) + 1e-9
    for _ in range(count):
        for _ in range(50):
            start = int(rng.integers(0, max(1, x.size - n)))
            clip = x[start:start + n]
            if np.sqrt(np.mean(clip.astype(np.float64) ** 2)) > 0.02 * loud:
                break
        out.append((start / RATE, (clip / (np.max(np.abs(clip)) + 1e-9) * 0.9).astype(np.float32)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", nargs="?", default="/tmp/soundslike-dev-corpus")
    ap.add_argument("--work", default="/tmp/soundslike-bench-identify",
                    help="bench/identify.py's library (run it first)")
    ap.add_argument("--clips", type=int, default=4, help="clips of each version of each track")
    args = ap.parse_args()
    if not os.path.exists(os.path.join(args.work, "beets", "library.db")):
        raise SystemExit(f"no bench library in {args.work}: run bench/identify.py first")
    renderer = Renderer()
    identifier = in_process_identifier({"BEETSDIR": os.path.join(args.work, "beets")})
    path_of = {os.path.basename(os.fsdecode(item.path)).split(".")[0]: item.id
               for item in identifier.lib.items()}
    with open(os.path.join(args.corpus, "tracks.csv")) as handle:
        tracks = [r for r in csv.DictReader(handle) if r["in_library"] == "1"]
    counts = defaultdict(lambda: defaultdict(int))
    for track in tracks:
        module = module_of(track["title"])
        if module is None or track["id"] not in path_of:
            continue
        data = module.read_bytes()
        original = renderer.render(data)
        kinds = {"same": original}
        for first, name in ((0, "evens"), (1, "odds")):
            kinds[name] = renderer.render(keep_channels(data, first))
        for shift in (1, 2):
            x = renderer.render(reorchestrate(data, shift))
            n = min(x.size, original.size)
            if not np.allclose(x[:n], original[:n], atol=1e-4):
                kinds[f"orch{shift}"] = x
        rng = np.random.default_rng(int(track["id"][1:]))
        for kind, audio in kinds.items():
            for n, (_, clip) in enumerate(clips_of(audio, args.clips, rng)):
                # The control too: the recording in a noisy room must
                # stay the recording.
                noisy = gen_audio.add_noise(clip, 10.0, seed=int(track["id"][1:]) * 100 + n)
                variants = [(kind, clip), (f"{kind} + pink 10 dB", noisy)]
                for label, samples in variants:
                    answer = identifier.identify_samples(samples, f"{track['id']} {label}", similar=0)
                    match = answer.match
                    if match is None:
                        verdict = "none"
                    elif match["id"] != path_of[track["id"]]:
                        verdict = "other"
                    else:
                        verdict = "version" if match["version"] else "recording"
                    counts[label][verdict] += 1
        print(f"{track['id']} {module.name}: {', '.join(kinds)}", file=sys.stderr)
    identifier.close()
    print("| clips | n | answered as the recording | as a version of it | another track | not in library |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label in sorted(counts, key=lambda k: (k != "same", k)):
        c = counts[label]
        n = sum(c.values())
        print(f"| {label} | {n} | {c['recording']} | {c['version']} | {c['other']} | {c['none']} |")


if __name__ == "__main__":
    main()
