#!/usr/bin/env python3
"""kill -9 in the middle of ``beet embed``, then ``beet embed`` again.

Builds a library of N short generated tracks (imported without analysis),
starts ``beet embed``, kills it with SIGKILL after a random delay once the
store holds points, runs ``beet embed`` again, and prints: items, points
after recovery, duplicate points (same item or same path twice), orphan
points (no such item), fingerprinted items, and whether ``beet embed
--check`` finds the store and library in agreement. Targets: points ==
items, 0 duplicates, 0 orphans. Repeats for several kill times.

Then removal rounds (issue 16): while ``beet embed`` runs, the highest
item is removed again and again (every other time with the plugin off,
``beet -P soundslike rm``, which leaves its records behind) and a new
track is imported at once with the plugin's import stage on, so beets
gives it the removed id. After the run and a second ``beet embed`` it
prints items, points, fingerprints, orphans (records of removed items),
records of another file (identity not the live item's file), wrong
answers (``beet identify`` of a removed track naming a live item), and
the same after ``beet embed --check``. Targets: 0 records of another
file and 0 wrong answers at every step; 0 orphans after the check.

Usage: python bench/faults.py [--items 300] [--rounds 3] [--removal-rounds 2] [--work DIR]
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


def open_library(env):
    """The library and the plugin's settings of the bench's BEETSDIR, read
    afresh (the config of another library may be loaded)."""
    os.environ["BEETSDIR"] = env["BEETSDIR"]
    from beets import config
    from beets.library import Library

    from beetsplug.soundslike.settings import DEFAULTS, load_settings

    config.clear()
    config.read()
    config["soundslike"].add(DEFAULTS)
    lib = Library(config["library"].as_filename(), config["directory"].as_filename())
    return lib, load_settings(config["soundslike"], lib.path)


def inspect(env) -> dict:
    """Points, duplicates and orphans, read straight from store and library."""
    from beetsplug.soundslike.fingerprint import FingerprintIndex
    from beetsplug.soundslike.store import open_store

    lib, settings = open_library(env)
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


def integrity(env) -> dict:
    """Items, points, fingerprints, orphans and records of another file,
    read straight from the store, the index and the files."""
    from beetsplug.soundslike.fingerprint import FingerprintIndex
    from beetsplug.soundslike.provenance import USABLE, Records, audit
    from beetsplug.soundslike.store import open_store

    lib, settings = open_library(env)
    items = {item.id: item for item in lib.items()}
    with open_store(settings) as store:
        payloads = store.payloads(settings.spec.collection)
    fps = FingerprintIndex(settings.fingerprint_dir)
    printed, sources = set(fps.item_ids()), fps.sources()
    fps.close()
    lib._close()
    found = audit([items[i] for i in set(payloads) | printed if i in items],
                  payloads, sources, printed, Records())
    return {
        "items": len(items),
        "points": len(payloads),
        "fingerprints": len(printed),
        "orphans": len(set(payloads) - set(items)) + len(printed - set(items)),
        "other": sum(1 for v in list(found.points.values()) + list(found.prints.values())
                     if v not in USABLE),
    }


def wrong_answers(env, clips: dict[str, int]) -> int:
    """Clips of removed tracks that ``beet identify`` names as a live item."""
    if not clips:
        return 0
    import json

    out = beet(env, "identify", "--json", "--similar", "0", *clips).stdout
    answers = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return sum(1 for a in answers if a.get("match"))


def removal_round(work: str, items: int, rng: random.Random) -> None:
    env = build(work, items)
    with open(os.path.join(work, "auto.yaml"), "w") as handle:
        handle.write("soundslike:\n  auto: yes\n")
    proc = subprocess.Popen([sys.executable, "-m", "beets", "embed"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    qdir = os.path.join(env["BEETSDIR"], "soundslike", "qdrant")
    while proc.poll() is None and not (os.path.isdir(qdir) and any(os.scandir(qdir))):
        time.sleep(0.05)
    clips: dict[str, int] = {}
    removed = plugin_off = 0
    n = 0
    while proc.poll() is None and removed < max(4, items // 10):
        ids = [int(x) for x in beet(env, "ls", "-f", "$id").stdout.split()]
        highest = max(ids)
        title = beet(env, "ls", "-f", "$title", f"id:{highest}").stdout.strip()
        off = len(clips) % 2 == 1
        victims = [(highest, title, off)]
        if removed % 3 == 2:
            # An id below the highest, with the plugin off: beets never
            # reuses it, so its records stay orphans until --check.
            low = rng.choice(sorted(ids)[: len(ids) // 2])
            low_title = beet(env, "ls", "-f", "$title", f"id:{low}").stdout.strip()
            victims.append((low, low_title, True))
        for victim, name, plugin_was_off in victims:
            beet(env, *(["-P", "soundslike"] if plugin_was_off else []), "rm", "-f",
                 f"id:{victim}")
            removed += 1
            plugin_off += plugin_was_off
            if name.startswith("Track "):
                seed = 1000 + int(name.split()[1])
                clip = os.path.join(work, f"clip{seed}.wav")
                gen_audio.write(gen_audio.piece(seed, 4.0)[int(0.5 * gen_audio.RATE):
                                                           int(3.5 * gen_audio.RATE)], clip)
                clips[clip] = seed
        new = os.path.join(work, f"new{n:03d}.flac")
        gen_audio.write(gen_audio.piece(5000 + n, 4.0), new,
                        tags={"title": f"New {n}", "artist": "Newcomer"})
        n += 1
        beet(env, "-c", os.path.join(work, "auto.yaml"), "import", "-A", new)
        time.sleep(rng.uniform(0.0, 0.5))
    proc.wait()
    rows = [("after the run", integrity(env), wrong_answers(env, clips))]
    beet(env, "embed")
    rows.append(("after a second beet embed", integrity(env), wrong_answers(env, clips)))
    check = beet(env, "embed", "--check").stdout
    rows.append(("after beet embed --check", integrity(env), wrong_answers(env, clips)))
    agree = "agree" if "store and library agree" in beet(env, "embed", "--check").stdout else "DRIFT"
    for label, row, wrong in rows:
        print(f"| {label} | {removed} ({plugin_off} with -P) | {row['items']} | {row['points']} | "
              f"{row['fingerprints']} | {row['orphans']} | {row['other']} | {wrong} |", flush=True)
    print(f"check: {check.splitlines()[0] if check else ''}...; then: {agree}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--removal-rounds", type=int, default=2)
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

    if args.removal_rounds:
        print()
        print("| removal round, state | removed | items | points | fingerprints | orphans | "
              "records of another file | wrong answers |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for round_no in range(1, args.removal_rounds + 1):
        print(f"| round {round_no} | | | | | | | |", flush=True)
        removal_round(os.path.join(args.work, f"removal{round_no}"), args.items, rng)
    if args.removal_rounds:
        print("targets: records of another file 0 and wrong answers 0 in every row; "
              "orphans 0 after the check")


if __name__ == "__main__":
    main()
