#!/usr/bin/env python3
"""kill -9 in the middle of ``beet embed``, then ``beet embed`` again.

Builds a library of N short generated tracks (imported without analysis),
starts ``beet embed``, kills it with SIGKILL after a random delay once the
store holds points, runs ``beet embed`` again, and prints: items, points
after recovery, duplicate points (same item or same path twice), orphan
points (no such item), fingerprinted items, and whether ``beet embed
--check`` finds the store and library in agreement. Targets: points ==
items, 0 duplicates, 0 orphans. Repeats for several kill times.

Usage: python bench/faults.py [--items 300] [--rounds 3] [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import gen_audio  # noqa: E402
import tiny_model  # noqa: E402


def beet(env, *args):
    return subprocess.run([sys.executable, "-m", "beets", *args], env=env,
                          capture_output=True, text=True)


def build(work: str, items: int) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    beetsdir = os.path.join(work, "beets")
    incoming = os.path.join(work, "incoming")
    os.makedirs(beetsdir)
    os.makedirs(incoming)
    model = tiny_model.build_tiny_model(os.path.join(work, "model"), layers=2, hidden=32)
    for n in range(items):
        gen_audio.write(gen_audio.piece(1000 + n, 4.0), os.path.join(incoming, f"t{n:04d}.flac"),
                        tags={"title": f"Track {n}", "artist": f"Artist {n % 13}"})
    with open(os.path.join(beetsdir, "config.yaml"), "w") as handle:
        handle.write(
            f"directory: {work}/music\nlibrary: {beetsdir}/library.db\n"
            "plugins: soundslike\ncreate_backup_before_migrations: no\n"
            "import:\n  copy: no\n  write: no\n  quiet: yes\n"
            f"soundslike:\n  auto: no\n  model: {model}\n  layer: 2\n"
            "  excerpts: 1\n  excerpt_seconds: 3\n"
        )
    env = dict(os.environ, BEETSDIR=beetsdir)
    result = beet(env, "import", "-A", incoming)
    if result.returncode != 0:
        raise SystemExit(result.stderr)
    return env


def inspect(env) -> dict:
    """Points, duplicates and orphans, read straight from store and library."""
    os.environ["BEETSDIR"] = env["BEETSDIR"]
    from beets import config
    from beets.library import Library

    from beetsplug.soundslike.fingerprint import FingerprintIndex
    from beetsplug.soundslike.settings import DEFAULTS, load_settings
    from beetsplug.soundslike.store import open_store

    config.clear()
    config.read()
    config["soundslike"].add(DEFAULTS)
    lib = Library(config["library"].as_filename(), config["directory"].as_filename())
    settings = load_settings(config["soundslike"], lib.path)
    item_ids = {item.id for item in lib.items()}
    with open_store(settings) as store:
        payloads = store.payloads(settings.spec.collection)
        count = store.count(settings.spec.collection)
    paths = Counter(p.get("path") for p in payloads.values())
    fps = FingerprintIndex(settings.fingerprint_dir)
    fingerprinted = fps.item_ids()
    fps.close()
    lib._close()
    return {
        "items": len(item_ids),
        "points": count,
        "duplicates": (count - len(payloads)) + sum(n - 1 for n in paths.values() if n > 1),
        "orphans": len(set(payloads) - item_ids),
        "fingerprinted": len(fingerprinted & item_ids),
        "fp_orphans": len(fingerprinted - item_ids),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", default="/tmp/soundslike-bench-faults")
    args = parser.parse_args()
    rng = random.Random(1)

    print("| round | killed after s | points before rerun | items | points after | "
          "duplicates | orphans | fingerprinted | check |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for round_no in range(1, args.rounds + 1):
        env = build(os.path.join(args.work, f"round{round_no}"), args.items)
        proc = subprocess.Popen([sys.executable, "-m", "beets", "embed"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        qdir = os.path.join(env["BEETSDIR"], "soundslike", "qdrant")
        started = time.monotonic()
        while proc.poll() is None and not (
            os.path.isdir(qdir) and any(os.scandir(qdir))
        ):
            time.sleep(0.1)
        delay = rng.uniform(1.0, 8.0)
        time.sleep(delay)
        killed_after = time.monotonic() - started
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        before = inspect(env)["points"]
        rerun = beet(env, "embed")
        after = inspect(env)
        check = beet(env, "embed", "--check").stdout
        agree = "agree" if "store and library agree" in check else "DRIFT"
        if rerun.returncode != 0:
            agree += f" (rerun exit {rerun.returncode})"
        print(f"| {round_no} | {killed_after:.1f} | {before} | {after['items']} | "
              f"{after['points']} | {after['duplicates']} | {after['orphans'] + after['fp_orphans']} | "
              f"{after['fingerprinted']} | {agree} |", flush=True)
    print("targets: points after == items, duplicates 0, orphans 0")


if __name__ == "__main__":
    main()
