#!/usr/bin/env python3
"""Peak memory of ``beet embed`` as the library grows: it must stay flat.

For libraries of N generated 30-second tracks (default 100, 400, 1600),
runs ``beet embed`` in a fresh process and prints its peak RSS and rate.
Decoded audio and landmarks are freed as soon as each batch is stored and
the store and the fingerprint index live on disk, so the peak should not
grow with N (a small random-weight model keeps the run short; the real
model adds its own constant size).

``--seconds`` makes the tracks shorter: memory growth with the number of
tracks is what this measures, and 5-second tracks let a 10,000-track
library run in half an hour on 2 cores.

Usage: python bench/embed_memory.py [--sizes 100,400,1600] [--seconds 30]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import gen_audio  # noqa: E402
import tiny_model  # noqa: E402

PROBE = """
import resource, sys
from beets import ui
ui._raw_main(sys.argv[1:])
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


ADD_ITEMS = """
import os, sys
from beets import config
from beets.library import Item, Library
config.read()
lib = Library(config["library"].as_filename(), config["directory"].as_filename())
with lib.transaction():
    for name in sorted(os.listdir(sys.argv[1])):
        lib.add(Item.from_path(os.path.join(sys.argv[1], name)))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,400,1600")
    parser.add_argument("--work", default="/tmp/soundslike-bench-memory")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each track")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    model = tiny_model.build_tiny_model(os.path.join(args.work, "model"), layers=2, hidden=32)
    pool = os.path.join(args.work, "pool")
    os.makedirs(pool)
    sources = [gen_audio.write(gen_audio.piece(seed, args.seconds), os.path.join(pool, f"{seed}.mp3"))
               for seed in range(20)]

    print(f"tracks of {args.seconds:g} s")
    print("| tracks | beet embed s | tracks/min | peak RSS MB |")
    print("| --- | --- | --- | --- |")
    for size in sizes:
        lib_dir = os.path.join(args.work, f"lib{size}")
        beetsdir = os.path.join(lib_dir, "beets")
        incoming = os.path.join(lib_dir, "incoming")
        os.makedirs(beetsdir)
        os.makedirs(incoming)
        for n in range(size):
            target = os.path.join(incoming, f"t{n:05d}.mp3")
            os.link(sources[n % len(sources)], target)
        with open(os.path.join(beetsdir, "config.yaml"), "w") as handle:
            handle.write(
                f"directory: {lib_dir}/music\nlibrary: {beetsdir}/library.db\n"
                "plugins: soundslike\ncreate_backup_before_migrations: no\n"
                "import:\n  copy: no\n  write: no\n  quiet: yes\n"
                "  duplicate_action: keep\n"
                f"soundslike:\n  auto: no\n  model: {model}\n  layer: 2\n"
            )
        env = dict(os.environ, BEETSDIR=beetsdir)
        # Items go in through beets' library API: 'beet import' of 10,000
        # files takes most of an hour, and it is 'beet embed' that is measured.
        subprocess.run([sys.executable, "-c", ADD_ITEMS, incoming], env=env, check=True,
                       capture_output=True)
        listed = subprocess.run([sys.executable, "-m", "beets", "ls", "-f", "$id"], env=env,
                                check=True, capture_output=True, text=True).stdout
        assert len(listed.splitlines()) == size, f"imported {len(listed.splitlines())} of {size}"
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-c", PROBE, "embed"], env=env,
                                capture_output=True, text=True)
        elapsed = time.perf_counter() - started
        rss = [l for l in result.stderr.splitlines() if l.startswith("MAXRSS_KB")]
        peak = int(rss[-1].split()[1]) / 1024 if rss else float("nan")
        print(f"| {size} | {elapsed:.0f} | {60 * size / elapsed:.0f} | {peak:.0f} |", flush=True)


if __name__ == "__main__":
    main()
