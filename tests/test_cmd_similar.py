"""``beet similar`` on a real library: the near-duplicate comes first and
the seeds never, clear errors, and the playlist options on 12 generated
tracks by 3 artists on 6 albums: filters, spacing, variety, endless mixes,
song paths, albums and portable paths."""

from __future__ import annotations

import itertools
import os
import shutil

import numpy as np
import pytest
from conftest import FORMATS, copy_pieces, gen_audio, user_error
from test_plugin import by_title

EXTS = [".mp3", ".m4a", ".flac", ".ogg"]
PIECES = [f"piece{i}{FORMATS[i % len(FORMATS)]}" for i in range(6)]


def parse_m3u(text: str) -> list[tuple[str, str]]:
    """(EXTINF line, path) pairs; asserts the extended-M3U shape."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines[0] == "#EXTM3U"
    entries = []
    for info, path in zip(lines[1::2], lines[2::2]):
        assert info.startswith("#EXTINF:"), info
        seconds, label = info[len("#EXTINF:"):].split(",", 1)
        assert int(seconds) > 0 and label.strip()
        entries.append((label, path))
    assert len(entries) * 2 + 1 == len(lines)
    return entries


def test_similar_finds_near_duplicate_and_never_the_seed(beets_env, audio_dir, tmp_path):
    src = copy_pieces(audio_dir, tmp_path / "in", PIECES + ["piece0-remaster.mp3"])
    beets_env.import_dir(src)
    seed = by_title(beets_env.lib, "Piece 0")
    dup = by_title(beets_env.lib, "Piece 0 (Remaster)")

    out = beets_env.beet("similar", f"id:{seed.id}", "-n", "3")
    entries = parse_m3u(out)
    assert len(entries) == 3
    paths = [path for _, path in entries]
    assert paths[0] == os.fsdecode(dup.path)
    assert entries[0][0] == "Remaster Artist - Piece 0 (Remaster)"
    assert os.fsdecode(seed.path) not in paths

    formatted = beets_env.beet("similar", f"id:{seed.id}", "-n", "2", "-f", "$id $soundslike_score")
    ids = [int(line.split()[0]) for line in formatted.splitlines()]
    assert ids[0] == dup.id and seed.id not in ids


def test_similar_with_several_seeds_excludes_all_of_them(beets_env, audio_dir, tmp_path):
    src = copy_pieces(audio_dir, tmp_path / "in", PIECES)
    beets_env.import_dir(src)
    seeds = list(beets_env.lib.items(["title::^Piece [01]$"]))
    assert len(seeds) == 2
    out = beets_env.beet("similar", "title::^Piece [01]$", "-n", "10")
    paths = {path for _, path in parse_m3u(out)}
    assert len(paths) == len(PIECES) - 2
    assert not paths & {os.fsdecode(s.path) for s in seeds}


def test_similar_errors_are_clear(beets_env, audio_dir, tmp_path):
    assert "no items match" in user_error(beets_env, "similar", "title:nothing-here")
    beets_env.reconfigure(auto=False)
    src = copy_pieces(audio_dir, tmp_path / "in", PIECES[:2])
    beets_env.import_dir(src)
    message = user_error(beets_env, "similar", "title:Piece 0")
    assert "beet embed" in message


@pytest.fixture(scope="module")
def album_dirs(tmp_path_factory):
    """12 pieces, 2 per album, 2 albums per artist, one folder per album."""
    root = tmp_path_factory.mktemp("albums")
    for seed in range(12):
        artist = gen_audio.ARTISTS[seed % 3]
        album = f"{artist} Vol. {1 + seed // 6}"
        folder = root / album
        folder.mkdir(exist_ok=True)
        gen_audio.write(
            gen_audio.piece(seed, 12.0), str(folder / f"p{seed:02d}{EXTS[seed % 4]}"),
            tags={"title": f"Piece {seed}", "artist": artist, "album": album,
                  "albumartist": artist, "date": str(1990 + seed)},
        )
    return root


@pytest.fixture
def lib_env(beets_env, album_dirs, tmp_path):
    src = tmp_path / "in"
    shutil.copytree(album_dirs, src)
    beets_env.import_dir(src)
    assert len(beets_env.lib.items()) == 12 and len(beets_env.lib.albums()) == 6
    return beets_env


def titles(env, *args) -> list[str]:
    out = env.beet("similar", *args, "-f", "$title")
    return out.splitlines()


def m3u_paths(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def vectors_of(env, items) -> np.ndarray:
    with env.store() as store:
        found = store.vectors(env.settings.spec.collection, [i.id for i in items])
    return np.stack([found[i.id] for i in items])


def test_where_keeps_only_matching_tracks(lib_env):
    result = titles(lib_env, "title:Piece 0", "-n", "20", "--where", "year:1995..2000")
    assert result, "no results"
    for title in result:
        item = lib_env.lib.items([f"title:{title}"]).get()
        assert 1995 <= item.year <= 2000


def test_exclude_option_and_config_default(lib_env):
    result = titles(lib_env, "title:Piece 1", "-n", "20", "--exclude", "year:1990..1995")
    assert result and all(
        lib_env.lib.items([f"title:{t}"]).get().year > 1995 for t in result
    )
    lib_env.reconfigure(exclude="artist:Chord")
    result = titles(lib_env, "title:Piece 0", "-n", "20")
    assert result and all(
        lib_env.lib.items([f"title:{t}"]).get().artist != "Chord Collective" for t in result
    )


def test_max_per_artist_spaces_and_relaxes(lib_env, plugin_log):
    spaced = titles(lib_env, "title:Piece 0", "-n", "3", "--max-per-artist", "1")
    artists = [lib_env.lib.items([f"title:{t}"]).get().artist for t in spaced]
    assert len(set(artists)) == 3
    assert not any("spacing relaxed" in line for line in plugin_log)
    full = titles(lib_env, "title:Piece 0", "-n", "6", "--max-per-artist", "1")
    assert len(full) == 6  # relaxed rather than starved
    assert any("spacing relaxed" in line for line in plugin_log)


def test_variety_spreads_the_list(lib_env):
    def mean_similarity(result):
        items = [lib_env.lib.items([f"title:{t}"]).get() for t in result]
        vecs = vectors_of(lib_env, items)
        sims = [float(a @ b) for a, b in itertools.combinations(vecs, 2)]
        return sum(sims) / len(sims)

    near = titles(lib_env, "title:Piece 3", "-n", "5", "--variety", "0")
    wide = titles(lib_env, "title:Piece 3", "-n", "5", "--variety", "1")
    assert mean_similarity(wide) < mean_similarity(near)
    assert wide == titles(lib_env, "title:Piece 3", "-n", "5", "--variety", "1")


def test_avoid_and_continue_never_repeat(lib_env, tmp_path):
    mix = tmp_path / "mix.m3u"
    mix.write_text(lib_env.beet("similar", "title:Piece 2", "-n", "3"))
    avoided = set(m3u_paths(mix.read_text()))
    again = m3u_paths(lib_env.beet("similar", "title:Piece 2", "-n", "5", "--avoid", str(mix)))
    assert again and not set(again) & avoided
    # Extend the mix three times; it never repeats a track.
    for _ in range(3):
        added = lib_env.beet("similar", "--continue", str(mix), "-n", "2")
        assert not added.startswith("#EXTM3U") and added.count("#EXTINF") == 2
        with open(mix, "a") as handle:
            handle.write(added)
    paths = m3u_paths(mix.read_text())
    assert len(paths) == 9 and len(set(paths)) == 9


def test_song_path_from_a_to_b(lib_env):
    out = lib_env.beet("similar", "title:Piece 4", "--to", "title:Piece 11", "-n", "4")
    paths = m3u_paths(out)
    start = lib_env.lib.items(["title:Piece 4"]).get()
    end = lib_env.lib.items(["title:Piece 11"]).get()
    assert len(paths) == 6 and len(set(paths)) == 6
    assert paths[0] == os.fsdecode(start.path) and paths[-1] == os.fsdecode(end.path)
    # Each step is closer to B than the step before, on average.
    items = [lib_env.lib.items([f"path:{p}"]).get() for p in paths]
    vecs = vectors_of(lib_env, items)
    to_end = vecs @ vecs[-1]
    assert to_end[1:].mean() > to_end[0]


def test_albums_in_album_out(lib_env):
    seed = lib_env.lib.albums(["album:Chord Collective Vol. 1"]).get()
    out = lib_env.beet("similar", "-a", "album:Chord Collective Vol. 1", "-n", "2",
                       "-f", "$albumartist - $album")
    lines = out.splitlines()
    assert len(lines) == 2 and "Chord Collective - Chord Collective Vol. 1" not in lines
    m3u = lib_env.beet("similar", "-a", "album:Chord Collective Vol. 1", "-n", "2")
    paths = m3u_paths(m3u)
    assert len(paths) == 4  # two whole albums of two tracks
    assert not set(paths) & {os.fsdecode(i.path) for i in seed.items()}


def test_relative_to_and_prefix(lib_env):
    music = str(lib_env.lib_path)
    out = lib_env.beet("similar", "title:Piece 0", "-n", "2", "--relative-to", music,
                       "--prefix", "/mnt/phone/Music/")
    for path in m3u_paths(out):
        assert path.startswith("/mnt/phone/Music/") and music not in path


def test_continue_with_unknown_playlist_is_clear(lib_env, tmp_path):
    empty = tmp_path / "other.m3u"
    empty.write_text("#EXTM3U\n/nowhere/song.mp3\n")
    assert "is in the library" in user_error(lib_env, "similar", "--continue", str(empty))
