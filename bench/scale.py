#!/usr/bin/env python3
"""How the vector store and the fingerprint index scale with library size.

Usage::

    python bench/scale.py [--sizes 1000,10000,100000] [--dim 1024]
                          [--out /tmp/soundslike-scale] [--json results.json]
                          [--plot docs/benchmarks-scale.png]

For synthetic libraries of each size the bench grows, per candidate, one
store (a library grows too: 1k, then 9k more, then 90k more) and measures
after each size:

* ``edge``: qdrant-edge-py through the plugin's own :class:`EdgeStore`
  (``upsert`` in batches of 256, ``optimize`` after the batch as
  ``beet embed`` does, ``vectors`` + ``nearest`` for ``similar``);
* ``local``: qdrant-client's local mode, ``QdrantClient(path=...)``
  (``upsert``, ``retrieve`` + ``query_points``);
* ``fingerprint``: a :class:`FingerprintIndex` of synthetic landmark sets
  as large as real 4-minute tracks give, plus three real generated tracks.

Numbers per candidate and size:

* insert throughput (points/s, batches of 256; HNSW build time apart);
* disk bytes per track (allocated blocks of the store folder);
* ``open``: in a fresh process, constructing the store and answering the
  first ``similar`` query (what a new ``beet similar`` process pays);
* ``similar`` p50/p95: centroid of 1-3 random seeds, nearest 10, seeds
  excluded, later queries in the same process; recall@10 against an exact
  search of the same vectors;
* peak RSS of that query process (``VmHWM``; ``ru_maxrss`` would include
  the bench's own pages inherited at fork);
* ``wall``: a whole ``python -c`` process that imports only what
  ``beet similar`` needs (numpy and ``beetsplug.soundslike.store``), opens the
  store and answers one query, median of 3 runs with the page cache warm,
  and once after evicting the store's files from the page cache
  (``posix_fadvise(DONTNEED)``; files only, not Python itself).

For the fingerprint index: build time (``add_landmarks`` + ``flush``,
including merges), bytes per track, fresh-process open + first identify,
identify p50/p95 for 5 s clips cut from the real tracks (and whether they
are found at the right offset), whole-process wall.

Candidates whose insert phase runs past ``--insert-budget`` seconds (or is
predicted to, from the previous size's rate) skip the larger sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BATCH = 256
COLLECTION = "soundslike_bench_l12_mean"
N_CLUSTERS = 300
SEED = 12345

# --------------------------------------------------------------------------
# synthetic library
# --------------------------------------------------------------------------


class Library:
    """Deterministic synthetic tracks: clustered unit vectors and payloads.

    Block ``b`` (ids ``b*BATCH+1 .. (b+1)*BATCH``) is generated from its own
    seed, so any block can be regenerated without holding the library."""

    def __init__(self, dim: int):
        self.dim = dim
        rng = np.random.default_rng(SEED)
        self.centres = rng.standard_normal((N_CLUSTERS, dim)).astype(np.float32)
        self.centres /= np.linalg.norm(self.centres, axis=1, keepdims=True)

    def block(self, b: int) -> tuple[list[int], np.ndarray, np.ndarray]:
        rng = np.random.default_rng((SEED, b))
        ids = list(range(b * BATCH + 1, (b + 1) * BATCH + 1))
        cluster = rng.integers(0, N_CLUSTERS, BATCH)
        vec = rng.standard_normal((BATCH, self.dim), dtype=np.float32)
        vec *= 1.2 / np.sqrt(self.dim)
        vec += self.centres[cluster]
        vec /= np.linalg.norm(vec, axis=1, keepdims=True)
        return ids, vec, cluster

    def payloads(self, ids, cluster) -> list[dict]:
        out = []
        for i, c in zip(ids, cluster):
            artist = f"Artist {int(c):03d}"
            album_id = i // 12
            out.append({
                "artist": artist, "albumartist": artist,
                "title": f"Track {i}", "album": f"Album {album_id}",
                "album_id": album_id,
                "path": f"/music/{artist}/Album {album_id}/{i % 12 + 1:02d} Track {i}.flac",
                "duration": 180.0 + (i % 120), "model": "facebook/wav2vec2-large",
                "layer": 12, "pooling": "mean",
            })
        return out

    def vectors_of(self, ids) -> dict[int, np.ndarray]:
        out = {}
        for b in sorted({(i - 1) // BATCH for i in ids}):
            bids, vec, _ = self.block(b)
            for k, i in enumerate(bids):
                if i in ids:
                    out[i] = vec[k]
        return out

    def exact_top(self, queries: list[tuple[np.ndarray, set]], n: int, k: int = 10) -> list[list[int]]:
        """Exact cosine top-k of each query vector over ids 1..n, excluding
        each query's seeds (streamed block by block)."""
        best = [(np.full(0, -9.0), np.zeros(0, np.int64)) for _ in queries]
        qmat = np.stack([q for q, _ in queries])
        for b in range((n + BATCH - 1) // BATCH):
            ids, vec, _ = self.block(b)
            ids = np.array(ids)
            keep = ids <= n
            ids, vec = ids[keep], vec[keep]
            sims = qmat @ vec.T
            for j, (_, seeds) in enumerate(queries):
                s = sims[j].copy()
                s[np.isin(ids, list(seeds))] = -9.0
                allv = np.concatenate([best[j][0], s])
                alli = np.concatenate([best[j][1], ids])
                top = np.argsort(-allv, kind="stable")[:k]
                best[j] = (allv[top], alli[top])
        return [list(map(int, b[1])) for b in best]


def centroid(vectors) -> np.ndarray:
    m = np.stack(list(vectors)).mean(axis=0)
    return (m / np.linalg.norm(m)).astype(np.float32)


# --------------------------------------------------------------------------
# query subprocess (what a fresh ``beet similar`` process does)
# --------------------------------------------------------------------------

QUERY_PREAMBLE = r"""
import sys, time, json, resource
def peak_rss_kb():
    # VmHWM: peak RSS of this process image. ru_maxrss would also count the
    # parent's pages at fork (Linux keeps it across exec).
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
import numpy as np
"""

QUERY_EDGE = QUERY_PREAMBLE + r"""
from beetsplug.soundslike.store import EdgeStore
t_import = time.perf_counter() - t0
path, name, seeds_file = sys.argv[1], sys.argv[2], sys.argv[3]
seeds = json.load(open(seeds_file))

def similar(store, s):
    vecs = store.vectors(name, s)
    m = np.stack(list(vecs.values())).mean(axis=0)
    m /= np.linalg.norm(m)
    return [h.id for h in store.nearest(name, m, 10, exclude=s)]

t1 = time.perf_counter()
store = EdgeStore(path)
first = similar(store, seeds[0])
t_open = time.perf_counter() - t1
lat, results = [], [first]
for s in seeds[1:]:
    t = time.perf_counter()
    results.append(similar(store, s))
    lat.append(time.perf_counter() - t)
load = []
if len(seeds) > 1:
    import qdrant_edge as qe
    for _ in range(5):
        t = time.perf_counter()
        sh = qe.EdgeShard.load(str(store.root / name))
        sh.close()
        load.append(time.perf_counter() - t)
print(json.dumps(dict(import_s=t_import, open_s=t_open, lat=lat, results=results,
                      shard_load_s=load,
                      rss_kb=peak_rss_kb())))
"""

QUERY_LOCAL = QUERY_PREAMBLE + r"""
import warnings
warnings.simplefilter("ignore")
from qdrant_client import QdrantClient, models
t_import = time.perf_counter() - t0
path, name, seeds_file = sys.argv[1], sys.argv[2], sys.argv[3]
seeds = json.load(open(seeds_file))

def similar(client, s):
    recs = client.retrieve(name, ids=s, with_payload=False, with_vectors=True)
    m = np.stack([np.asarray(r.vector, np.float32) for r in recs]).mean(axis=0)
    m /= np.linalg.norm(m)
    res = client.query_points(name, query=m.tolist(), limit=10, with_payload=True,
        query_filter=models.Filter(must_not=[models.HasIdCondition(has_id=s)]))
    return [int(p.id) for p in res.points]

t1 = time.perf_counter()
client = QdrantClient(path=path)
first = similar(client, seeds[0])
t_open = time.perf_counter() - t1
lat, results = [], [first]
for s in seeds[1:]:
    t = time.perf_counter()
    results.append(similar(client, s))
    lat.append(time.perf_counter() - t)
client.close()
print(json.dumps(dict(import_s=t_import, open_s=t_open, lat=lat, results=results,
                      rss_kb=peak_rss_kb())))
"""

QUERY_FP = QUERY_PREAMBLE + r"""
from beetsplug.soundslike.fingerprint import FingerprintIndex
t_import = time.perf_counter() - t0
path, clips_file, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = np.load(clips_file)
clips, rate = data["clips"][:n], int(data["rate"])
t1 = time.perf_counter()
index = FingerprintIndex(path)
t_ctor = time.perf_counter() - t1
m = index.identify(clips[0], rate)
t_open = time.perf_counter() - t1
lat, results = [], [[m.item_id, [m.offset] + m.alternatives] if m else None]
for c in clips[1:]:
    t = time.perf_counter()
    m = index.identify(c, rate)
    lat.append(time.perf_counter() - t)
    results.append([m.item_id, [m.offset] + m.alternatives] if m else None)
print(json.dumps(dict(import_s=t_import, open_s=t_open, ctor_s=t_ctor, lat=lat, results=results,
                      rss_kb=peak_rss_kb())))
"""


def run_child(code: str, args: list[str]) -> tuple[dict, float]:
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONDONTWRITEBYTECODE="1")
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=str(REPO), env=env)
    # Watchdog: a query process that grows past MAX_RSS is killed rather
    # than pushing a shared machine into swap or the OOM killer.
    killed = None
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) * 1024
        except (OSError, StopIteration):
            rss = 0
        if rss > MAX_RSS[0]:
            proc.kill()
            killed = rss
        time.sleep(0.05)
    out, err = proc.communicate()
    wall = time.perf_counter() - t
    if killed:
        raise ChildTooBig(f"query process passed {killed / 2**30:.1f} GiB RSS and was stopped")
    if proc.returncode != 0:
        raise RuntimeError(f"query process failed:\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1]), wall


class ChildTooBig(RuntimeError):
    pass


MAX_RSS = [8 * 2**30]


def evict(path: Path) -> None:
    """Drop the store's files from the page cache (a cold open)."""
    os.sync()
    for root, _, files in os.walk(path):
        for f in files:
            try:
                fd = os.open(os.path.join(root, f), os.O_RDONLY)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def disk_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total


def pct(values, q) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def measure(code: str, args_full: list[str], args_one: list[str], path: Path) -> dict:
    """Latency run (many queries), then 3 one-query wall runs warm, 1 cold."""
    res, _ = run_child(code, args_full)
    walls = [run_child(code, args_one)[1] for _ in range(3)]
    evict(path)
    cold_res, cold_wall = run_child(code, args_one)
    return dict(
        import_s=res["import_s"], open_s=res["open_s"], open_cold_s=cold_res["open_s"],
        p50_s=pct(res["lat"], 50), p95_s=pct(res["lat"], 95),
        rss_mb=res["rss_kb"] / 1024, wall_s=statistics.median(walls), wall_cold_s=cold_wall,
        results=res["results"], shard_load_s=res.get("shard_load_s"), ctor_s=res.get("ctor_s"),
    )


# --------------------------------------------------------------------------
# vector store candidates
# --------------------------------------------------------------------------


class EdgeCandidate:
    name = "edge"
    code = QUERY_EDGE

    def __init__(self, root: Path):
        from beetsplug.soundslike.store import EdgeStore

        self.path = root / "edge"
        shutil.rmtree(self.path, ignore_errors=True)
        self.store = EdgeStore(self.path, timeout=60)

    def upsert(self, ids, vec, payloads):
        self.store.upsert(COLLECTION, ids, vec, payloads)

    def optimize(self) -> dict:
        t = time.perf_counter()
        self.store.optimize()
        dt = time.perf_counter() - t
        with self.store._shard(COLLECTION) as shard:
            info = shard.info()
            extra = dict(segments=info.segments_count, points=info.points_count,
                         indexed=info.indexed_vectors_count)
        return dict(optimize_s=dt, **extra)

    def pause(self):
        pass

    def resume(self):
        pass


class LocalCandidate:
    name = "local"
    code = QUERY_LOCAL

    def __init__(self, root: Path, dim: int):
        from qdrant_client import QdrantClient, models

        self.models = models
        self.path = root / "local"
        shutil.rmtree(self.path, ignore_errors=True)
        self.client = QdrantClient(path=str(self.path))
        self.client.create_collection(
            COLLECTION, vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE))
        self.pause()

    def upsert(self, ids, vec, payloads):
        m = self.models
        points = [m.PointStruct(id=int(i), vector=v.tolist(), payload=p)
                  for i, v, p in zip(ids, vec, payloads)]
        self.client.upsert(COLLECTION, points=points, wait=True)

    def optimize(self) -> dict:
        return dict(optimize_s=0.0)

    def pause(self):
        """Local mode locks its folder: close it while a query process runs."""
        self.client.close()
        self.client = None

    def resume(self):
        from qdrant_client import QdrantClient

        self.client = QdrantClient(path=str(self.path))


