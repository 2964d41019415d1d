#!/usr/bin/env python3
"""``beet listen`` under load: latency of ``POST /api/identify`` at 1,000
tracks, and whether 20 uploads at a time all succeed.

Builds (once, cached in ``--work``) a synthetic beets library of
``--tracks`` tracks: each a cheap synthesised melody (random notes with
harmonics and noise, ``--seconds`` long) fingerprinted into a real
:class:`FingerprintIndex`, and a random 64-dimensional vector per track in
the real embedded store, so same-vibe suggestions are answered as in a
real library. Every track has a FLAC file (a suggestion is offered only
while its file is the one analysed); the tracks the clips come from hold
all their audio (placement reads it), the others their first second.

Then starts the real server (``create_app`` behind werkzeug's threaded
server, in its own process, on loopback) and from this process sends
5 s clips (pink noise at 10 dB SNR, AAC-encoded, as a phone sends them):

* ``sequential``: one request at a time, p50/p95/max of the whole POST
  (upload, decode, identify, 5 suggestions, JSON);
* ``concurrent``: ``--requests`` requests, ``--concurrency`` at a time:
  failures (non-200, or the wrong track) out of the total, p50/p95, rate.

Usage: python bench/listen.py [--tracks 1000] [--work /tmp/soundslike-listen-bench]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

RATE = 16000
DIM = 64
QUERY_TRACKS = 25


def synth(seed: int, seconds: float) -> np.ndarray:
    """A melody of random notes (3 harmonics, plucked envelope) over soft
    noise: distinct landmarks per seed, a few ms to make."""
    rng = np.random.default_rng(10_000 + seed)
    n = int(seconds * RATE)
    out = rng.standard_normal(n).astype(np.float32) * 0.01
    pos = 0
    while pos < n:
        length = int(RATE * rng.uniform(0.12, 0.5))
        end = min(n, pos + length)
        t = np.arange(end - pos, dtype=np.float32) / RATE
        freq = 220.0 * 2 ** (rng.integers(0, 36) / 12)
        env = np.minimum(1.0, t * 80) * np.exp(-t * rng.uniform(3, 9))
        tone = sum(a * np.sin(2 * np.pi * freq * k * t)
                   for k, a in ((1, 0.6), (2, 0.25), (3, 0.12)))
        out[pos:end] += (env * tone).astype(np.float32)
        if rng.random() < 0.4:  # a second voice
            f2 = freq * 2 ** (rng.choice([3, 4, 7]) / 12)
            out[pos:end] += (0.3 * env * np.sin(2 * np.pi * f2 * t)).astype(np.float32)
        pos = end
    return out / max(1e-6, float(np.abs(out).max())) * 0.8


def configure(work: str):
    from beets import config

    from beetsplug.soundslike.settings import DEFAULTS, load_settings

    config.clear()
    config.read(user=False, defaults=True)
    config["create_backup_before_migrations"] = False
    config["soundslike"].add(DEFAULTS)
    config["soundslike"]["model"] = "bench-random-vectors"
    config["soundslike"]["store_dir"] = os.path.join(work, "soundslike")
    return load_settings(config["soundslike"], os.path.join(work, "library.db"))


def open_library(work: str):
    from beets.library import Library

    return Library(os.path.join(work, "library.db"), os.path.join(work, "music"))


def build(work: str, tracks: int, seconds: float) -> None:
    # v2: records with identities; v3: every track has a file
    marker = os.path.join(work, f"built-v3-{tracks}-{seconds:g}")
    if os.path.exists(marker):
        return
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.join(work, "music"))
    from beets.library import Item

    from beetsplug.soundslike.fingerprint import FingerprintIndex, reference_landmarks
    from beetsplug.soundslike.provenance import SOURCE_FIELD, file_identity
    from beetsplug.soundslike.store import open_store

    settings = configure(work)
    lib = open_library(work)
    index = FingerprintIndex(settings.fingerprint_dir)
    store = open_store(settings)
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    ids, vectors, payloads = [], [], []
    for n in range(tracks):
        samples = synth(n, seconds)
        path = os.path.join(work, "music", f"track{n:04d}.flac")
        # Every track has a file, as in a real library (a suggestion is
        # offered only while its file is the one analysed); only the
        # tracks clips come from are read (placement), so the others hold
        # their first second, which keeps the build small and quick.
        kept = samples if n < QUERY_TRACKS else samples[:RATE]
        subprocess.run(
            ["ffmpeg", "-v", "error", "-y", "-f", "f32le", "-ar", str(RATE), "-ac", "1",
             "-i", "pipe:0", "-c:a", "flac", path], input=kept.tobytes(), check=True)
        item = Item(path=path.encode(), title=f"Track {n}", artist=f"Artist {n % 97}",
                    album=f"Album {n % 211}", length=seconds)
        lib.add(item)
        # Records carry the identity of their file, as `beet embed`
        # writes them: an answer names only an item whose records are
        # its file's.
        source = file_identity(path)
        index.add_landmarks(item.id, reference_landmarks(samples, RATE), source=source)
        ids.append(item.id)
        vectors.append(rng.standard_normal(DIM).astype(np.float32))
        payloads.append({"path": path, SOURCE_FIELD: source})
        if (n + 1) % 100 == 0:
            index.flush()
            print(f"  built {n + 1}/{tracks} tracks ({time.perf_counter() - started:.0f} s)",
                  file=sys.stderr, flush=True)
    index.flush()
    index.close()
    collection = settings.spec.collection
    for start in range(0, len(ids), 256):
        store.upsert(collection, ids[start:start + 256], np.stack(vectors[start:start + 256]),
                     payloads[start:start + 256])
    store.optimize()
    store.close()
    lib._close()
    open(marker, "w").close()


def serve(work: str, port_file: str) -> None:
    """The server process: one Identifier, the listen app, werkzeug threaded."""
    import logging

    from werkzeug.serving import make_server

    from beetsplug.soundslike.identify import Identifier
    from beetsplug.soundslike.web import create_app

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    settings = configure(work)
    lib = open_library(work)

    def no_model():
        raise RuntimeError("the bench library has no model")

    identifier = Identifier(settings, lib, no_model)
    app = create_app(identifier, lib, similar=5)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    with open(port_file + ".tmp", "w") as handle:
        handle.write(str(server.server_port))
    os.replace(port_file + ".tmp", port_file)
    server.serve_forever()


def clips(work: str, count: int, seconds: float, track_seconds: float) -> list[tuple[int, bytes]]:
    import gen_audio

    rng = np.random.default_rng(1)
    out = []
    for n in range(count):
        track = n % QUERY_TRACKS
        start = float(rng.uniform(0, track_seconds - seconds - 0.5))
        samples = synth(track, track_seconds)[int(start * RATE): int((start + seconds) * RATE)]
        noisy = gen_audio.add_noise(samples, 10.0, seed=n)
        proc = subprocess.run(
            ["ffmpeg", "-v", "error", "-f", "f32le", "-ar", str(RATE), "-ac", "1", "-i", "pipe:0",
             "-c:a", "aac", "-b:a", "64k", "-f", "adts", "pipe:1"],
            input=np.asarray(noisy, np.float32).tobytes(), capture_output=True, check=True)
        out.append((track, proc.stdout))
    return out


def post(port: int, data: bytes) -> tuple[int, dict, float]:
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="clip"; filename="clip.aac"\r\n'
            "Content-Type: audio/aac\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", "/api/identify", body,
                     {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        response = conn.getresponse()
        payload = response.read()
        elapsed = time.perf_counter() - started
        try:
            answer = json.loads(payload)
        except ValueError:
            answer = {"error": payload[:200].decode("latin-1")}
        return response.status, answer, elapsed
    except OSError as exc:
        return 0, {"error": str(exc)}, time.perf_counter() - started
    finally:
        conn.close()


def pct(values, q) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracks", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=40.0, help="length of each track")
    parser.add_argument("--clip-seconds", type=float, default=5.0)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--sequential", type=int, default=60)
    parser.add_argument("--work", default="/tmp/soundslike-listen-bench")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.work, args.port_file)
        return

    t = time.perf_counter()
    build(args.work, args.tracks, args.seconds)
    print(f"library: {args.tracks} tracks of {args.seconds:g} s "
          f"(ready in {time.perf_counter() - t:.0f} s, cached in {args.work})")
    port_file = os.path.join(args.work, "port")
    if os.path.exists(port_file):
        os.unlink(port_file)
    server = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve",
                               "--work", args.work, "--port-file", port_file])
    try:
        deadline = time.time() + 120
        while not os.path.exists(port_file):
            if server.poll() is not None or time.time() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.1)
        port = int(open(port_file).read())
        uploads = clips(args.work, 40, args.clip_seconds, args.seconds)
        print(f"clips: {len(uploads)} of {args.clip_seconds:g} s, pink noise 10 dB, AAC "
              f"({statistics.mean(len(d) for _, d in uploads) / 1024:.0f} KiB each)")

        def check(track, result):
            status, answer, elapsed = result
            ok = status == 200 and (answer.get("match") or {}).get("title") == f"Track {track}" \
                and len(answer.get("similar", [])) == 5
            return ok, elapsed, status, answer

        for track, data in uploads[:3]:  # warm up: page cache, first requests
            post(port, data)
        seq, seq_fail = [], 0
        for n in range(args.sequential):
            track, data = uploads[n % len(uploads)]
            ok, elapsed, status, answer = check(track, post(port, data))
            seq.append(elapsed)
            seq_fail += not ok
        print(f"sequential: {args.sequential} requests, p50 {1000 * pct(seq, 50):.0f} ms, "
              f"p95 {1000 * pct(seq, 95):.0f} ms, max {1000 * max(seq):.0f} ms, "
              f"failed {seq_fail}")

        def one(n):
            track, data = uploads[n % len(uploads)]
            return check(track, post(port, data))

        started = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            results = list(pool.map(one, range(args.requests)))
        wall = time.perf_counter() - started
        failed = [(status, answer) for ok, _, status, answer in results if not ok]
        times = [elapsed for _, elapsed, _, _ in results]
        print(f"concurrent: {args.requests} requests, {args.concurrency} at a time: "
              f"failed {len(failed)}/{args.requests}, p50 {1000 * pct(times, 50):.0f} ms, "
              f"p95 {1000 * pct(times, 95):.0f} ms, {args.requests / wall:.1f} requests/s")
        for status, answer in failed[:5]:
            print(f"  failure: {status} {json.dumps(answer)[:200]}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
