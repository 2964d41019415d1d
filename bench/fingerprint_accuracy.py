#!/usr/bin/env python3
"""Accuracy, speed and size of the landmark fingerprint index on the dev corpus.

Usage::

    python bench/fingerprint_accuracy.py [CORPUS_DIR] [--synthetic N]

CORPUS_DIR (default /tmp/soundslike-dev-corpus) is what
shared/corpus/build_dev_corpus.sh writes. The bench indexes every track with
in_library=1, identifies every clip in queries.csv and prints:

* top-1 accuracy per degradation and clip length: right track AND offset
  within 1 s (speed-changed clips: offset of the clip start in the track);
* false-positive rate on "unknown" clips (tracks kept out of the library):
  any answer but None is a false positive;
* fingerprint speed in x realtime on one core, index bytes per track;
* identify latency p50/p95 per clip.

``--synthetic N`` adds N fake 4-minute tracks made of the real tracks'
constellations (``synthetic_tracks.py``: posting lists of realistic
length) to measure match latency and memory at library scale; accuracy is
then measured against the enlarged index too.

``--library-tracks N`` indexes only the first N library tracks, so the
clips of the others are unknown ones too: the false-positive rate of a
small library, where a clip has few unrelated candidates to measure
chance by.
"""

from __future__ import annotations

import argparse
import dataclasses
import csv
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from beetsplug.soundslike.fingerprint import audiocheck, params, placement  # noqa: E402
from beetsplug.soundslike.fingerprint import landmarks as fp  # noqa: E402
from beetsplug.soundslike.fingerprint import local as fp_local  # noqa: E402
from beetsplug.soundslike.audio import decode  # noqa: E402
from beetsplug.soundslike.fingerprint import FingerprintIndex  # noqa: E402
from synthetic_tracks import fake_track, real_peaks  # noqa: E402

SR = 16000


def load_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def build(corpus: Path, index_dir: str, synthetic: int, library_tracks: int = 0):
    tracks = [r for r in load_csv(corpus / "tracks.csv") if r["in_library"] == "1"]
    if library_tracks:
        tracks = tracks[:library_tracks]
    ids = {}
    fp_seconds = audio_seconds = 0.0
    n_landmarks = 0
    with FingerprintIndex(index_dir) as index:
        for k, r in enumerate(tracks):
            audio = decode(corpus / r["file"], sample_rate=SR)
            t0 = time.process_time()
            lm = fp.reference_landmarks(audio.samples, audio.sample_rate)
            fp_seconds += time.process_time() - t0
            audio_seconds += audio.seconds
            n_landmarks += len(lm)
            ids[k + 1] = r["id"]
            index.add_landmarks(k + 1, lm)
        index.flush()
        real_bytes = index.stats()["bytes"]
        if synthetic:
            add_synthetic(index, synthetic, base_id=1_000_000, real=list(ids))
        stats = index.stats()
    return ids, dict(fp_x_realtime=audio_seconds / max(fp_seconds, 1e-9),
                     landmarks_per_track=n_landmarks / len(tracks),
                     landmarks_per_second=n_landmarks / audio_seconds,
                     bytes_per_track=real_bytes / len(tracks),
                     index_items=stats["items"], index_bytes=stats["bytes"],
                     segments=stats["segments"], n_tracks=len(tracks))


def add_synthetic(index: FingerprintIndex, n: int, base_id: int, real: list):
    """Fake 4-minute tracks made of the ``real`` tracks' constellations
    (``synthetic_tracks.py``), so posting lists have realistic lengths."""
    rng = np.random.default_rng(1)
    peaks = [real_peaks(index.landmarks(k)) for k in real]
    fp_local.AUTO_FLUSH_LANDMARKS = 1 << 40  # flush full segments, not small ones
    for k in range(n):
        index.add_landmarks(base_id + k, fake_track(rng, peaks))
        if (k + 1) % 1000 == 0:
            print(f"  synthetic tracks: {k + 1}/{n}", file=sys.stderr)
    index.flush()


def corpus_reader(track_file: dict):
    """Reads stretches of the corpus tracks (item id -> path) for the
    second look, as `beet identify` reads library files."""
    def read(item_id, start, seconds):
        return audiocheck.read_stretch(track_file.get(item_id), start, seconds)
    return read


def second_look(audio, m, read):
    """What `beet identify` does with a clip the landmarks leave under
    confidence 0.5: compare it with the candidate tracks' audio. The
    match the second look finds, or ``m`` as it was."""
    if m is None or m.confidence >= params.MIN_CONFIDENCE:
        return m
    v = audiocheck.second_look(audio.samples, audio.sample_rate, m.candidates, read)
    if v is None or v.confidence < params.MIN_CONFIDENCE:
        return m
    return v.as_match()


