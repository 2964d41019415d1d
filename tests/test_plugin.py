"""The plugin end to end on a real temporary library: import embeds and
fingerprints, ``beet embed`` backfills, ``beet similar`` writes M3U, and
the store follows ``beet rm`` and tag edits."""

from __future__ import annotations

import os
import re

import numpy as np
from conftest import FORMATS, copy_pieces, gen_audio, user_error

PIECES = [f"piece{i}{FORMATS[i % len(FORMATS)]}" for i in range(6)]


def by_title(lib, title: str):
    item = lib.items([f"title::^{re.escape(title)}$"]).get()
    assert item is not None, title
    return item


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


def test_import_embeds_every_format(beets_env, audio_dir, tmp_path):
    src = copy_pieces(audio_dir, tmp_path / "in", PIECES)
    beets_env.import_dir(src)

    items = list(beets_env.lib.items())
    assert len(items) == len(PIECES)
    with beets_env.store() as store:
        collection = beets_env.settings.spec.collection
        payloads = store.payloads(collection)
        vectors = store.vectors(collection, [i.id for i in items])
    assert set(payloads) == {item.id for item in items}
    for item in items:
        payload = payloads[item.id]
        assert payload["path"] == os.fsdecode(item.path)  # the copied file
        assert payload["title"] == item.title
        assert payload["model"] == beets_env.settings.spec.model
        assert payload["layer"] == 2
        assert abs(payload["duration"] - 24.0) < 0.5
        assert abs(np.linalg.norm(vectors[item.id]) - 1.0) < 1e-3
        assert item.get("soundslike_status") == "embedded"
    assert beets_env.fingerprints().item_ids() == {item.id for item in items}
    # The status is a typed, queryable attribute.
    assert len(list(beets_env.lib.items("soundslike_status:embedded"))) == len(PIECES)


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


def test_rm_removes_points_and_fingerprints(beets_env, audio_dir, tmp_path):
    src = copy_pieces(audio_dir, tmp_path / "in", PIECES[:3])
    beets_env.import_dir(src)
    victim = by_title(beets_env.lib, "Piece 1")
    beets_env.beet("rm", "-f", f"id:{victim.id}")
    with beets_env.store() as store:
        ids = store.ids(beets_env.settings.spec.collection)
    assert victim.id not in ids and len(ids) == 2
    assert victim.id not in beets_env.fingerprints().item_ids()


def test_tag_edit_and_move_update_payload(beets_env, audio_dir, tmp_path):
    src = copy_pieces(audio_dir, tmp_path / "in", PIECES[:2])
    beets_env.import_dir(src)
    item = by_title(beets_env.lib, "Piece 0")
    beets_env.beet("modify", "-y", "-M", f"id:{item.id}", "artist=Renamed Artist")
    item.load()
    with beets_env.store() as store:
        payload = store.payloads(beets_env.settings.spec.collection)[item.id]
    assert payload["artist"] == "Renamed Artist"
    assert payload["path"] == os.fsdecode(item.path)


def test_embed_backfills_and_resumes_without_duplicates(beets_env, audio_dir, tmp_path):
    beets_env.reconfigure(auto=False)
    src = copy_pieces(audio_dir, tmp_path / "in", PIECES)
    beets_env.import_dir(src)
    collection = beets_env.settings.spec.collection
    with beets_env.store() as store:
        assert store.count(collection) == 0

    # A first run that covers only part of the library, as if interrupted.
    beets_env.beet("embed", "title::^Piece [012]$")
    status = beets_env.beet("embed", "--status")
    assert "embedded: 3" in status and "missing: 3" in status
    assert "3 of 6 item(s) would be analysed" in beets_env.beet("embed", "-p")

    beets_env.beet("embed")
    with beets_env.store() as store:
        assert store.count(collection) == len(PIECES)
        assert store.ids(collection) == {i.id for i in beets_env.lib.items()}
    assert "0 of 6" in beets_env.beet("embed", "-p")
    # --force redoes everything and still leaves one point per item.
    beets_env.beet("embed", "--force")
    with beets_env.store() as store:
        assert store.count(collection) == len(PIECES)


def test_corrupt_and_silent_files_do_not_break_import(beets_env, audio_dir, tmp_path):
    src = copy_pieces(audio_dir, tmp_path / "in", PIECES[:3])
    gen_audio.write(np.zeros(22050 * 5, np.float32), str(src / "silence.flac"),
                    tags={"title": "Silence", "artist": "Nobody"})
    # An mp3 cut off after its first kilobytes: the tags read, the audio is broken.
    whole = gen_audio.write(gen_audio.piece(9, 10.0), str(tmp_path / "whole.mp3"),
                            tags={"title": "Truncated", "artist": "Nobody"})
    (src / "truncated.mp3").write_bytes(open(whole, "rb").read()[:1500])

    error = user_error(beets_env, "import", "-A", "-q", str(src))
    assert "2 imported item(s) could not be analysed" in error

    lib = beets_env.lib
    assert len(lib.items()) == 5  # the import itself completed
    failed = {item.title for item in lib.items("soundslike_status:failed")}
    assert failed == {"Silence", "Truncated"}
    embedded = list(lib.items("soundslike_status:embedded"))
    assert len(embedded) == 3
    with beets_env.store() as store:
        ids = store.ids(beets_env.settings.spec.collection)
    assert ids == {item.id for item in embedded}
    # The failed items stay missing, so a later 'beet embed' retries them.
    assert "2 of 5 item(s) would be analysed" in beets_env.beet("embed", "-p")


def test_same_recording_shares_an_id_and_beets_duplicates_finds_it(beets_env, audio_dir, tmp_path):
    import beets.plugins

    src = copy_pieces(audio_dir, tmp_path / "in", PIECES + ["piece0-remaster.mp3"])
    beets_env.import_dir(src)
    original = by_title(beets_env.lib, "Piece 0")
    remaster = by_title(beets_env.lib, "Piece 0 (Remaster)")
    recording = original.get("soundslike_recording")
    assert recording is not None and remaster.get("soundslike_recording") == recording
    others = [i for i in beets_env.lib.items() if i.id not in (original.id, remaster.id)]
    assert len({i.get("soundslike_recording") for i in others}) == len(others)
    assert recording not in {i.get("soundslike_recording") for i in others}
    # Queryable as a typed field, and beets' duplicates plugin groups by it.
    assert {i.id for i in beets_env.lib.items(f"soundslike_recording:{recording}")} == {
        original.id, remaster.id}
    beets.plugins._instances.clear()
    beets_env.config["plugins"] = ["soundslike", "duplicates"]
    beets.plugins.load_plugins()
    out = beets_env.beet("duplicates", "-F", "-k", "soundslike_recording", "-f", "$title")
    assert sorted(out.splitlines()) == ["Piece 0", "Piece 0 (Remaster)"]
