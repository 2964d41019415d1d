#!/usr/bin/env python3
"""Wall time of ``beet similar`` playlist options at 10,000 tracks.

Builds a synthetic library (N beets items with tags, clustered random
vectors of the default model's size in the embedded store), then times
whole ``beet similar`` processes, process start included:
plain, ``--where``, ``--variety 1``, ``--to``, ``--max-per-artist``, ``-a``.
Target: each under 2 s.

Usage: python bench/playlists.py [--tracks 10000] [--dim 1024] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np


def build(work: str, tracks: int, dim: int) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    beetsdir = os.path.join(work, "beets")
    os.makedirs(beetsdir)
    model = "facebook/wav2vec2-large-xlsr-53"
    with open(os.path.join(beetsdir, "config.yaml"), "w") as handle:
        handle.write(
            f"directory: {work}/music\nlibrary: {beetsdir}/library.db\n"
            "plugins: soundslike\ncreate_backup_before_migrations: no\n"
            f"soundslike:\n  model: {model}\n"
        )
    env = dict(os.environ, BEETSDIR=beetsdir)
    os.environ["BEETSDIR"] = beetsdir

    from beets import config
    from beets.library import Item, Library

    from beetsplug.soundslike.indexer import payload_for
    from beetsplug.soundslike.settings import DEFAULTS, load_settings
    from beetsplug.soundslike.store import open_store

    config.read()
    config["soundslike"].add(DEFAULTS)
    lib = Library(config["library"].as_filename(), config["directory"].as_filename())
    settings = load_settings(config["soundslike"], lib.path)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((50, dim)).astype(np.float32)
    started = time.perf_counter()
    items = []
    with lib.transaction():
        for album_no in range(tracks // 10):
            artist = f"Artist {album_no % 700}"
            album_items = []
            for n in range(10):
                item = Item(
                    path=os.fsencode(f"{work}/music/{artist}/Album {album_no}/{n:02d}.mp3"),
                    title=f"Track {album_no}-{n}", artist=artist, albumartist=artist,
                    album=f"Album {album_no}", year=1960 + album_no % 60, length=200.0,
                    track=n + 1,
                )
                album_items.append(item)
            album = lib.add_album(album_items)
            items.extend(album.items())
    print(f"library of {len(items)} items in {time.perf_counter() - started:.0f} s",
          file=sys.stderr)
    started = time.perf_counter()
    with open_store(settings) as store:
        for start in range(0, len(items), 500):
            chunk = items[start:start + 500]
            centre = centres[rng.integers(0, len(centres), len(chunk))]
            vecs = centre + 0.6 * rng.standard_normal((len(chunk), dim)).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            store.upsert(settings.spec.collection, [i.id for i in chunk], vecs,
                         [payload_for(i, settings) for i in chunk])
        store.optimize()
    print(f"store of {len(items)} vectors in {time.perf_counter() - started:.0f} s",
          file=sys.stderr)
    lib._close()
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=10000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--work", default="/tmp/soundslike-bench-playlists")
    args = parser.parse_args()
    env = build(args.work, args.tracks, args.dim)

    cases = [
        ("similar (plain)", ["title:Track 5-3", "-n", "20"]),
        ("--where year:1990..1999", ["title:Track 5-3", "-n", "20", "--where", "year:1990..1999"]),
        ("--variety 1", ["title:Track 5-3", "-n", "20", "--variety", "1"]),
        ("--to", ["title:Track 5-3", "--to", "title:Track 777-2", "-n", "10"]),
        ("--max-per-artist 1", ["artist:Artist 5", "-n", "20", "--max-per-artist", "1"]),
        ("-a (albums)", ["-a", "album:Album 12", "-n", "5"]),
    ]
    print(f"\n{args.tracks} tracks, {args.dim}-dim vectors, median of {args.runs} "
          "whole 'beet similar' processes")
    print("| command | wall s (median) | max |")
    print("| --- | --- | --- |")
    for label, extra in cases:
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            result = subprocess.run([sys.executable, "-m", "beets", "similar", *extra],
                                    env=env, capture_output=True, text=True)
            times.append(time.perf_counter() - started)
            if result.returncode != 0:
                raise SystemExit(f"{label} failed: {result.stderr}")
        print(f"| {label} | {statistics.median(times):.2f} | {max(times):.2f} |", flush=True)
    print("target: each under 2 s including process start")


if __name__ == "__main__":
    main()
