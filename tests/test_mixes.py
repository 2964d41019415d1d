"""Mixes kept current in a playlist folder: checking the ``mixes:``
entries, what ``-p`` reports, atomic writes that leave unchanged files
alone, and a mix whose seed matches nothing keeping its old file."""

from __future__ import annotations

import os
import shutil
import threading

import pytest
from conftest import gen_audio, user_error

from beetsplug.soundslike.mixes import (
    Mix,
    MixConfigError,
    MixSkipped,
    OptionSpec,
    m3u_paths,
    parse_mixes,
    plan,
    select,
    write,
)

OPTIONS = {
    "count": OptionSpec("count", "int"),
    "max_per_artist": OptionSpec("max_per_artist", "int"),
    "variety": OptionSpec("variety", "float"),
    "exclude_artist": OptionSpec("exclude_artist", "flag"),
    "where": OptionSpec("where", "text"),
    "unlike": OptionSpec("unlike", "texts"),
    "format": OptionSpec("format", "text"),
}


def m3u(*paths: str) -> str:
    return "#EXTM3U\n" + "".join(f"#EXTINF:10,A - {p}\n{p}\n" for p in paths)


def test_entries_become_similar_options():
    mixes = parse_mixes([
        {"name": "evening", "query": "genre:jazz 'artist:Bill Evans'", "count": 20,
         "max-per-artist": "2", "variety": 0.5, "exclude_artist": True,
         "where": 1990, "unlike": "artist:Kenny G"},
        {"name": "morning", "query": ["artist:A B"], "unlike": ["x", "y"]},
    ], OPTIONS)
    evening, morning = mixes
    assert evening.query == ("genre:jazz", "artist:Bill Evans")
    assert evening.options == {
        "count": 20, "max_per_artist": 2, "variety": 0.5, "exclude_artist": True,
        "where": "1990", "unlike": ["artist:Kenny G"],
    }
    assert evening.filename == "evening.m3u"
    assert morning.query == ("artist:A B",) and morning.options == {"unlike": ["x", "y"]}
    assert parse_mixes(None, OPTIONS) == []
    assert select(mixes, ["morning"]) == [morning]
    with pytest.raises(MixConfigError, match="no mix named 'night'.*evening, morning"):
        select(mixes, ["night"])


@pytest.mark.parametrize("entries, message", [
    ({"name": "x"}, "must be a list"),
    ([["x"]], r"mixes\[0\] must be a mapping"),
    ([{"query": "a:b"}], r"mixes\[0\] needs a name"),
    ([{"name": "a/b", "query": "a:b"}], "plain file name"),
    ([{"name": ".hidden", "query": "a:b"}], "plain file name"),
    ([{"name": "x"}], "'x' needs a query"),
    ([{"name": "x", "query": "  "}], "query is empty"),
    ([{"name": "x", "query": "a:'b"}], "cannot be read"),
    ([{"name": "x", "query": "a:b", "colour": "red"}], "unknown key 'colour'.*max_per_artist"),
    ([{"name": "x", "query": "a:b", "format": "$title"}], "unknown key 'format'"),
    ([{"name": "x", "query": "a:b", "count": "many"}], "'x': count must be a whole number"),
    ([{"name": "x", "query": "a:b", "count": True}], "count must be a whole number"),
    ([{"name": "x", "query": "a:b", "variety": "lots"}], "variety must be a number"),
    ([{"name": "x", "query": "a:b", "exclude_artist": "yes please"}], "must be yes or no"),
    ([{"name": "x", "query": "a:b", "unlike": {"a": 1}}], "text or a list"),
    ([{"name": "x", "query": "a:b"}, {"name": "x", "query": "c:d"}], "two mixes are named 'x'"),
])
def test_bad_entries_say_which_mix_and_key(entries, message):
    with pytest.raises(MixConfigError, match=message):
        parse_mixes(entries, OPTIONS)


