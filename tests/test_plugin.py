"""The plugin end to end on a real temporary library: import embeds and
fingerprints every format, the store follows ``beet rm`` and tag edits,
same recordings share an id, and an import never stops for a broken file,
a model that cannot load or a store that cannot be reached."""

from __future__ import annotations

import os
import re
import socket
import time

import numpy as np
from conftest import FORMATS, copy_pieces, gen_audio, user_error

PIECES = [f"piece{i}{FORMATS[i % len(FORMATS)]}" for i in range(6)]


def by_title(lib, title: str):
    item = lib.items([f"title::^{re.escape(title)}$"]).get()
    assert item is not None, title
    return item


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


def test_model_that_cannot_load_leaves_items_for_embed(beets_env, audio_dir, tmp_path, plugin_log):
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    (not_a_model / "readme.txt").write_text("no weights here")
    beets_env.reconfigure(model=str(not_a_model))
    src = copy_pieces(audio_dir, tmp_path / "in", PIECES[:3])
    message = user_error(beets_env, "import", "-A", "-q", str(src))
    assert "3 imported item(s) were left for 'beet embed'" in message
    assert f"the folder {not_a_model} has no config.json" in message
    assert message.count("cannot load soundslike.model") == 1
    logged = [line for line in plugin_log if "cannot load soundslike.model" in line]
    assert logged == []  # said once, in the final line, not per item nor before it
    assert len(beets_env.lib.items()) == 3  # the import completed
    assert len(beets_env.lib.items("soundslike_status:missing")) == 3

    message = user_error(beets_env, "embed")
    assert "soundslike.model" in message


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_qdrant_server_down_import_completes_and_embed_catches_up(beets_env, audio_dir, tmp_path):
    beets_env.reconfigure(url=f"http://127.0.0.1:{free_port()}", timeout=2)
    src = copy_pieces(audio_dir, tmp_path / "in", PIECES[:3])
    started = time.monotonic()
    message = user_error(beets_env, "import", "-A", "-q", str(src))
    assert time.monotonic() - started < 60  # bounded, no hang
    assert "cannot reach the Qdrant server" in message
    assert len(beets_env.lib.items("soundslike_status:missing")) == 3
    # Back on the embedded store, 'beet embed' picks up every item.
    beets_env.reconfigure(url="")
    beets_env.beet("embed")
    with beets_env.store() as store:
        assert store.count(beets_env.settings.spec.collection) == 3
    assert len(beets_env.lib.items("soundslike_status:embedded")) == 3
