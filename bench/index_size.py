"""Size of the local fingerprint index and the cost of filling it, on
the dev corpus's library tracks (issue 19: index <= 2 MB per hour of
audio; ingest, decode and fingerprint, >= 1,000x realtime per core).

    python bench/index_size.py [CORPUS_DIR] [--tracks N]

Decodes every library track as ``beet embed`` does (16 kHz mono),
fingerprints it, writes the index with the real code (one flush, then a
compaction into one segment), and prints per file kind the bytes a
landmark takes, the megabytes per hour of audio (segments alone, what
grows with the library, and the whole index with its fixed 16 MiB
table of key counts at this size), the size of a 4-minute track,
and the CPU seconds of decoding (in the decoding processes, which are
counted by their own clocks: they outlive each file) and fingerprinting
per second of audio. Format 3 (before 2026-11-29) stored
16 bytes a landmark: 4 of key, 4 of posting, 8 of forward copy; format 4
11 and the directory: 1 of key, 4 of posting, 6 of forward copy; format 5
keeps the peaks (4 bytes each) as the forward copy instead of the
landmark words.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from beetsplug.soundslike.audio import decode  # noqa: E402
from beetsplug.soundslike.compute import reuse_freed_memory  # noqa: E402
from beetsplug.soundslike.fingerprint import FingerprintIndex  # noqa: E402
from beetsplug.soundslike.fingerprint import landmarks as fp  # noqa: E402

SR = 16000


def cpu_seconds() -> float:
    """CPU time of this process and all its children: those that ended
    (``os.times``) and those still running (their own clocks, in /proc)."""
    t = os.times()
    total = t.user + t.system + t.children_user + t.children_system
    tick = os.sysconf("SC_CLK_TCK")
    me = os.getpid()
    for task in os.listdir(f"/proc/{me}/task"):
        with open(f"/proc/{me}/task/{task}/children") as f:
            for pid in f.read().split():
                try:
                    with open(f"/proc/{pid}/stat") as g:
                        fields = g.read().rsplit(") ", 1)[1].split()
                except FileNotFoundError:
                    continue
                total += (int(fields[11]) + int(fields[12])) / tick
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus", nargs="?", default="/tmp/soundslike-dev-corpus")
    ap.add_argument("--tracks", type=int, default=0, help="only the first N library tracks")
    ap.add_argument("--default-malloc", action="store_true",
                    help="leave glibc's allocator as it is (before 2026-11-30: every large array mapped afresh)")
    args = ap.parse_args()
    if not args.default_malloc:
        reuse_freed_memory()  # as the analysis of beet embed and beet import does
    corpus = Path(args.corpus)
    with open(corpus / "tracks.csv", newline="") as f:
        tracks = [r for r in csv.DictReader(f) if r["in_library"] == "1"]
    if args.tracks:
        tracks = tracks[:args.tracks]
    audio_s = decode_cpu = fp_cpu = 0.0
    with tempfile.TemporaryDirectory(prefix="index-size-") as work:
        with FingerprintIndex(os.path.join(work, "index")) as index:
            for k, r in enumerate(tracks, 1):
                before = cpu_seconds()
                audio = decode(str(corpus / r["file"]), sample_rate=SR)
                decode_cpu += cpu_seconds() - before
                t0 = time.process_time()
                lm = fp.reference_landmarks(audio.samples, SR)
                fp_cpu += time.process_time() - t0
                audio_s += audio.seconds
                index.add_landmarks(k, lm)
            index.flush()
            index.compact()
            landmarks, peaks = index.stats()["landmarks"], index.stats()["peaks"]
            directory = index.directory
            by_kind: dict[str, int] = defaultdict(int)
            for name in os.listdir(directory):
                m = re.match(r"^(seg-\d+\.(\w+)|(counts|tomb|src)-\d+)\.npy$", name)
                if m:
                    by_kind[m.group(2) or m.group(3)] += os.path.getsize(os.path.join(directory, name))
    hours = audio_s / 3600
    segment = sum(v for k, v in by_kind.items() if k not in ("counts", "tomb", "src"))
    print(f"{len(tracks)} tracks, {hours:.2f} h of audio, {landmarks} landmarks"
          f" ({landmarks / audio_s:.1f} a second, {landmarks / len(tracks):.0f} a track)")
    for kind in ("hash", "post", "fwd", "dir", "items"):
        print(f"  {kind:<6} {by_kind.get(kind, 0) / landmarks:6.2f} bytes a landmark")
    print(f"  (fwd: {peaks} peaks, {peaks / audio_s:.1f} a second, {peaks / landmarks:.3f} a landmark)")
    print(f"segments: {segment / landmarks:.2f} bytes a landmark, {segment / hours / 1e6:.2f} MB an hour of audio,"
          f" {segment / audio_s * 240 / 1024:.0f} KiB for a 4-minute track (target 2 MB an hour, ~150 KB)")
    total = sum(by_kind.values())
    counts = by_kind.get("counts", 0)
    print(f"whole index (key counts: {counts / 2**20:.0f} MiB, fixed): {total / hours / 1e6:.2f} MB"
          f" an hour, {total / len(tracks) / 1024:.0f} KiB a track at {len(tracks)} tracks")
    print(f"format 3 layout: {16 * landmarks / hours / 1e6:.2f} MB an hour (16 bytes a landmark)")
    format_4 = 11 * landmarks + by_kind.get("dir", 0) + by_kind.get("items", 0)
    print(f"format 4 layout: {format_4 / hours / 1e6:.2f} MB an hour ({format_4 / landmarks:.2f} bytes a landmark)")
    print(f"ingest on one core: decode {audio_s / decode_cpu:.0f}x realtime, fingerprint {audio_s / fp_cpu:.0f}x,"
          f" both {audio_s / (decode_cpu + fp_cpu):.0f}x (target 1,000x)")


if __name__ == "__main__":
    main()