def test_plan_write_and_pretend(tmp_path):
    folder = tmp_path / "playlists"
    mixes = [Mix("a", ("q:a",)), Mix("b", ("q:b",)), Mix("gone", ("q:gone",))]
    texts = {"a": m3u("/m/1", "/m/2"), "b": m3u("/m/3")}

    def compute(mix):
        if mix.name not in texts:
            raise MixSkipped(f"no items match {' '.join(mix.query)!r}")
        return texts[mix.name]

    results = plan(mixes, folder, compute)
    assert [r.state for r in results] == ["new", "new", "kept"]
    assert results[0].describe() == ["a.m3u: new, 2 track(s)", "  + /m/1", "  + /m/2"]
    assert results[2].describe() == ["gone.m3u: not written (no items match 'q:gone')"]
    assert not folder.exists()  # planning writes nothing
    assert [r.mix.name for r in write(results)] == ["a", "b"]
    assert (folder / "a.m3u").read_text() == texts["a"]
    assert not (folder / "gone.m3u").exists()

    (folder / "gone.m3u").write_text(m3u("/m/old"))
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()}
    texts["a"] = m3u("/m/2", "/m/4")
    results = plan(mixes, folder, compute)
    assert [r.state for r in results] == ["changed", "unchanged", "kept"]
    assert results[0].describe() == ["a.m3u: 1 added, 1 removed", "  + /m/4", "  - /m/1"]
    assert results[0].describe(verbose=False) == ["a.m3u: 1 added, 1 removed"]
    assert results[1].describe() == ["b.m3u: unchanged"]
    assert results[2].describe() == ["gone.m3u: keeps its old file (no items match 'q:gone')"]
    write(results)
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()}
    assert after["b.m3u"] == before["b.m3u"] and after["gone.m3u"] == before["gone.m3u"]
    assert after["a.m3u"][0] != before["a.m3u"][0]  # replaced by a rename
    assert (folder / "gone.m3u").read_text() == m3u("/m/old")
    assert sorted(os.listdir(folder)) == ["a.m3u", "b.m3u", "gone.m3u"]  # no leftovers

    texts["a"] = m3u("/m/4", "/m/2")
    assert plan(mixes[:1], folder, compute)[0].describe() == ["a.m3u: same tracks, new order"]


def test_a_player_never_reads_half_a_file(tmp_path):
    """A reader polling the file while it is rewritten 300 times sees one
    whole version or the other, never a mix of them or a short file."""
    small = m3u(*(f"/music/small/{i:04d}.mp3" for i in range(10)))
    large = m3u(*(f"/music/large/{i:04d}.flac" for i in range(3000)))
    mix = Mix("busy", ("q:x",))
    write(plan([mix], tmp_path, lambda m: small))
    path = tmp_path / "busy.m3u"
    seen, stop = set(), threading.Event()

    def read():
        while not stop.is_set():
            seen.add(path.read_text())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for n in range(300):
            write(plan([mix], tmp_path, lambda m: large if n % 2 == 0 else small))
    finally:
        stop.set()
        reader.join()
    assert seen <= {small, large} and len(seen) == 2
    assert m3u_paths(large)[-1] == "/music/large/2999.flac"


# -- beet mixes on a real library ---------------------------------------------

EXTS = [".mp3", ".m4a", ".flac", ".ogg"]


@pytest.fixture(scope="module")
def pieces(tmp_path_factory):
    """12 generated pieces by 3 artists (4 each), one folder per artist,
    and a near-copy of piece 0 (low-passed, another artist) for later."""
    root = tmp_path_factory.mktemp("mix-pieces")
    first, later = root / "first", root / "later"
    for seed in range(12):
        artist = gen_audio.ARTISTS[seed % 3]
        folder = first / artist
        folder.mkdir(parents=True, exist_ok=True)
        gen_audio.write(
            gen_audio.piece(seed, 12.0), str(folder / f"p{seed:02d}{EXTS[seed % 4]}"),
            tags={"title": f"Piece {seed}", "artist": artist, "album": f"{artist} Vol. 1",
                  "albumartist": artist},
        )
    later.mkdir()
    gen_audio.write(
        gen_audio.lowpass(gen_audio.piece(0, 12.0), 5000.0), str(later / "echo.mp3"),
        tags={"title": "Echo", "artist": "Echo Artist", "album": "Echoes",
              "albumartist": "Echo Artist"},
    )
    return root


@pytest.fixture
def mix_env(beets_env, pieces, tmp_path):
    src = tmp_path / "in"
    shutil.copytree(pieces / "first", src)
    beets_env.import_dir(src)
    assert len(beets_env.lib.items()) == 12
    return beets_env


def mix_config(folder, *extra):
    return {
        "playlist_dir": str(folder),
        "mixes": [
            {"name": "zero", "query": "title:'Piece 0'", "count": 3},
            {"name": "chords", "query": "title:'Piece 1'", "count": 2,
             "where": "artist:'Chord Collective'"},
            {"name": "gone", "query": "title:'Nothing Like This'", "count": 3},
            *extra,
        ],
    }


