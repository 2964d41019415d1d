"""Never a wrong answer from stale state (issue 16): reused item ids,
orphans left while the plugin was off, files changed or deleted behind
beets' back, removal during a running ``beet embed``, stores from before
identities existed, a model that cannot load, and copies of one
recording. Every test runs on a real beets library, a real Qdrant engine
and a real fingerprint index."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import FORMATS, BeetProcess, copy_pieces, gen_audio, user_error

PIECES = [f"piece{i}{FORMATS[i % len(FORMATS)]}" for i in range(6)]
RATE = gen_audio.RATE


def by_title(lib, title: str):
    item = lib.items([f"title::^{re.escape(title)}$"]).get()
    assert item is not None, title
    return item


def clip_of(seed: int, path: Path, start: float = 4.0, seconds: float = 6.0) -> str:
    samples = gen_audio.piece(seed, 24.0)[int(start * RATE): int((start + seconds) * RATE)]
    gen_audio.write(samples, str(path))
    return str(path)


def identify(env, clip: str, similar: int = 0) -> dict:
    env.beet("identify", "--json", "--similar", str(similar), clip)
    (answer,) = [json.loads(line) for line in env.output.splitlines()]
    return answer


def remove_behind_plugin(env, item_id: int) -> None:
    """``beet -P soundslike rm``: the item leaves the library, its records
    stay in the store."""
    env.unload_plugins()
    try:
        env.run_command("rm", "-f", f"id:{item_id}")
    finally:
        env.load_plugins()


def m3u_paths(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def records(env, item_id: int) -> tuple[dict | None, int | None, bool]:
    """(point payload, fingerprint identity, fingerprinted) of an id."""
    collection = env.settings.spec.collection
    with env.store() as store:
        payload = store.payloads(collection).get(item_id)
    fps = env.fingerprints()
    try:
        return payload, fps.sources().get(item_id), item_id in fps.item_ids()
    finally:
        fps.close()


def live_identity(item) -> int | None:
    from beetsplug.soundslike.provenance import file_identity

    return file_identity(item.path)


# -- reused ids ---------------------------------------------------------------


def test_reused_id_gets_its_own_records_at_import(beets_env, audio_dir, tmp_path):
    beets_env.import_dir(copy_pieces(audio_dir, tmp_path / "in", PIECES[:4]))
    old = max(beets_env.lib.items(), key=lambda i: i.id)
    assert old.title == "Piece 3"
    collection = beets_env.settings.spec.collection
    with beets_env.store() as store:
        old_vector = store.vectors(collection, [old.id])[old.id]
    remove_behind_plugin(beets_env, old.id)
    pretend = beets_env.beet("embed", "--check", "-p")
    assert "orphan points (item gone from library): 1" in pretend
    assert "orphan fingerprints: 1" in pretend

    beets_env.import_dir(copy_pieces(audio_dir, tmp_path / "new", PIECES[4:5]))
    new = by_title(beets_env.lib, "Piece 4")
    assert new.id == old.id  # beets reused the id
    assert new.get("soundslike_status") == "embedded"
    payload, fp_source, _ = records(beets_env, new.id)
    assert payload["path"] == os.fsdecode(new.path)
    assert payload["source"] == fp_source == live_identity(new)
    with beets_env.store() as store:
        assert not np.allclose(store.vectors(collection, [new.id])[new.id], old_vector)

    assert identify(beets_env, clip_of(3, tmp_path / "old.wav"))["match"] is None
    assert identify(beets_env, clip_of(4, tmp_path / "new.wav"))["match"]["id"] == new.id
    assert "store and library agree" in beets_env.beet("embed", "--check")


def test_reused_id_without_auto_is_left_for_embed(beets_env, audio_dir, tmp_path):
    beets_env.import_dir(copy_pieces(audio_dir, tmp_path / "in", PIECES[:4]))
    old = max(beets_env.lib.items(), key=lambda i: i.id)
    remove_behind_plugin(beets_env, old.id)
    beets_env.reconfigure(auto=False)
    beets_env.import_dir(copy_pieces(audio_dir, tmp_path / "new", PIECES[4:5]))
    new = by_title(beets_env.lib, "Piece 4")
    assert new.id == old.id
    assert new.get("soundslike_status") != "embedded"
    # Not "all analysed": the records under its id are another file's.
    assert "1 of 4 item(s) would be analysed" in beets_env.beet("embed", "-p")
    # The old track's records never answer for the new one.
    assert identify(beets_env, clip_of(3, tmp_path / "old.wav"))["match"] is None
    out = beets_env.beet("similar", "title:Piece 0", "-n", "3", "-f", "$id")
    assert str(new.id) not in out.split()
    beets_env.beet("embed")
    assert identify(beets_env, clip_of(4, tmp_path / "new.wav"))["match"]["id"] == new.id
    assert "store and library agree" in beets_env.beet("embed", "--check")


def test_lists_fill_to_n_past_orphans(beets_env, audio_dir, tmp_path):
    beets_env.import_dir(copy_pieces(audio_dir, tmp_path / "in", PIECES + ["piece0-remaster.mp3"]))
    remaster = by_title(beets_env.lib, "Piece 0 (Remaster)")
    last = max(beets_env.lib.items(), key=lambda i: i.id)
    gone = {os.fsdecode(remaster.path), os.fsdecode(last.path)}
    remove_behind_plugin(beets_env, remaster.id)  # the nearest neighbour
    remove_behind_plugin(beets_env, last.id)
    assert len(beets_env.lib.items()) == 5

    paths = m3u_paths(beets_env.beet("similar", "title::^Piece 0$", "-n", "4"))
    assert len(paths) == 4 and not set(paths) & gone
    answer = identify(beets_env, clip_of(0, tmp_path / "c.wav"), similar=4)
    assert answer["match"]["title"] == "Piece 0"
    assert len(answer["similar"]) == 4
    assert not {s["path"] for s in answer["similar"]} & gone


# -- files changed or deleted behind beets' back ------------------------------


def test_replaced_file_is_noticed_and_reanalysed(beets_env, audio_dir, tmp_path):
    beets_env.import_dir(copy_pieces(audio_dir, tmp_path / "in", PIECES[:3]))
    item = by_title(beets_env.lib, "Piece 1")
    time.sleep(0.01)
    gen_audio.write(gen_audio.piece(5, 24.0), os.fsdecode(item.path))  # other music, same path
    # Its old records no longer answer.
    assert identify(beets_env, clip_of(1, tmp_path / "old.wav"))["match"] is None
    pretend = beets_env.beet("embed", "--check", "-p")
    assert "records of a file changed since its analysis: 1" in pretend
    assert "1 of 3 item(s) would be analysed" in beets_env.beet("embed", "-p")
    beets_env.beet("embed")
    assert identify(beets_env, clip_of(5, tmp_path / "new.wav"))["match"]["id"] == item.id
    assert "store and library agree" in beets_env.beet("embed", "--check")


def test_deleted_file_is_failed_and_stays_failed(beets_env, audio_dir, tmp_path):
    beets_env.import_dir(copy_pieces(audio_dir, tmp_path / "in", PIECES[:3]))
    item = by_title(beets_env.lib, "Piece 2")
    os.remove(item.path)
    assert identify(beets_env, clip_of(2, tmp_path / "c.wav"))["match"] is None
    assert "items whose file is missing: 1" in beets_env.beet("embed", "--check", "-p")
    message = user_error(beets_env, "embed")
    assert "1 item(s) could not be analysed" in message
    assert beets_env.lib.get_item(item.id).get("soundslike_status") == "failed"
    payload, _, fingerprinted = records(beets_env, item.id)
    assert payload is None and not fingerprinted
    # A plain run after a failure leaves it failed (the file is still gone).
    user_error(beets_env, "embed")
    assert beets_env.lib.get_item(item.id).get("soundslike_status") == "failed"
    status = beets_env.beet("embed", "--status")
    assert "missing: 0" in status and "failed: 1" in status


def test_check_finds_and_repairs_every_kind(beets_env, audio_dir, tmp_path):
    beets_env.reconfigure(auto=False)
    beets_env.import_dir(copy_pieces(audio_dir, tmp_path / "in", PIECES[:5]))
    beets_env.beet("embed")
    items = sorted(beets_env.lib.items(), key=lambda i: i.id)
    orphan = items[-1]
    remove_behind_plugin(beets_env, orphan.id)
    beets_env.import_dir(copy_pieces(audio_dir, tmp_path / "new", PIECES[5:6]))
    reused = beets_env.lib.get_item(orphan.id)
    assert reused.title == "Piece 5"
    changed, missing = items[0], items[1]
    gen_audio.write(gen_audio.piece(9, 24.0), os.fsdecode(changed.path))
    os.remove(missing.path)

    report = beets_env.beet("embed", "--check")
    assert "records of another file (reused id or moved outside beets): 1" in report
    assert "records of a file changed since its analysis: 1" in report
    assert "items whose file is missing: 1" in report
    for item in (reused, changed, missing):
        payload, _, fingerprinted = records(beets_env, item.id)
        assert payload is None and not fingerprinted, item.title
    assert beets_env.lib.get_item(missing.id).get("soundslike_status") == "failed"
    assert beets_env.lib.get_item(changed.id).get("soundslike_status") == "missing"
    # The next run analyses the reused id and the changed file again; the
    # missing file stays failed.
    assert "1 item(s) could not be analysed" in user_error(beets_env, "embed")
    report = beets_env.beet("embed", "--check")
    assert "orphan points (item gone from library): 0" in report
    assert "records of another file (reused id or moved outside beets): 0" in report
    assert "records of a file changed since its analysis: 0" in report
    assert "items whose file is missing: 1" in report
    assert identify(beets_env, clip_of(9, tmp_path / "c9.wav"))["match"]["id"] == changed.id
    assert identify(beets_env, clip_of(5, tmp_path / "c5.wav"))["match"]["id"] == reused.id


# -- beets' own writes and moves, and stores from before identities ------------


def test_tag_write_and_move_keep_records_without_reanalysis(beets_env, audio_dir, tmp_path):
    beets_env.import_dir(copy_pieces(audio_dir, tmp_path / "in", PIECES[:2]))
    item = by_title(beets_env.lib, "Piece 0")
    before = item.path
    beets_env.beet("modify", "-y", "-w", "-m", f"id:{item.id}", "artist=Renamed Artist")
    item.load()
    assert item.path != before  # written and moved
    assert "0 of 2 item(s) would be analysed" in beets_env.beet("embed", "-p")
    payload, fp_source, _ = records(beets_env, item.id)
    assert payload["source"] == fp_source == live_identity(item)
    assert identify(beets_env, clip_of(0, tmp_path / "c.wav"))["match"]["id"] == item.id


def strip_identities(env) -> None:
    """Make the store and index look as an earlier version wrote them."""
    collection = env.settings.spec.collection
    with env.store() as store:
        payloads = store.payloads(collection)
        vectors = store.vectors(collection, list(payloads))
        ids = sorted(payloads)
        for payload in payloads.values():
            payload.pop("source")
        store.delete(collection, ids)
        store.upsert(collection, ids, np.stack([vectors[i] for i in ids]),
                     [payloads[i] for i in ids])
    manifest = env.settings.fingerprint_dir / "MANIFEST.json"
    data = json.loads(manifest.read_text())
    data.pop("sources", None)
    manifest.write_text(json.dumps(data))


def test_store_from_before_identities_keeps_working_without_rescan(beets_env, audio_dir, tmp_path):
    beets_env.import_dir(copy_pieces(audio_dir, tmp_path / "in", PIECES[:3]))
    strip_identities(beets_env)
    moved = by_title(beets_env.lib, "Piece 2")
    with beets_env.store() as store:  # a legacy point of another file
        store.set_payloads(beets_env.settings.spec.collection, {moved.id: {"path": "/elsewhere.flac"}})
    assert identify(beets_env, clip_of(1, tmp_path / "c.wav"))["match"]["title"] == "Piece 1"
    assert "1 of 3 item(s) would be analysed" in beets_env.beet("embed", "-p")
    # Identities are adopted without the model: a device this machine
    # lacks would fail any attempt to load it.
    beets_env.reconfigure(device="cuda")
    beets_env.beet("embed", "title::^Piece [01]$")
    for title in ("Piece 0", "Piece 1"):
        item = by_title(beets_env.lib, title)
        payload, fp_source, _ = records(beets_env, item.id)
        assert payload["source"] == fp_source == live_identity(item)
    beets_env.reconfigure(device="cpu")
    beets_env.beet("embed")
    assert "store and library agree" in beets_env.beet("embed", "--check")


# -- removal during a running beet embed --------------------------------------


def attribute_rows(db: Path, item_id: int) -> int:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT COUNT(*) FROM item_attributes WHERE entity_id = ? AND key LIKE 'soundslike_%'",
            (item_id,),
        ).fetchone()[0]


def test_removal_during_real_embed_leaves_nothing_behind(model_dir, tmp_path):
    """``beet rm`` of an item while a real ``beet embed`` process works
    through the library, then a new import that gets the removed id."""
    beet = BeetProcess(tmp_path, model_dir, auto=False)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for n in range(40):
        # The last track imported (the highest id) sorts last: 'beet embed'
        # reaches it after the removal, the race this test is about.
        artist = "Zz Last" if n == 39 else f"Artist {n % 5}"
        gen_audio.write(gen_audio.piece(300 + n, 3.0), str(incoming / f"t{n:03d}.flac"),
                        tags={"title": f"Track {n}", "artist": artist})
    assert beet.run("import", "-A", "-q", str(incoming)).returncode == 0
    ids = [int(line) for line in beet.run("ls", "-f", "$id").stdout.split()]
    last = max(ids)

    proc = beet.popen("embed")
    qdir = beet.store_dir / "qdrant"
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        if qdir.exists() and any(p.is_dir() for p in qdir.iterdir()):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "embed finished before the removal"
    removed = beet.run("rm", "-f", f"id:{last}")
    assert removed.returncode == 0, removed.stderr
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "left the library during the run" in err, err

    check = beet.run("embed", "--check", "-p").stdout
    assert "orphan points (item gone from library): 0" in check, check
    assert "orphan fingerprints: 0" in check, check
    assert attribute_rows(beet.beetsdir / "library.db", last) == 0

    gen_audio.write(gen_audio.piece(999, 3.0), str(tmp_path / "new.flac"),
                    tags={"title": "Newcomer", "artist": "New"})
    assert beet.run("import", "-A", "-q", str(tmp_path / "new.flac")).returncode == 0
    new_id = int(beet.run("ls", "-f", "$id", "title:Newcomer").stdout)
    assert new_id == last  # beets reused the id
    assert "1 of 40 item(s) would be analysed" in beet.run("embed", "-p").stdout
    assert beet.run("embed").returncode == 0
    check = beet.run("embed", "--check")
    assert "store and library agree" in check.stdout, check.stdout


# -- fingerprints without the model --------------------------------------------


def test_import_fingerprints_every_item_when_the_model_cannot_load(beets_env, model_dir, audio_dir, tmp_path):
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    beets_env.reconfigure(model=str(not_a_model))
    message = user_error(beets_env, "import", "-A", "-q",
                         str(copy_pieces(audio_dir, tmp_path / "in", PIECES[:3])))
    assert "3 imported item(s) were left for 'beet embed'" in message
    status = beets_env.beet("embed", "--status")
    assert "fingerprinted: 3" in status and "embedded: 0" in status
    assert identify(beets_env, clip_of(1, tmp_path / "c.wav"))["match"]["title"] == "Piece 1"
    assert len(beets_env.lib.items("soundslike_status:missing")) == 3
    # Only the vectors are left for 'beet embed'.
    beets_env.reconfigure(model=model_dir)
    beets_env.beet("embed")
    assert "embedded: 3" in beets_env.beet("embed", "--status")


# -- the status mirror ---------------------------------------------------------


def test_status_and_ls_agree_after_a_failed_run(beets_env, audio_dir, tmp_path):
    beets_env.reconfigure(auto=False)
    beets_env.import_dir(copy_pieces(audio_dir, tmp_path / "in", PIECES[:3]))
    beets_env.beet("embed", "title:Piece 0")
    broken = tmp_path / "broken.flac"
    broken.write_text("not audio")
    from beets.library import Item

    beets_env.lib.add(Item(path=os.fsencode(str(broken)), title="Broken", length=3.0))
    beets_env.reconfigure(layer=99)
    user_error(beets_env, "embed")
    status = beets_env.beet("embed", "--status")
    embedded = int(re.search(r"embedded: (\d+)", status).group(1))
    assert embedded == len(beets_env.lib.items("soundslike_status:embedded"))
    beets_env.reconfigure(layer=2)
    user_error(beets_env, "embed")
    status = beets_env.beet("embed", "--status")
    assert "embedded: 3" in status and "missing: 0" in status and "failed: 1" in status
    assert len(beets_env.lib.items("soundslike_status:embedded")) == 3
    assert len(beets_env.lib.items("soundslike_status:failed")) == 1


# -- the same recording never twice --------------------------------------------


def test_same_vibe_and_playlists_never_repeat_a_recording(beets_env, audio_dir, tmp_path):
    src = copy_pieces(audio_dir, tmp_path / "in", PIECES + ["piece0-remaster.mp3"])
    # A second copy of piece 1, filed under other tags.
    gen_audio.write(gen_audio.piece(1, 24.0), str(src / "copy1.ogg"),
                    tags={"title": "Piece 1 (Copy)", "artist": "Copy Artist"})
    beets_env.import_dir(src)
    piece0, remaster = by_title(beets_env.lib, "Piece 0"), by_title(beets_env.lib, "Piece 0 (Remaster)")
    piece1, copy1 = by_title(beets_env.lib, "Piece 1"), by_title(beets_env.lib, "Piece 1 (Copy)")
    assert piece1.get("soundslike_recording") == copy1.get("soundslike_recording")

    answer = identify(beets_env, clip_of(0, tmp_path / "c.wav"), similar=8)
    assert answer["match"]["id"] in (piece0.id, remaster.id)
    offered = [s["id"] for s in answer["similar"]]
    assert not {piece0.id, remaster.id} & set(offered)  # never the clip's own recording
    assert len({piece1.id, copy1.id} & set(offered)) == 1  # one copy of piece 1
    assert len(offered) == 5  # every other recording, once

    out = beets_env.beet("similar", f"id:{piece0.id}", "-n", "10", "-f", "$id")
    listed = [int(x) for x in out.split()]
    assert len({piece1.id, copy1.id} & set(listed)) == 1
    assert len(listed) == len(set(listed))


# -- identities in both fingerprint backends ------------------------------------


@pytest.fixture(params=["local", "server"])
def fingerprint_backend(request, tmp_path):
    if request.param == "local":
        from beetsplug.soundslike.fingerprint import FingerprintIndex

        backend = FingerprintIndex(tmp_path / "fp")
    else:
        from qdrant_client import QdrantClient

        from beetsplug.soundslike.fingerprint.server import ServerFingerprints
        from beetsplug.soundslike.store import ServerStore

        store = ServerStore("(in-process)", None, client=QdrantClient(location=":memory:"))
        backend = ServerFingerprints(store)
    yield backend
    backend.close()


def test_fingerprint_records_carry_their_identity(fingerprint_backend):
    from beetsplug.soundslike.audio import SAMPLE_RATE
    from beetsplug.soundslike.fingerprint import reference_landmarks

    fps = fingerprint_backend
    samples = gen_audio.piece(7, 8.0, rate=SAMPLE_RATE)
    landmarks = reference_landmarks(samples, SAMPLE_RATE)
    fps.add_landmarks(1, landmarks, source=111)
    fps.add_landmarks(2, landmarks, source=222)
    fps.add_landmarks(3, landmarks)  # a record without identity (legacy)
    assert fps.sources() == {1: 111, 2: 222}  # unflushed changes count
    fps.flush()
    assert fps.sources() == {1: 111, 2: 222}
    assert fps.sources([2, 3]) == {2: 222}
    fps.set_sources({3: 333, 2: 444})
    fps.remove([1])
    fps.flush()
    assert fps.sources() == {2: 444, 3: 333}
    assert fps.sources([1, 2, 3]) == {2: 444, 3: 333}  # a few, looked up one by one
    fps.add_landmarks(2, landmarks)  # replaced without identity: none
    fps.flush()
    assert fps.sources() == {3: 333}
    assert fps.sources([2, 3, 99]) == {3: 333}
    assert fps.item_ids() == {2, 3}
    fps.set_sources({99: 999})  # no such record: ignored
    fps.flush()
    assert 99 not in fps.sources()