def held_out_trials(index: FingerprintIndex, queries, id_of, same, corpus: Path):
    """Each library track's clips searched with that track (and any copy of
    the same recording) removed: every answer is a false positive. Returns
    (query, match or None) pairs, the matches at any confidence."""
    by_track = defaultdict(list)
    for q in queries:
        if q["track_id"] in id_of:
            by_track[id_of[q["track_id"]]].append(q)
    trials = []
    for item, clips in sorted(by_track.items()):
        hidden = {item, *same.get(item, ())}
        saved = {k: index.landmarks(k) for k in hidden}
        index.remove(hidden)
        index.flush()
        for q in clips:
            audio = decode(corpus / q["query"], sample_rate=SR)
            trials.append((q, index.identify(audio.samples, audio.sample_rate, min_confidence=0.0)))
        for k, lm in saved.items():
            index.add_landmarks(k, lm)
        index.flush()
    return trials


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", nargs="?", default="/tmp/soundslike-dev-corpus")
    ap.add_argument("--synthetic", type=int, default=0, help="add N random-landmark tracks")
    ap.add_argument("--index-dir", help="keep the index here (default: a temp dir, deleted)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N queries")
    ap.add_argument("--library-tracks", type=int, default=0,
                    help="index only the first N library tracks: the other tracks' clips become "
                         "unknown ones (how a small library holds up against chance)")
    ap.add_argument("--dump", help="write per-query results (csv) here")
    ap.add_argument("--held-out", action="store_true",
                    help="also search every library clip with its own track removed from the index "
                         "(hundreds of chance trials on real music: the false-positive rate)")
    ap.add_argument("--no-refine", action="store_true",
                    help="no placement with the library audio (votes' place only)")
    ap.add_argument("--no-second-look", action="store_true",
                    help="landmarks only: no second look at the candidates' audio for uncertain clips")
    args = ap.parse_args()
    corpus = Path(args.corpus)
    index_dir = args.index_dir or tempfile.mkdtemp(prefix="fpbench-")

    t0 = time.perf_counter()
    ids, info = build(corpus, index_dir, args.synthetic, args.library_tracks)
    build_s = time.perf_counter() - t0
    id_of = {v: k for k, v in ids.items()}

    queries = load_csv(corpus / "queries.csv")
    if args.limit:
        queries = queries[: args.limit]
    index = FingerprintIndex(index_dir)
    # The same master filed twice (e.g. one track in two packages) is one
    # recording: an answer naming either copy is right.
    same = {k: set(index.same_recording(k)) for k in ids}
    dup_pairs = sorted({tuple(sorted((ids[a], ids[b]))) for a, bs in same.items() for b in bs if b in ids})
    # Warm the memory maps and code paths once.
    index.identify(np.random.default_rng(0).standard_normal(SR * 5).astype(np.float32) * 0.01, SR)

    track_file = {k: corpus / r["file"] for r in load_csv(corpus / "tracks.csv") for k, v in ids.items()
                  if v == r["id"]}
    read = corpus_reader(track_file)
    rows = []
    refine_ms = []
    looks = 0
    for q in queries:
        audio = decode(corpus / q["query"], sample_rate=SR)
        t = time.perf_counter()
        m = index.identify(audio.samples, audio.sample_rate, min_confidence=0.0)
        dt = time.perf_counter() - t
        looked_again = (not args.no_second_look and m is not None
                        and m.confidence < params.MIN_CONFIDENCE)
        if looked_again:
            looks += 1
            m = second_look(audio, m, read)
        m_plain = m
        if (m is not None and m.confidence >= params.MIN_CONFIDENCE and not args.no_refine
                and m.item_id in track_file):
            # What `beet identify` does with the matched file: unless the
            # landmarks settled one place, decode windows of the track at
            # the votes' place, its repeats and where the stored peaks meet
            # the clip's, pick among the repeats of the passage, then look
            # for a clearly better place.
            t = time.perf_counter()
            best = placement.place(audio.samples, audio.sample_rate, m,
                                   track_file[m.item_id], looked_again, index.landmarks(m.item_id))
            refine_ms.append((time.perf_counter() - t) * 1000)
            m = dataclasses.replace(m, offset=best)
        rows.append((q, m, dt, m_plain))
    held_out = held_out_trials(index, queries, id_of, same, corpus) if args.held_out else []
    if not args.no_second_look:
        held_out = [(q, second_look(decode(corpus / q["query"], sample_rate=SR), m, read))
                    for q, m in held_out]
    index.close()

    dump = open(args.dump, "w", newline="") if args.dump else None
    if dump:
        w = csv.writer(dump)
        w.writerow(["query", "degradation", "length_s", "truth", "answer", "offset_err", "confidence",
                    "score", "speed", "correct", "ms"])

    groups = defaultdict(list)
    plain = defaultdict(list)
    track_only = defaultdict(list)
    unknown = []
    latencies = []
    for q, m, dt, m_plain in rows:
        latencies.append(dt)
        deg = q["degradation"]
        length = float(q["length_s"])
        truth = id_of.get(q["track_id"]) if q["track_id"] else None
        accepted = m is not None and m.confidence >= 0.5
        if truth is None:
            unknown.append(accepted)
            correct = not accepted
            err = ""
        else:
            right_item = accepted and (m.item_id == truth or m.item_id in same.get(truth, ()))
            correct = bool(right_item and abs(m.offset - float(q["offset_s"])) <= 1.0)
            plain[(deg, length)].append(bool(right_item and abs(m_plain.offset - float(q["offset_s"])) <= 1.0))
            track_only[(deg, length)].append(bool(right_item))
            err = f"{m.offset - float(q['offset_s']):.2f}" if m is not None else ""
            groups[(deg, length)].append(correct)
        if dump:
            w.writerow([q["query"], deg, length, q["track_id"], ids.get(m.item_id, m.item_id) if m else "", err,
                        f"{m.confidence:.4f}" if m else "", m.score if m else "", f"{m.speed:.4f}" if m else "",
                        int(correct), f"{dt * 1000:.1f}"])
    if dump:
        dump.close()

    print(f"corpus: {corpus}  library tracks: {info['n_tracks']}  index items: {info['index_items']}"
          f"  segments: {info['segments']}  build: {build_s:.1f} s")
    if dup_pairs:
        print("same recording filed twice (either counts as right):", ", ".join("=".join(p) for p in dup_pairs))
    print("top-1 = right track and offset within 1 s (offset placed with the track audio: among the"
          " repeats, then over the whole track);")
    if not args.no_second_look:
        print(f"clips under confidence 0.5 given a second look at the candidates' audio: {looks}")
    print("votes only = the same without that step; track = right track, any offset")
    print(f"{'degradation':<16}{'len':>5}{'n':>6}{'top-1':>9}{'votes only':>12}{'track':>9}")
    order = ["clean", "mp3_64k", "pink_10db", "pink_5db", "pink_0db", "babble_5db", "othermusic_5db",
             "phone", "reverb", "speed_+2", "speed_-2", "cafe_phone"]
    for key in sorted(groups, key=lambda k: (order.index(k[0]) if k[0] in order else 99, k[1])):
        v = groups[key]
        print(f"{key[0]:<16}{key[1]:>5.0f}{len(v):>6}{100 * np.mean(v):>8.1f}%"
              f"{100 * np.mean(plain[key]):>11.1f}%{100 * np.mean(track_only[key]):>8.1f}%")
    allv = [x for v in groups.values() for x in v]
    allp = [x for v in plain.values() for x in v]
    allt = [x for v in track_only.values() for x in v]
    print(f"{'all known':<16}{'':>5}{len(allv):>6}{100 * np.mean(allv):>8.1f}%{100 * np.mean(allp):>11.1f}%"
          f"{100 * np.mean(allt):>8.1f}%")
    if unknown:
        print(f"false positives on unknown clips: {sum(unknown)}/{len(unknown)}"
              f" = {100 * np.mean(unknown):.1f}%")
    if held_out:
        wrong = [q for q, m in held_out if m is not None and m.confidence >= 0.5]
        print(f"false positives on library clips with their track held out: {len(wrong)}/{len(held_out)}"
              f" = {100 * len(wrong) / len(held_out):.1f}%"
              + (f" ({', '.join(sorted({q['degradation'] for q in wrong}))})" if wrong else ""))
    lat = np.array(latencies) * 1000
    print(f"fingerprint speed: {info['fp_x_realtime']:.0f}x realtime (one core);"
          f" {info['landmarks_per_second']:.0f} landmarks/s of audio")
    print(f"index size: {info['bytes_per_track'] / 1024:.0f} KiB per track"
          f" ({info['landmarks_per_track']:.0f} landmarks/track); total {info['index_bytes'] / 2**20:.1f} MiB")
    print(f"identify latency per clip: p50 {np.percentile(lat, 50):.0f} ms, p95 {np.percentile(lat, 95):.0f} ms,"
          f" max {lat.max():.0f} ms")
    if refine_ms:
        print(f"placement (decode track + compare, {len(refine_ms)} clips):"
              f" p50 {np.percentile(refine_ms, 50):.0f} ms")
    if not args.index_dir:
        shutil.rmtree(index_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