def stamp(path):
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def test_beet_mixes_writes_reports_and_follows_imports(mix_env, pieces, tmp_path, plugin_log):
    folder = tmp_path / "playlists"
    mix_env.reconfigure(**mix_config(folder))

    out = mix_env.beet("mixes", "-p")
    assert not folder.exists(), "-p wrote something"
    lines = out.splitlines()
    assert lines[0] == "zero.m3u: new, 3 track(s)" and lines[-1] == "(pretend: nothing written)"
    assert "gone.m3u: not written (no items match 'title:Nothing Like This')" in lines
    assert sum(line.startswith("  + ") for line in lines) == 5

    out = mix_env.beet("mixes")
    assert out.splitlines() == [
        "zero.m3u: new, 3 track(s)", "chords.m3u: new, 2 track(s)",
        "gone.m3u: not written (no items match 'title:Nothing Like This')",
    ]
    zero = (folder / "zero.m3u").read_text()
    assert zero.startswith("#EXTM3U\n#EXTINF:12,") and len(m3u_paths(zero)) == 3
    # The same as beet similar prints.
    assert zero == mix_env.beet("similar", "title:Piece 0", "-n", "3")
    for path in m3u_paths((folder / "chords.m3u").read_text()):
        assert mix_env.lib.items(["path:" + path]).get().artist == "Chord Collective"
    assert not (folder / "gone.m3u").exists()
    assert mix_env.beet("mixes", "-p").splitlines()[:2] == [
        "zero.m3u: unchanged", "chords.m3u: unchanged"]

    # An old file of a mix whose seeds are gone stays as it is.
    (folder / "gone.m3u").write_text("#EXTM3U\n/music/old.mp3\n")
    before = {p.name: stamp(p) for p in folder.iterdir()}

    # An import that puts a near-copy of piece 0 in the library: the zero
    # mix is rewritten once, at the end; the chords mix (only Chord
    # Collective) and the gone mix stay untouched.
    plugin_log.clear()
    mix_env.beet("-v", "import", "-A", "-q", str(pieces / "later"))
    rewrites = [line for line in plugin_log if line.startswith("rewrote ")]
    assert len(rewrites) == 1 and rewrites[0].startswith("rewrote zero.m3u: 1 added, 1 removed")
    assert any("gone.m3u: keeps its old file (no items match" in line for line in plugin_log)
    echo = mix_env.lib.items(["title:Echo"]).get()
    assert os.fsdecode(echo.path) in m3u_paths((folder / "zero.m3u").read_text())
    after = {p.name: stamp(p) for p in folder.iterdir()}
    assert after["chords.m3u"] == before["chords.m3u"]
    assert after["gone.m3u"] == before["gone.m3u"]
    assert after["zero.m3u"] != before["zero.m3u"]
    assert (folder / "gone.m3u").read_text() == "#EXTM3U\n/music/old.mp3\n"
    assert sorted(os.listdir(folder)) == ["chords.m3u", "gone.m3u", "zero.m3u"]

    # beet mixes NAME, -p with changes, and nothing written by -p.
    mix_env.reconfigure(**mix_config(folder, {"name": "zero-far", "query": "title:'Piece 0'",
                                              "count": 3, "unlike": "title:Echo"}))
    (folder / "zero.m3u").write_text("#EXTM3U\n/music/old.mp3\n")
    out = mix_env.beet("mixes", "-p", "zero")
    assert out.splitlines()[0] == "zero.m3u: 3 added, 1 removed"
    assert "  - /music/old.mp3" in out.splitlines()
    assert (folder / "zero.m3u").read_text() == "#EXTM3U\n/music/old.mp3\n"
    mix_env.beet("mixes", "zero-far")
    far = m3u_paths((folder / "zero-far.m3u").read_text())
    assert len(far) == 3 and os.fsdecode(echo.path) not in far
    mix_env.beet("mixes")

    # Removing a track rewrites the mixes that held it, at the end.
    plugin_log.clear()
    mix_env.beet("-v", "remove", "-f", "title:Echo")
    assert [line for line in plugin_log if line.startswith("rewrote ")] == [
        "rewrote zero.m3u: 1 added, 1 removed"]
    assert os.fsdecode(echo.path) not in m3u_paths((folder / "zero.m3u").read_text())

    # So does 'beet embed' analysing tracks an import left (auto: no then).
    mix_env.reconfigure(auto=False)
    before = stamp(folder / "zero.m3u")
    mix_env.beet("import", "-A", "-q", str(pieces / "later"))
    assert stamp(folder / "zero.m3u") == before
    mix_env.reconfigure(auto=True)
    plugin_log.clear()
    mix_env.beet("-v", "embed")
    assert [line for line in plugin_log if line.startswith("rewrote ")] == [
        "rewrote zero.m3u: 1 added, 1 removed"]
    echo = mix_env.lib.items(["title:Echo"]).get()
    assert os.fsdecode(echo.path) in m3u_paths((folder / "zero.m3u").read_text())



