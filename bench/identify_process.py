#!/usr/bin/env python3
"""Whole ``beet identify`` processes against a large fingerprint index.

Usage::

    python bench/fingerprint_scale.py --sizes 10000          # builds /tmp/fpscale
    python bench/identify_process.py [--work /tmp/fpscale] [--runs 16] [--cold]

``bench/fingerprint_scale.py`` leaves an index of real and synthetic
tracks and the clips it identified in its work folder. This bench puts a
beets library in front of that index (the real tracks as items 1..8, the
ids the index knows them by; the synthetic tracks have no items) and times
what a user waits for: ``beet identify --similar 0 CLIP`` from process
start to exit, beets' start-up, decoding the clip and opening
the index included. It prints p50/p95 per kind of clip and how many
answers named the right track.

With ``--cold`` the index files are evicted from the page cache before
each process (``posix_fadvise(DONTNEED)``; the index only, not Python or
beets): what the first identify after a day of other work waits for, or
every identify when the index is larger than RAM.

Targets (issue #5): at most 1.5 s at 10,000 tracks and 2.5 s at 100,000,
on 2 cores.
"""

from __future__ import annotations

import argparse
import compileall
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.scale import evict  # noqa: E402

#: Real tracks at the front of the index, as bench/fingerprint_scale.py adds them.
N_REAL = 8


def make_library(beetsdir: Path, corpus: Path, index_dir: Path) -> None:
    """A beets library whose items 1..N_REAL are the index's real tracks."""
    beetsdir.mkdir(parents=True)
    store = beetsdir / "store"
    store.mkdir()
    os.symlink(index_dir, store / "fingerprints")
    (beetsdir / "config.yaml").write_text(
        f"directory: {beetsdir}/music\nlibrary: {beetsdir}/library.db\n"
        "plugins: soundslike\ncreate_backup_before_migrations: no\n"
        f"soundslike:\n  store_dir: {store}\n  auto: no\n"
    )
    os.environ["BEETSDIR"] = str(beetsdir)
    from beets import config
    from beets.library import Item, Library

    config.read()
    lib = Library(str(beetsdir / "library.db"), str(beetsdir / "music"))
    rows = [r for r in csv.DictReader(open(corpus / "tracks.csv")) if r["in_library"] == "1"][:N_REAL]
    for k, row in enumerate(rows, start=1):
        item = Item(path=str(corpus / row["file"]), title=row["title"], artist=row["package"])
        lib.add(item)
        if item.id != k:
            raise SystemExit(f"library item {item.id} should be {k}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", nargs="?", default="/tmp/soundslike-dev-corpus")
    ap.add_argument("--work", default="/tmp/fpscale", help="bench/fingerprint_scale.py's work folder")
    ap.add_argument("--runs", type=int, default=16, help="clips timed (spread over the kinds)")
    ap.add_argument("--cold", action="store_true", help="evict the index from the page cache before each run")
    args = ap.parse_args()
    work, corpus = Path(args.work), Path(args.corpus)
    index_dir = work / "index"
    manifest = index_dir / "MANIFEST.json"
    if not manifest.exists():
        raise SystemExit(f"no index in {index_dir}: run bench/fingerprint_scale.py first")
    import soundfile as sf

    data = np.load(work / "clips.npz")
    clips, truth, kinds, rate = data["clips"], data["truth"], data["kinds"], int(data["rate"])
    tmp = Path(tempfile.mkdtemp(prefix="identify-process-"))
    try:
        make_library(tmp / "beets", corpus, index_dir)
        env = dict(os.environ, BEETSDIR=str(tmp / "beets"), PYTHONPATH=str(REPO))
        segments = len(json.loads(manifest.read_text()).get("segments", []))
        # A user's install holds the plugin's bytecode (pip writes it, or
        # Python on the first run); where none may be written
        # (PYTHONDONTWRITEBYTECODE, as here), every process would compile
        # the sources again, and that would be timed too.
        compileall.compile_dir(str(REPO / "beetsplug"), quiet=1)
        per_kind: dict[str, list] = {}
        # The clips come in groups of the four kinds, so the first N hold all four.
        for i in range(min(args.runs, len(clips))):
            path = tmp / f"clip{i:02d}.wav"
            sf.write(path, clips[i], rate)
            if args.cold:
                evict(index_dir)
            started = time.perf_counter()
            out = subprocess.run([sys.executable, "-m", "beets", "identify", "--json", "--similar", "0",
                                  str(path)], capture_output=True, text=True, env=env)
            wall = time.perf_counter() - started
            answer = json.loads(out.stdout.splitlines()[-1]) if out.stdout.strip() else {}
            if answer.get("error"):
                # fingerprint_scale.py cuts clips at random places; one that
                # fell on silence is refused, as it should be, and not timed.
                print(f"  clip {i} ({kinds[i]}): {answer['error']}", file=sys.stderr)
                continue
            if out.returncode != 0 or "match" not in answer:
                raise SystemExit(f"beet identify failed:\n{out.stderr}")
            found = answer["match"] is not None and answer["match"]["id"] == int(truth[i])
            per_kind.setdefault(str(kinds[i]), []).append((wall, found))
        cache = "evicted from the page cache before each run" if args.cold else "as the page cache has it"
        print(f"index: {index_dir} ({segments} segments, {cache}); whole 'beet identify --similar 0' processes:")
        for kind, rows in per_kind.items():
            walls = np.array([w for w, _ in rows])
            print(f"  {kind:<8} found {sum(f for _, f in rows)}/{len(rows)}  p50 {np.percentile(walls, 50):.2f} s"
                  f"  p95 {np.percentile(walls, 95):.2f} s  max {walls.max():.2f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
