#!/usr/bin/env python3
"""Identification accuracy and latency on real music, through ``beet``.

Builds a beets library from the dev corpus (``../shared/corpus/build_dev_corpus.sh``:
real recordings from Debian packages, degraded query clips with ground
truth; tracks kept out of the library give the "unknown" clips), imports it
with the plugin (in place), then runs ``beet identify --json --similar 0``
on every query clip and prints:

* top-1 accuracy per degradation: the right recording, at an offset within
  1 s of the truth or at a place where the track plays the same passage
  again (game music loops: the audio at the reported offset correlates
  >= 0.9 with the audio at the true offset, see :func:`same_passage`, so
  no clip could tell the two apart); the strict offset score and the
  recording alone beside it,
* the false-positive rate on clips of tracks not in the library,
* in-process identify latency p50/p95 per clip (fingerprint index open),
* wall clock of whole ``beet identify`` processes on a sample of clips.

Embeddings play no part in identification, so the library is embedded
with a small random-weight Wav2Vec2 to keep the import fast.

Usage: python bench/identify.py [CORPUS_DIR] [--work DIR] [--sample N]
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
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))


def beet(env, *args, check=True):
    result = subprocess.run(
        [sys.executable, "-m", "beets", *args], env=env, capture_output=True, text=True
    )
    if check and result.returncode not in (0, 1):
        raise SystemExit(f"beet {' '.join(args)} failed:\n{result.stderr}")
    return result


def setup_library(corpus: str, work: str, rebuild: bool) -> dict:
    import tiny_model

    beetsdir = os.path.join(work, "beets")
    env = dict(os.environ, BEETSDIR=beetsdir)
    if os.path.exists(os.path.join(beetsdir, "library.db")) and not rebuild:
        return env
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(beetsdir)
    model = tiny_model.build_tiny_model(os.path.join(work, "model"), layers=2, hidden=32)
    with open(os.path.join(beetsdir, "config.yaml"), "w") as handle:
        handle.write(
            f"directory: {work}/music\nlibrary: {beetsdir}/library.db\n"
            "plugins: soundslike\ncreate_backup_before_migrations: no\n"
            "import:\n  copy: no\n  write: no\n  quiet: yes\n"
            f"soundslike:\n  model: {model}\n  layer: 2\n  excerpts: 1\n"
            "  excerpt_seconds: 5\n"
        )
    started = time.perf_counter()
    result = beet(env, "import", "-A", "-s", os.path.join(corpus, "library"))
    print(f"imported library in {time.perf_counter() - started:.0f} s "
          f"(exit {result.returncode})", file=sys.stderr)
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", nargs="?", default="/tmp/soundslike-dev-corpus")
    parser.add_argument("--work", default="/tmp/soundslike-bench-identify")
    parser.add_argument("--sample", type=int, default=20,
                        help="clips timed as whole beet processes")
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--dump", metavar="FILE.jsonl",
                        help="write each clip's answer and verdict here, one JSON object a line")
    args = parser.parse_args()

    corpus = os.path.abspath(args.corpus)
    if not os.path.exists(os.path.join(corpus, "queries.csv")):
        raise SystemExit(
            f"no corpus in {corpus}: run ../shared/corpus/build_dev_corpus.sh {corpus}"
        )
    env = setup_library(corpus, args.work, args.rebuild)

    queries, clips = load_queries(corpus)
    started = time.perf_counter()
    result = beet(env, "identify", "--json", "--similar", "0", *clips)
    whole_run = time.perf_counter() - started
    answers = {}
    for line in result.stdout.splitlines():
        answer = json.loads(line)
        answers[answer["clip"]] = answer
    table = score(corpus, queries, clips, answers, recordings(env), args.dump)

    latencies = in_process_latencies(env, clips)
    walls = []
    for clip in clips[: args.sample]:
        started = time.perf_counter()
        beet(env, "identify", "--similar", "0", clip)
        walls.append(time.perf_counter() - started)

    print_table(table)
    print()
    print(f"identify latency in process: p50 {1000 * pct(latencies, 50):.0f} ms, "
          f"p95 {1000 * pct(latencies, 95):.0f} ms")
    print(f"whole 'beet identify CLIP' process: p50 {pct(walls, 50):.2f} s, "
          f"p95 {pct(walls, 95):.2f} s ({len(walls)} runs)")
    print(f"one 'beet identify' process over all {len(clips)} clips (decode included, "
          f"{os.cpu_count()} cores): {whole_run:.0f} s, {len(clips) / whole_run:.1f} clips/s")


def load_queries(corpus: str) -> tuple[list[dict], list[str]]:
    """The corpus's query rows and their clips' paths."""
    with open(os.path.join(corpus, "queries.csv")) as handle:
        queries = list(csv.DictReader(handle))
    return queries, [os.path.join(corpus, q["query"]) for q in queries]


def recordings(env) -> dict:
    """Path -> same-recording group of every library item (the corpus files
    some recordings twice: naming either copy is right)."""
    listing = beet(env, "ls", "-f", "$path\t$soundslike_recording").stdout
    recording = {}
    for line in listing.splitlines():
        path, _, group = line.partition("\t")
        recording[os.path.realpath(path)] = group
    return recording


def score(corpus: str, queries, clips, answers: dict, recording: dict, dump_path=None) -> dict:
    """Per-degradation counts of ``answers`` (clip -> ``--json`` answer)."""
    tracks = {}
    with open(os.path.join(corpus, "tracks.csv")) as handle:
        for row in csv.DictReader(handle):
            tracks[row["id"]] = row
    per_kind = defaultdict(lambda: [0, 0])
    per_track = defaultdict(lambda: [0])
    per_strict = defaultdict(int)
    per_version = defaultdict(int)
    # The library tracks in two halves (alternate rows of tracks.csv):
    # a rule fitted on one half is checked on the other.
    library = [t for t in tracks if tracks[t]["in_library"] == "1"]
    half_of = {t: "AB"[n % 2] for n, t in enumerate(library)}
    per_half = defaultdict(lambda: [0, 0])
    false_pos = defaultdict(lambda: [0, 0])
    dump = open(dump_path, "w") if dump_path else None
    for query, clip in zip(queries, clips):
        answer = answers.get(clip, {"match": None})
        track = tracks.get(query["track_id"]) or {"in_library": "0"}
        match = answer.get("match")
        kind = query["degradation"]
        if float(query["length_s"]) != 5:
            kind += f"_{float(query['length_s']):g}s"
        if track["in_library"] == "1":
            expected = os.path.realpath(os.path.join(corpus, track["file"]))
            got = os.path.realpath(match["path"]) if match else None
            # "A version of" the right track is not the recording.
            per_version[kind] += int(bool(match and match.get("version")))
            if match and match.get("version"):
                got = None
            same = got == expected or (
                got is not None and recording.get(got) == recording.get(expected) != ""
            )
            strict = same and abs(match["offset"] - float(query["offset_s"])) <= 1.0
            right = strict or (same and same_passage(
                expected, float(query["offset_s"]), match["offset"], float(query["length_s"])))
            per_track[kind][0] += int(same)
            per_strict[kind] += int(strict)
            per_kind[kind][0] += int(right)
            per_kind[kind][1] += 1
            per_half[kind, half_of[query["track_id"]]][0] += int(right)
            per_half[kind, half_of[query["track_id"]]][1] += 1
        else:
            same = strict = right = match is None
            false_pos[kind][0] += int(match is not None)
            false_pos[kind][1] += 1
        if dump:
            dump.write(json.dumps({"query": query["query"], "kind": kind, "truth": query["track_id"],
                                   "offset": float(query["offset_s"] or 0), "match": match,
                                   "track": same, "strict": strict, "top1": right}) + "\n")
    if dump:
        dump.close()
    return {"corpus": corpus, "tracks": len(library), "clips": len(queries),
            "per_kind": per_kind, "per_track": per_track, "per_strict": per_strict,
            "per_half": per_half, "false_pos": false_pos, "per_version": per_version}


def print_table(table: dict) -> None:
    """The accuracy table of :func:`score` in Markdown."""
    per_kind, per_track, per_strict = table["per_kind"], table["per_track"], table["per_strict"]
    per_half, false_pos = table["per_half"], table["false_pos"]
    print(f"\ncorpus: {table['corpus']} ({table['tracks']} tracks in the library, "
          f"{table['clips']} clips)\n")
    print("top-1: right recording, offset within 1 s or at a repeat of the passage; "
          "strict: offset within 1 s; track: right recording, any offset; "
          "halves A / B: top-1 on alternate library tracks; "
          "version: answered \"a version of\" a track, which is never the recording")
    print("| degradation | clips | top-1 | strict | track | half A | half B | version |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")

    def share(pair):
        return f"{100 * pair[0] / max(1, pair[1]):.1f}%"

    for kind in sorted(per_kind):
        right, total = per_kind[kind]
        track_right = per_track[kind][0]
        print(f"| {kind} | {total} | {100 * right / total:.1f}% | "
              f"{100 * per_strict[kind] / total:.1f}% | {100 * track_right / total:.1f}% | "
              f"{share(per_half[kind, 'A'])} | {share(per_half[kind, 'B'])} | "
              f"{table['per_version'][kind]} |")
    for kind in sorted(false_pos):
        print(f"| unknown {kind}: false positives | {false_pos[kind][1]} | "
              f"{share(false_pos[kind])} | | | | | |")
    wrong = sum(v[0] for v in false_pos.values())
    total = sum(v[1] for v in false_pos.values())
    print(f"| unknown clips, all: false positives | {total} | {100 * wrong / max(1, total):.1f}% | | | | | |")


def in_process_identifier(env):
    """An :class:`Identifier` on the bench library, opened as ``beet listen`` does."""
    os.environ["BEETSDIR"] = env["BEETSDIR"]
    from beets import config
    from beets.library import Library

    from beetsplug.soundslike.identify import Identifier
    from beetsplug.soundslike.settings import DEFAULTS, load_settings

    config.read()
    config["soundslike"].add(DEFAULTS)
    lib = Library(config["library"].as_filename(), config["directory"].as_filename())
    settings = load_settings(config["soundslike"], lib.path)
    return Identifier(settings, lib)


def in_process_latencies(env, clips) -> list[float]:
    """Decode + match per clip with the index already open, as in
    ``beet listen``."""
    identifier = in_process_identifier(env)
    times = []
    for clip in clips:
        answer = identifier.identify_path(clip, similar=0)
        times.append(answer.seconds)
    identifier.close()
    return times


_TRACK_AUDIO: dict = {}


def same_passage(path: str, true_offset: float, offset: float, seconds: float,
                 min_corr: float = 0.9) -> bool:
    """Whether the track plays the same passage at ``offset`` as at
    ``true_offset``: the peak normalised cross-correlation of the track's
    own waveform at the two places (+-0.3 s of slack) is at least
    ``min_corr``. Looped game music repeats passages sample for sample;
    lossy coding and small mix changes keep such repeats a little under
    1.0, while different passages of the same piece stay far below."""
    import numpy as np

    from beetsplug.soundslike.audio import decode

    sr = 8000
    if path not in _TRACK_AUDIO:
        _TRACK_AUDIO[path] = decode(path, sr).samples.astype(np.float64)
    x = _TRACK_AUDIO[path]
    a = x[int(true_offset * sr): int((true_offset + seconds) * sr)]
    lo = max(0, int((offset - 0.3) * sr))
    b = x[lo: int((offset + seconds + 0.3) * sr)]
    if a.size < sr or b.size < a.size:
        return False
    size = 1 << int(np.ceil(np.log2(a.size + b.size)))
    corr = np.fft.irfft(np.fft.rfft(b, size) * np.conj(np.fft.rfft(a, size)), size)
    corr = corr[: b.size - a.size + 1]
    energy = np.sqrt(np.convolve(b ** 2, np.ones(a.size), "valid")) * np.linalg.norm(a)
    return bool(np.max(corr / (energy + 1e-12)) >= min_corr)


def pct(values, q) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


if __name__ == "__main__":
    main()