def test_mix_config_errors_are_one_line(mix_env, tmp_path):
    folder = tmp_path / "playlists"
    assert "no mixes configured" in user_error(mix_env, "mixes")
    mix_env.reconfigure(**mix_config(folder, {"name": "bad", "query": "a:b", "colour": 1}))
    message = user_error(mix_env, "mixes")
    assert "soundslike.mixes 'bad': unknown key 'colour'" in message and "\n" not in message
    mix_env.reconfigure(mixes=[{"name": "x", "query": "a:b", "max_per_artist": "two"}])
    assert "'x': max_per_artist must be a whole number" in user_error(mix_env, "mixes")
    mix_env.reconfigure(playlist_dir="", mixes=[{"name": "x", "query": "a:b"}])
    assert "soundslike.playlist_dir" in user_error(mix_env, "mixes")
    mix_env.reconfigure(**mix_config(folder))
    assert "no mix named 'nope'" in user_error(mix_env, "mixes", "nope")
    assert not folder.exists()


# -- less like that -----------------------------------------------------------


def test_unlike_steers_away_and_never_returns_the_named(mix_env, tmp_path):
    import numpy as np

    lib = mix_env.lib
    with mix_env.store() as store:
        vectors = store.vectors(mix_env.settings.spec.collection,
                                [item.id for item in lib.items()])

    def answer(*args):
        out = mix_env.beet("similar", "title:Piece 0", "-n", "4", "-f", "$id", *args)
        return [int(line) for line in out.split()]

    plain = answer()
    # U: the two tracks nearest to the seed.
    unlike_ids = plain[:2]
    unlike_query = ", ".join(f"id:{i}" for i in unlike_ids)
    steered = answer("--unlike", unlike_query)
    assert len(steered) == 4 and not set(steered) & set(unlike_ids)

    def mean_similarity(ids):
        return float(np.mean([vectors[a] @ vectors[u] for a in ids for u in unlike_ids]))

    assert mean_similarity(steered) < mean_similarity(plain)
    # The same with the tracks listed in a playlist (e.g. those skipped),
    # and a repeated --unlike.
    skipped = tmp_path / "skipped.m3u"
    skipped.write_text("".join(os.fsdecode(lib.get_item(i).path) + "\n" for i in unlike_ids))
    assert answer("--unlike-playlist", str(skipped)) == steered
    assert answer("--unlike", f"id:{unlike_ids[0]}", "--unlike", f"id:{unlike_ids[1]}") == steered
    assert "no items match 'title:Nope' (--unlike)" in user_error(
        mix_env, "similar", "title:Piece 0", "--unlike", "title:Nope")
    assert "cannot read" in user_error(
        mix_env, "similar", "title:Piece 0", "--unlike-playlist", str(tmp_path / "none.m3u"))


@pytest.mark.parametrize("backend", ["edge", "client"])
def test_store_recommend_uses_negative_examples(backend, tmp_path):
    import numpy as np
    from qdrant_client import QdrantClient

    from beetsplug.soundslike.store import EdgeStore, ServerStore

    name = "soundslike_test_l1_mean"
    store = (EdgeStore(tmp_path / "edge") if backend == "edge"
             else ServerStore("(in-process)", None, client=QdrantClient(location=":memory:")))
    # Two directions: ids 1-20 around e1, 21-40 around e2, a seed between.
    rng = np.random.default_rng(1)
    e1, e2 = np.eye(8, dtype=np.float32)[:2]
    rows = [e1 + 0.1 * rng.standard_normal(8) for _ in range(20)]
    rows += [e2 + 0.1 * rng.standard_normal(8) for _ in range(20)]
    vectors = np.asarray(rows, np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store.upsert(name, list(range(1, 41)), vectors, [{}] * 40)
    seed = (e1 + e2) / np.linalg.norm(e1 + e2)
    try:
        hits = store.recommend(name, [seed], [vectors[0]], 10, exclude=[1])
        assert len(hits) == 10 and 1 not in {h.id for h in hits}
        assert all(h.id > 20 for h in hits), "the answer did not move away from e1"
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)
        allowed = store.recommend(name, [seed], [vectors[0]], 5, allowed=[2, 3, 22])
        assert {h.id for h in allowed} == {2, 3, 22} and allowed[0].id == 22
        diverse = store.recommend(name, [seed], [vectors[0]], 5, variety=0.8, around=seed)
        assert len({h.id for h in diverse}) == 5 and all(h.id > 20 for h in diverse)
    finally:
        store.close()
