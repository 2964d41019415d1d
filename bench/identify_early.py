#!/usr/bin/env python3
"""How early in a first ``beet embed`` the whole library can be identified.

Builds a library of N generated tracks (imported without analysis), starts
``beet embed``, and meanwhile asks ``beet identify`` every few seconds for
a noisy clip of the last track (the highest id, which a run reaches last).
Prints when the clip was first named, the wall time of the whole run, and
the ratio (issue 17's target: under 10% at 1,000 tracks). The model is a
random-weight Wav2Vec2 of the base or large architecture (bench/embed.py
builds it; speed does not depend on the weights), or the tests' tiny one.

Usage: python bench/identify_early.py [--tracks 1000] [--seconds 30]
       [--arch base|large|tiny] [--work DIR] [--poll 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import gen_audio  # noqa: E402


def beet(env, *args):
    return subprocess.run([sys.executable, "-m", "beets", *args], env=env,
                          capture_output=True, text=True)


def build(work: str, tracks: int, seconds: float, arch: str) -> tuple[dict, str]:
    shutil.rmtree(work, ignore_errors=True)
    beetsdir, incoming = os.path.join(work, "beets"), os.path.join(work, "incoming")
    os.makedirs(beetsdir)
    os.makedirs(incoming)
    model = os.path.join(work, "model")
    if arch == "tiny":
        import tiny_model

        tiny_model.build_tiny_model(model, layers=2, hidden=32)
        layer = 2
    else:
        import embed as embed_bench

        embed_bench.build(arch, model)
        layer = 12
    for n in range(tracks):
        gen_audio.write(gen_audio.piece(2000 + n, seconds), os.path.join(incoming, f"t{n:04d}.flac"),
                        tags={"title": f"Track {n}", "artist": f"Artist {n % 17}"})
    with open(os.path.join(beetsdir, "config.yaml"), "w") as handle:
        handle.write(
            f"directory: {work}/music\nlibrary: {beetsdir}/library.db\n"
            "plugins: soundslike\ncreate_backup_before_migrations: no\n"
            "import:\n  copy: no\n  write: no\n  quiet: yes\n"
            f"soundslike:\n  auto: no\n  model: {model}\n  layer: {layer}\n"
        )
    env = dict(os.environ, BEETSDIR=beetsdir)
    result = beet(env, "import", "-A", incoming)
    if result.returncode != 0:
        raise SystemExit(result.stderr)
    last = tracks - 1
    clip = os.path.join(work, "clip.wav")
    rate = gen_audio.RATE
    samples = gen_audio.piece(2000 + last, seconds)[int(seconds / 3 * rate): int((seconds / 3 + 6) * rate)]
    gen_audio.write(gen_audio.add_noise(samples, 10.0, seed=1), clip)
    return env, clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--arch", default="base", choices=("base", "large", "tiny"))
    parser.add_argument("--work", default="/tmp/soundslike-bench-early")
    parser.add_argument("--poll", type=float, default=3.0)
    args = parser.parse_args()

    env, clip = build(args.work, args.tracks, args.seconds, args.arch)
    title = f"Track {args.tracks - 1}"
    started = time.perf_counter()
    run = subprocess.Popen([sys.executable, "-m", "beets", "embed"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    found = None
    while run.poll() is None:
        if found is None:
            answer = beet(env, "identify", "--json", "--similar", "0", clip).stdout
            lines = [json.loads(line) for line in answer.splitlines() if line.startswith("{")]
            if lines and (lines[0].get("match") or {}).get("title") == title:
                found = time.perf_counter() - started
        time.sleep(args.poll)
    total = time.perf_counter() - started
    if run.returncode != 0:
        raise SystemExit(run.stderr.read())
    print(f"{args.tracks} tracks of {args.seconds:g} s, {args.arch} model, 'beet embed' "
          f"{total:.0f} s ({total / args.tracks:.2f} s a track)")
    if found is None:
        print("the last track was not identifiable before the run ended")
    else:
        print(f"'beet identify' named a clip of the last track after {found:.0f} s: "
              f"{100 * found / total:.1f}% of the run (target < 10%; polled every "
              f"{args.poll:g} s, so up to that much late)")


if __name__ == "__main__":
    main()