def bench_vectors(cand, lib: Library, sizes, seeds, exact, work: Path, budget: float,
                  n_queries: int, log) -> list[dict]:
    rows = []
    have = 0
    rate = None
    skip_reason = None
    for n in sizes:
        row = dict(candidate=cand.name, size=n)
        rows.append(row)
        if skip_reason:
            row["skipped"] = skip_reason
            log(f"  {cand.name} {n}: skipped ({skip_reason})")
            continue
        if rate and (n - have) / rate > budget:
            skip_reason = (f"too slow: {rate:.0f} points/s would need ~{(n - have) / rate / 60:.0f} min "
                           f"to insert {n - have} more points, budget {budget / 60:.0f} min")
            row["skipped"] = skip_reason
            log(f"  {cand.name} {n}: skipped ({skip_reason})")
            continue
        cand.resume()
        t_ins = 0.0
        t_phase = time.perf_counter()
        added = 0
        for b in range(have // BATCH, (n + BATCH - 1) // BATCH):
            ids, vec, cluster = lib.block(b)
            keep = [k for k, i in enumerate(ids) if have < i <= n]
            ids = [ids[k] for k in keep]
            vec = vec[keep]
            payloads = lib.payloads(ids, cluster[keep])
            t = time.perf_counter()
            cand.upsert(ids, vec, payloads)
            t_ins += time.perf_counter() - t
            added += len(ids)
            if time.perf_counter() - t_phase > budget and added < n - have:
                skip_reason = (f"too slow: inserted {have + added} of {n} points in "
                               f"{time.perf_counter() - t_phase:.0f} s ({added / t_ins:.0f} points/s)")
                break
        if skip_reason:
            row["skipped"] = skip_reason
            row["insert_pts_s"] = added / t_ins
            log(f"  {cand.name} {n}: skipped ({skip_reason})")
            cand.pause()
            continue
        rate = added / t_ins
        have = n
        row["insert_pts_s"] = rate
        row["insert_s"] = t_ins
        row.update(cand.optimize())
        cand.pause()
        row["bytes_per_track"] = disk_bytes(cand.path) / n
        seeds_file = work / f"seeds-{n}.json"
        store_arg = str(cand.path)
        m = measure(cand.code, [store_arg, COLLECTION, str(seeds_file)],
                    [store_arg, COLLECTION, str(work / f"seeds1-{n}.json")], cand.path)
        results = m.pop("results")
        truth = exact[n]
        rec = [len(set(r) & set(t)) / 10 for r, t in zip(results, truth)]
        row["recall10"] = float(np.mean(rec))
        row.update(m)
        log(f"  {cand.name} {n}: insert {rate:.0f} pts/s, optimize {row['optimize_s']:.1f} s, "
            f"{row['bytes_per_track']:.0f} B/track, open {row['open_s']:.3f} s "
            f"(cold {row['open_cold_s']:.3f}), similar p50 {row['p50_s'] * 1000:.1f} ms "
            f"p95 {row['p95_s'] * 1000:.1f} ms, recall@10 {row['recall10']:.3f}, "
            f"rss {row['rss_mb']:.0f} MB, wall {row['wall_s']:.2f} s (cold {row['wall_cold_s']:.2f})")
    return rows


# --------------------------------------------------------------------------
# fingerprints
# --------------------------------------------------------------------------


def bench_fingerprints(sizes, work: Path, budget: float, n_clips: int, seconds: float, log) -> tuple[list, dict]:
    sys.path.insert(0, str(REPO / "scripts"))
    from gen_audio import RATE, piece

    from synthetic_tracks import fake_track, real_peaks

    from beetsplug.soundslike.fingerprint import FingerprintIndex
    from beetsplug.soundslike.fingerprint import landmarks as fp

    n_real = 3
    real, lms = [], []
    t = time.perf_counter()
    for k in range(n_real):
        x = piece(1000 + k, seconds).astype(np.float32)
        real.append(x)
        lms.append(fp.reference_landmarks(x, RATE))
    gen_s = time.perf_counter() - t
    per_second = sum(len(lm) for lm in lms) / (n_real * seconds)
    per_track = int(round(per_second * seconds))
    # Synthetic tracks are made of these tracks' constellations
    # (``synthetic_tracks.py``), in 30 s chunks, so posting lists have
    # realistic lengths instead of piling onto a few thousand hashes.
    peaks = [real_peaks(lm) for lm in lms]
    chunks = max(1, int(round(seconds / 30.0)))
    info = dict(landmarks_per_second=per_second, landmarks_per_track=per_track,
                track_seconds=seconds, real_tracks=n_real)
    log(f"fingerprints: {per_second:.1f} landmarks/s on {n_real} generated {seconds:.0f} s tracks "
        f"-> {per_track} per synthetic track ({gen_s:.1f} s to generate)")

    # 5 s clips cut from the real tracks: item id, true offset.
    rng = np.random.default_rng(7)
    clips, truth = [], []
    for j in range(n_clips):
        k = j % n_real
        off = float(rng.uniform(5, seconds - 10))
        a = int(off * RATE)
        clips.append(real[k][a:a + 5 * RATE])
        truth.append((k + 1, off))
    clips_file = work / "clips.npz"
    np.savez(clips_file, clips=np.stack(clips), rate=RATE)
    del real

    path = work / "fpindex"
    shutil.rmtree(path, ignore_errors=True)
    index = FingerprintIndex(path)
    rng = np.random.default_rng(11)
    rows = []
    have = 0
    rate = None
    skip_reason = None
    for n in sizes:
        row = dict(candidate="fingerprint", size=n)
        rows.append(row)
        if skip_reason:
            row["skipped"] = skip_reason
            log(f"  fingerprint {n}: skipped ({skip_reason})")
            continue
        if rate and (n - have) / rate > budget:
            skip_reason = (f"too slow: {rate:.0f} tracks/s would need ~{(n - have) / rate / 60:.0f} min "
                           f"for {n - have} more tracks, budget {budget / 60:.0f} min")
            row["skipped"] = skip_reason
            log(f"  fingerprint {n}: skipped ({skip_reason})")
            continue
        t_add = 0.0
        t_phase = time.perf_counter()
        for item in range(have + 1, n + 1):
            if item <= n_real:
                lm = lms[item - 1]
            else:
                lm = fake_track(rng, peaks, chunks=chunks)
            t = time.perf_counter()
            index.add_landmarks(item, lm)
            t_add += time.perf_counter() - t
            if time.perf_counter() - t_phase > budget and item < n:
                skip_reason = (f"too slow: {item} of {n} tracks after "
                               f"{time.perf_counter() - t_phase:.0f} s")
                break
        t = time.perf_counter()
        index.flush()
        t_add += time.perf_counter() - t
        if skip_reason:
            row["skipped"] = skip_reason
            log(f"  fingerprint {n}: skipped ({skip_reason})")
            continue
        rate = (n - have) / t_add
        have = n
        stats = index.stats()
        row.update(build_s=t_add, insert_pts_s=rate, segments=stats["segments"],
                   landmarks=stats["landmarks"], bytes_per_track=disk_bytes(path) / n)
        try:
            m = measure(QUERY_FP, [str(path), str(clips_file), str(n_clips)],
                        [str(path), str(clips_file), "1"], path)
        except ChildTooBig as exc:
            row["skipped"] = f"identify: {exc}"
            log(f"  fingerprint {n}: {row['skipped']}")
            skip_reason = row["skipped"]
            continue
        results = m.pop("results")
        m.pop("shard_load_s", None)
        # Found: right track, and the true offset within 1 s of the answer or
        # of one of its alternatives (generated music loops; `beet identify`
        # picks among them with the track's audio).
        found = [r is not None and r[0] == tr[0] and min(abs(o - tr[1]) for o in r[1]) <= 1.0
                 for r, tr in zip(results, truth)]
        row["found"] = float(np.mean(found))
        row["found_track"] = float(np.mean([r is not None and r[0] == tr[0]
                                            for r, tr in zip(results, truth)]))
        row["first_found"] = bool(found[0])
        row.update(m)
        log(f"  fingerprint {n}: build {t_add:.1f} s ({rate:.0f} tracks/s), {stats['segments']} segments, "
            f"{row['bytes_per_track'] / 1024:.0f} KiB/track, open {row['open_s']:.3f} s "
            f"(cold {row['open_cold_s']:.3f}; constructor {row['ctor_s']:.3f}), identify p50 {row['p50_s'] * 1000:.0f} ms "
            f"p95 {row['p95_s'] * 1000:.0f} ms, found {row['found'] * 100:.0f}%, "
            f"rss {row['rss_mb']:.0f} MB, wall {row['wall_s']:.2f} s (cold {row['wall_cold_s']:.2f})")
    index.close()
    return rows, info


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------


def fmt(v, scale=1.0, digits=0, unit=""):
    if v is None:
        return "-"
    return f"{v * scale:.{digits}f}{unit}"


def table(rows) -> str:
    head = ("| candidate | tracks | insert /s | optimize s | bytes/track | open s (cold) "
            "| similar / identify p50 ms | p95 ms | recall@10 / found | RSS MB | wall s (cold) |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        if r.get("skipped"):
            lines.append(f"| {r['candidate']} | {r['size']:,} | "
                         f"{fmt(r.get('insert_pts_s'))} | skipped ({r['skipped']}) ||||||||")
            continue
        quality = r.get("recall10", r.get("found"))
        opt = r.get("optimize_s", r.get("build_s"))
        lines.append(
            f"| {r['candidate']} | {r['size']:,} | {fmt(r['insert_pts_s'])} | {fmt(opt, digits=1)} "
            f"| {fmt(r['bytes_per_track'])} | {r['open_s']:.3f} ({r['open_cold_s']:.3f}) "
            f"| {fmt(r['p50_s'], 1000, 1)} | {fmt(r['p95_s'], 1000, 1)} | {fmt(quality, digits=3)} "
            f"| {r['rss_mb']:.0f} | {r['wall_s']:.2f} ({r['wall_cold_s']:.2f}) |")
    return "\n".join(lines)


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    styles = {"edge": ("tab:blue", "o-"), "local": ("tab:red", "s-"),
              "fingerprint": ("tab:green", "^--")}
    for cand, (color, style) in styles.items():
        rs = [r for r in rows if r["candidate"] == cand and not r.get("skipped")]
        if not rs:
            continue
        x = [r["size"] for r in rs]
        label = {"edge": "qdrant-edge (EdgeStore)", "local": "qdrant-client local mode",
                 "fingerprint": "fingerprint index (identify)"}[cand]
        axes[0].plot(x, [r["open_s"] for r in rs], style, color=color, label=label)
        axes[1].plot(x, [r["p50_s"] * 1000 for r in rs], style, color=color, label=label)
        axes[2].plot(x, [r["wall_s"] for r in rs], style, color=color, label=label)
    axes[2].plot([10000, 100000], [1.5, 2.5], "k:", marker="x", label="target (similar)")
    titles = ["open + first query, fresh process (s)", "similar / identify p50, warm (ms)",
              "whole process: start, open, 1 query (s)"]
    for ax, title in zip(axes, titles):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("library size (tracks)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("soundslike store scale (2 CPU cores, no GPU)", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--out", default="/tmp/soundslike-scale", help="folder for the stores (emptied)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--plot", default=str(REPO / "docs" / "benchmarks-scale.png"))
    ap.add_argument("--candidates", default="edge,fingerprint,local")
    ap.add_argument("--queries", type=int, default=100, help="similar queries per size")
    ap.add_argument("--clips", type=int, default=20, help="identify clips per size")
    ap.add_argument("--insert-budget", type=float, default=300.0,
                    help="seconds an insert phase may take before larger sizes are skipped")
    ap.add_argument("--max-rss-gb", type=float, default=8.0,
                    help="kill a query process that grows past this")
    ap.add_argument("--fp-budget", type=float, default=600.0,
                    help="seconds a fingerprint build phase may take")
    ap.add_argument("--track-seconds", type=float, default=240.0)
    ap.add_argument("--keep", action="store_true", help="keep the stores in --out")
    args = ap.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    MAX_RSS[0] = int(args.max_rss_gb * 2**30)
    cands = args.candidates.split(",")
    work = Path(args.out)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - started:7.1f} s] {msg}", flush=True)

    import qdrant_client
    import qdrant_edge  # noqa: F401
    from importlib.metadata import version

    meta = dict(
        command=" ".join([Path(sys.executable).name, *sys.argv]), sizes=sizes, dim=args.dim,
        cpus=os.cpu_count(), machine=platform.platform(), python=platform.python_version(),
        cpu=_cpu_name(), qdrant_client=version("qdrant-client"), qdrant_edge=version("qdrant-edge-py"),
        numpy=np.__version__, queries=args.queries, clips=args.clips,
        date=time.strftime("%Y-%m-%d %H:%M"), load_start=os.getloadavg(),
    )
    del qdrant_client
    results = dict(meta=meta, rows=[])

    def save():
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))

    lib = Library(args.dim)
    # Seeds (1-3 per query) and exact answers, shared by every candidate.
    exact = {}
    for n in sizes:
        rng = np.random.default_rng((SEED, n))
        seeds = [sorted(map(int, rng.choice(np.arange(1, n + 1), rng.integers(1, 4), replace=False)))
                 for _ in range(args.queries + 1)]
        (work / f"seeds-{n}.json").write_text(json.dumps(seeds))
        (work / f"seeds1-{n}.json").write_text(json.dumps(seeds[:1]))
        if "edge" in cands or "local" in cands:
            t = time.perf_counter()
            vecs = lib.vectors_of({i for s in seeds for i in s})
            queries = [(centroid(vecs[i] for i in s), set(s)) for s in seeds]
            exact[n] = lib.exact_top(queries, n)
            log(f"exact top-10 of {len(seeds)} queries at {n}: {time.perf_counter() - t:.1f} s")

    for cand in cands:
        log(f"candidate {cand}")
        if cand == "edge":
            rows = bench_vectors(EdgeCandidate(work), lib, sizes, None, exact, work,
                                 args.insert_budget, args.queries, log)
        elif cand == "local":
            rows = bench_vectors(LocalCandidate(work, args.dim), lib, sizes, None, exact, work,
                                 args.insert_budget, args.queries, log)
        elif cand == "fingerprint":
            rows, info = bench_fingerprints(sizes, work, args.fp_budget, args.clips,
                                            args.track_seconds, log)
            results["meta"]["fingerprint"] = info
        else:
            raise SystemExit(f"unknown candidate {cand}")
        results["rows"].extend(rows)
        save()
        if not args.keep:
            for sub in ("edge", "local", "fpindex"):
                shutil.rmtree(work / sub, ignore_errors=True)

    results["meta"]["total_s"] = time.perf_counter() - started
    results["meta"]["load_end"] = os.getloadavg()
    save()
    if args.plot:
        plot(results["rows"], Path(args.plot))
    print()
    print(f"{meta['command']}")
    print(f"{meta['cpus']} CPUs ({meta['cpu']}), {meta['machine']}, qdrant-client {meta['qdrant_client']}, "
          f"qdrant-edge-py {meta['qdrant_edge']}, dim {args.dim}, total {results['meta']['total_s'] / 60:.1f} min, "
          f"load average {meta['load_start'][0]:.1f} at start, {results['meta']['load_end'][0]:.1f} at end")
    print(table(results["rows"]))
    print("open = fresh process: construct the store + first similar/identify (cold: store files "
          "evicted from the page cache); wall = whole python process incl. interpreter start and imports; "
          "fingerprint rows: 'optimize s' is the build time, quality is the share of clips found")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
