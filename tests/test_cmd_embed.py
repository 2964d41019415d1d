"""``beet embed`` on a real library: it backfills and resumes without
duplicates, reports and retries bad audio, names the option behind a model
error, keeps the vectors of different models apart, repairs drift with
``--check``, and loses nothing to a kill -9, a fingerprint format upgrade or
a full disk. Each test asserts the outcome: the message, the exit status and
what the store holds."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
from bad_files import add_items, write_bad_files
from conftest import FORMATS, BeetProcess, copy_pieces, gen_audio, user_error

from beets.library import Item

PIECES = [f"piece{i}{FORMATS[i % len(FORMATS)]}" for i in range(6)]


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


def test_bad_audio_during_embed_is_reported_and_retried(beets_env, audio_dir, tmp_path, plugin_log):
    bad = write_bad_files(tmp_path / "bad")
    long_path = tmp_path / "three-hours.flac"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
         "sine=frequency=220:duration=10800:sample_rate=8000", "-c:a", "flac", str(long_path)],
        check=True,
    )
    good = copy_pieces(audio_dir, tmp_path / "good", PIECES[:1]) / PIECES[0]
    files = {title: path for title, (path, _) in bad.items()}
    files["good"] = good
    files["long"] = long_path
    items = add_items(beets_env.lib, files)

    message = user_error(beets_env, "embed")
    assert f"{len(bad)} item(s) could not be analysed" in message
    for title, (path, words) in bad.items():
        lines = [line for line in plugin_log if str(path) in line]
        assert len(lines) == 1, (title, plugin_log)
        assert words in lines[0], (title, lines[0])

    failed = {i.title for i in beets_env.lib.items("soundslike_status:failed")}
    assert failed == set(bad)
    with beets_env.store() as store:
        ids = store.ids(beets_env.settings.spec.collection)
    assert ids == {items["good"].id, items["long"].id}
    # A later run retries exactly the failed items.
    assert f"{len(bad)} of {len(files)} item(s) would be analysed" in beets_env.beet("embed", "-p")


@pytest.mark.parametrize(
    "model, words",
    [("no-such-org/no-such-model", "soundslike.model"), ("cuda-device", "soundslike.device")],
)
def test_model_errors_name_the_option(beets_env, audio_dir, tmp_path, model, words):
    if model == "cuda-device":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
        beets_env.reconfigure(device="cuda")
    else:
        beets_env.reconfigure(model=model)
    beets_env.lib.add(Item(path=os.fsencode(str(audio_dir / PIECES[0])), title="x"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        message = user_error(beets_env, "embed")
    finally:
        os.environ.pop("HF_HUB_OFFLINE", None)
    assert words in message
    assert "\n" not in message.strip()


def test_unwritable_store_folder_is_a_clear_error(beets_env, audio_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    beets_env.reconfigure(store_dir=str(blocker / "store"))
    beets_env.lib.add(Item(path=os.fsencode(str(audio_dir / PIECES[0])), title="x"))
    message = user_error(beets_env, "embed")
    assert "store" in message and str(blocker) in message


def test_model_change_never_mixes_vectors(beets_env, audio_dir, tmp_path):
    beets_env.import_dir(copy_pieces(audio_dir, tmp_path / "in", PIECES[:3]))
    old = beets_env.settings.spec.collection
    beets_env.reconfigure(layer=1)
    new = beets_env.settings.spec.collection
    assert new != old
    message = user_error(beets_env, "similar", "title:Piece 0")
    assert "beet embed" in message and old in message
    status = beets_env.beet("embed", "--status")
    assert "embedded: 0" in status and f"other collection {old}: 3 points" in status
    beets_env.beet("embed")
    with beets_env.store() as store:
        assert store.count(new) == 3 and store.count(old) == 3  # old left intact
    beets_env.beet("embed", "--drop", old)
    with beets_env.store() as store:
        assert store.collections() == [new]


def test_check_repairs_drift(beets_env, audio_dir, tmp_path):
    beets_env.import_dir(copy_pieces(audio_dir, tmp_path / "in", PIECES[:3]))
    collection = beets_env.settings.spec.collection
    items = list(beets_env.lib.items())
    # Drift made behind the plugin's back: an orphan point, a stale path,
    # a missing point and a wrong status.
    with beets_env.store() as store:
        vec = store.vectors(collection, [items[0].id])[items[0].id]
        store.upsert(collection, [9999], vec[None, :], [{"path": "/gone.mp3"}])
        store.set_payloads(collection, {items[1].id: {"path": "/old/place.mp3"}})
        store.delete(collection, [items[2].id])
    with beets_env.lib.transaction() as tx:
        tx.mutate("DELETE FROM item_attributes WHERE key = 'soundslike_recording'")
    report = beets_env.beet("embed", "--check")
    assert "recording ids set: 3" in report
    assert "orphan points (item gone from library): 1" in report
    assert "payloads with an old path or tags: 1" in report
    assert "items missing from the store: 1" in report
    with beets_env.store() as store:
        payloads = store.payloads(collection)
    assert 9999 not in payloads
    assert payloads[items[1].id]["path"] == os.fsdecode(items[1].path)
    assert beets_env.lib.get_item(items[2].id).get("soundslike_status") == "missing"
    assert all(beets_env.lib.get_item(i.id).get("soundslike_recording") for i in items)
    beets_env.beet("embed")
    assert "store and library agree" in beets_env.beet("embed", "--check")


@pytest.mark.slow
def test_kill_9_during_embed_then_rerun_is_complete(model_dir, tmp_path):
    """kill -9 in the middle of 'beet embed' of 150 items; a second run
    completes the store with every item once and no orphans."""
    beet = BeetProcess(tmp_path, model_dir, auto=False)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for n in range(150):
        gen_audio.write(gen_audio.piece(100 + n, 5.0), str(incoming / f"t{n:03d}.flac"),
                        tags={"title": f"Track {n}", "artist": f"Artist {n % 7}"})
    result = beet.run("import", "-A", "-q", str(incoming))
    assert result.returncode == 0, result.stderr

    proc = beet.popen("embed")
    collection_dir = None
    deadline = time.monotonic() + 240
    # Wait until the store holds some points, then kill without warning.
    while time.monotonic() < deadline and proc.poll() is None:
        qdir = beet.store_dir / "qdrant"
        dirs = [p for p in qdir.iterdir() if p.is_dir()] if qdir.exists() else []
        if dirs:
            collection_dir = dirs[0]
            break
        time.sleep(0.2)
    time.sleep(0.5)  # some batches written, most not
    assert proc.poll() is None, "embed finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert collection_dir is not None

    result = beet.run("embed")
    assert result.returncode == 0, result.stderr
    check = beet.run("embed", "--check")
    assert "store and library agree" in check.stdout, check.stdout
    status = beet.run("embed", "--status").stdout
    assert "embedded: 150" in status and "missing: 0" in status
    assert "fingerprinted: 150" in status


def test_fingerprint_format_upgrade_rebuilds_without_reembedding(beets_env, audio_dir, tmp_path, plugin_log):
    import json

    beets_env.import_dir(copy_pieces(audio_dir, tmp_path / "in", PIECES[:3]))
    manifest = beets_env.settings.fingerprint_dir / "MANIFEST.json"
    data = json.loads(manifest.read_text())
    data["format"] = -1  # as written by another version of the plugin
    manifest.write_text(json.dumps(data))

    clip = tmp_path / "clip.wav"
    gen_audio.write(gen_audio.piece(1, 24.0)[22050 * 4: 22050 * 10], str(clip))
    message = user_error(beets_env, "identify", str(clip))
    assert "run 'beet embed' to rebuild it" in message

    # The model must not be needed: a device this machine lacks would fail
    # any attempt to load it.
    beets_env.reconfigure(device="cuda")
    with beets_env.store() as store:
        before = store.vectors(beets_env.settings.spec.collection, [1, 2, 3])
    beets_env.beet("embed")
    assert any("rebuilding fingerprints" in line for line in plugin_log)
    assert beets_env.fingerprints().item_ids() == {i.id for i in beets_env.lib.items()}
    with beets_env.store() as store:
        after = store.vectors(beets_env.settings.spec.collection, [1, 2, 3])
    assert all(np.array_equal(before[i], after[i]) for i in before)
    out = beets_env.beet("identify", "--similar", "0", str(clip))
    assert "Piece 1" in out


@pytest.fixture
def small_disk(tmp_path):
    """A 256 MB tmpfs, so the store's disk can really fill up (needs root)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_is_a_clear_error_and_nothing_is_lost(beets_env, audio_dir, tmp_path, small_disk):
    beets_env.reconfigure(store_dir=str(small_disk / "store"), auto=False)
    beets_env.import_dir(copy_pieces(audio_dir, tmp_path / "in", PIECES))
    beets_env.beet("embed", "title:Piece 0")
    filler = small_disk / "filler"
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * (1 << 20))
        except OSError:
            pass
    message = user_error(beets_env, "embed")
    assert "is full" in message and "beet embed" in message
    filler.unlink()
    beets_env.beet("embed")
    assert "store and library agree" in beets_env.beet("embed", "--check")
    with beets_env.store() as store:
        assert store.count(beets_env.settings.spec.collection) == len(PIECES)
    assert beets_env.fingerprints().item_ids() == {i.id for i in beets_env.lib.items()}


def test_embed_fingerprints_everything_first_so_identify_works_early(
    beets_env, audio_dir, tmp_path, plugin_log
):
    """The first phase of ``beet embed`` fingerprints every item without
    the model: after it, every item is identifiable and none has a vector;
    the whole command then embeds them all, and says it fingerprinted
    first."""
    import json

    from beetsplug.soundslike.commands.embed import fingerprints_first
    from beetsplug.soundslike.indexer import Indexer

    beets_env.reconfigure(auto=False)
    beets_env.import_dir(copy_pieces(audio_dir, tmp_path / "in", PIECES))
    lib = beets_env.lib
    items = list(lib.items())
    indexer = Indexer(beets_env.settings, lambda: pytest.fail("the first phase loads no model"))
    found = indexer.audit(items, every=True)
    marks = {}

    class Plugin:  # what fingerprints_first asks of the plugin
        log = __import__("logging").getLogger("beets.soundslike")

        @staticmethod
        def mark(item, status):
            marks[item.id] = status

        @staticmethod
        def link_recordings(batch):
            pass

    report = fingerprints_first(Plugin, indexer, lib, items, found, force=False)
    indexer.close()
    assert report.fingerprinted_only == len(items) and not report.failed
    assert set(marks.values()) == {"missing"}
    with beets_env.fingerprints() as fps:
        assert fps.item_ids() == {item.id for item in items}
    with beets_env.store() as store:
        assert store.dimension(beets_env.settings.spec.collection) is None
    # Identify works on the whole library before any vector exists.
    clip = tmp_path / "clip.wav"
    gen_audio.write(gen_audio.piece(5, 24.0)[int(8 * gen_audio.RATE): int(14 * gen_audio.RATE)],
                    str(clip))
    beets_env.beet("identify", "--json", "--similar", "0", str(clip))
    (answer,) = [json.loads(line) for line in beets_env.output.splitlines()]
    assert answer["match"]["title"] == "Piece 5"

    # A whole run: fingerprints are kept (none redone), every vector made.
    plugin_log.clear()
    beets_env.beet("embed", "--force")
    first = [i for i, line in enumerate(plugin_log) if "item(s) first" in line]
    done = [i for i, line in enumerate(plugin_log) if line.startswith("embedded 6,")]
    assert first and done and first[0] < done[0], plugin_log
    with beets_env.store() as store:
        assert store.count(beets_env.settings.spec.collection) == len(items)


def test_after_the_fingerprint_phase_embed_decodes_only_the_excerpts(
    beets_env, audio_dir, tmp_path, monkeypatch
):
    """The fingerprint phase of ``beet embed`` reads each file whole and
    chooses its excerpts; the model's phase then decodes only those, and
    the vectors are the ones a whole decode gives (the import stage's). A
    file changed in between is read whole again."""
    from beetsplug.soundslike import indexer as indexer_module

    read = []
    decode_windows = indexer_module.decode_windows

    def spy(path, windows, *args):
        read.append(os.path.basename(os.fsdecode(path)))
        return decode_windows(path, windows, *args)

    monkeypatch.setattr(indexer_module, "decode_windows", spy)
    beets_env.reconfigure(auto=True)  # the import stage: one pass, whole decodes
    beets_env.import_dir(copy_pieces(audio_dir, tmp_path / "in", PIECES))
    collection = beets_env.settings.spec.collection
    items = list(beets_env.lib.items())
    ids = [item.id for item in items]
    with beets_env.store() as store:
        whole = store.vectors(collection, ids)
    assert len(whole) == len(PIECES) and not read

    beets_env.beet("embed", "--force")  # fingerprints first, then the model
    assert sorted(read) == sorted(os.path.basename(os.fsdecode(i.path)) for i in items)
    with beets_env.store() as store:
        windowed = store.vectors(collection, ids)
    for item_id in ids:
        a, b = whole[item_id], windowed[item_id]
        assert float(a @ b) / float(np.linalg.norm(a) * np.linalg.norm(b)) > 0.99999

    # A file rewritten between the phases is read whole: its fingerprint
    # is stale, and so are the windows chosen on the old audio. So is a file
    # with damaged frames (the windows could land a few frames off).
    read.clear()
    damaged = next(i for i in items if os.fsdecode(i.path).endswith(".mp3"))
    data = bytearray(open(damaged.path, "rb").read())
    data[len(data) // 10:len(data) // 10 + 1500] = bytes(range(250)) * 6
    with open(damaged.path, "wb") as handle:
        handle.write(bytes(data))
    indexer = beets_env.soundslike.indexer(beets_env.lib)  # the one beet embed ran
    indexer.run(items, vectors=False, force=True)
    changed = items[0]
    gen_audio.write(gen_audio.piece(9, 24.0), os.fsdecode(changed.path))
    report = indexer.run(items, force=True, keep_fingerprints=True)
    assert report.ok and report.embedded == len(items)
    assert changed.id != damaged.id and len(read) == len(items) - 2
    assert not {os.path.basename(os.fsdecode(i.path)) for i in (changed, damaged)} & set(read)


def test_a_run_that_doubles_the_fingerprint_index_packs_it(beets_env, audio_dir, tmp_path, plugin_log,
                                                           monkeypatch):
    # A first analysis writes the index a flush at a time; the run then
    # merges all of it into one segment. A run that adds less than the
    # index held leaves the merging to the size tiers.
    import beetsplug.soundslike.fingerprint.local as local

    monkeypatch.setattr(local, "AUTO_FLUSH_LANDMARKS", 1)  # a flush, and a segment, a track
    beets_env.reconfigure(auto=False)
    beets_env.import_dir(copy_pieces(audio_dir, tmp_path / "in", PIECES[:5]))
    beets_env.beet("embed")
    assert any(line == "packing the fingerprint index of 5 tracks" for line in plugin_log), plugin_log
    with beets_env.fingerprints() as index:
        assert index.stats()["segments"] == 1 and len(index) == 5
    plugin_log.clear()
    beets_env.import_dir(copy_pieces(audio_dir, tmp_path / "more", PIECES[5:]))
    beets_env.beet("embed")
    assert not any("packing" in line for line in plugin_log)
    with beets_env.fingerprints() as index:
        assert index.stats()["segments"] == 2 and len(index) == 6


def test_an_index_of_an_older_layout_is_rewritten_by_embed_with_a_progress_bar(
        beets_env, audio_dir, tmp_path, plugin_log, capsys):
    from test_fp_local_index import as_older_format

    beets_env.import_dir(copy_pieces(audio_dir, tmp_path / "in", PIECES[:3]))
    directory = beets_env.settings.fingerprint_dir
    with beets_env.fingerprints() as index:
        parts = index.stats()["segments"]
    as_older_format(directory, 4)  # as an earlier version of the plugin wrote it
    with beets_env.fingerprints() as index:
        assert index.older_parts() == parts >= 1
    clip = tmp_path / "clip.wav"
    gen_audio.write(gen_audio.piece(1, 24.0)[22050 * 4: 22050 * 10], str(clip))
    before = beets_env.beet("identify", "--similar", "0", str(clip))
    assert "Piece 1" in before

    beets_env.reconfigure(device="cuda")  # no model may be loaded: none is needed
    capsys.readouterr()
    beets_env.beet("embed")
    assert f"fingerprint index [{'#' * 24}] {parts}/{parts}" in capsys.readouterr().err
    assert any(f"rewriting {parts} part(s) of the fingerprint index" in line for line in plugin_log)
    with beets_env.fingerprints() as index:
        assert index.older_parts() == 0
        assert index.item_ids() == {i.id for i in beets_env.lib.items()}
    assert beets_env.beet("identify", "--similar", "0", str(clip)) == before
    plugin_log.clear()
    beets_env.beet("embed")
    assert not any("rewriting" in line for line in plugin_log)


def test_a_moved_model_folder_keeps_its_vectors(beets_env, model_dir, audio_dir, tmp_path):
    """Vectors follow the model folder's content: moving it re-analyses
    nothing, and a collection an earlier version named by the folder's path
    is renamed, not re-embedded."""
    beets_env.import_dir(copy_pieces(audio_dir, tmp_path / "in", PIECES[:3]))
    collection = beets_env.settings.spec.collection
    moved = shutil.copytree(model_dir, tmp_path / "new-disk" / "wav2vec2")
    beets_env.reconfigure(model=str(moved))
    assert beets_env.settings.spec.collection == collection
    assert "embedded: 3" in beets_env.beet("embed", "--status")
    legacy = beets_env.settings.spec.legacy_collection
    with beets_env.store() as store:
        store.rename(collection, legacy)
        assert store.collections() == [legacy]
    status = beets_env.beet("embed", "--status")
    assert "embedded: 3" in status and "other collection" not in status
    with beets_env.store() as store:
        assert store.collections() == [collection] and store.count(collection) == 3
    assert "Piece" in beets_env.beet("similar", "title:Piece 0", "-n", "2")


def test_this_models_vectors_under_another_name_join_and_another_models_do_not(
        beets_env, audio_dir, tmp_path, plugin_log):
    """A collection named for another model is taken over only when items
    embedded again agree with its vectors (a folder moved before the
    upgrade, a hub id saved to a folder); vectors of another model are
    left where they are, and the items embedded anew."""
    beets_env.import_dir(copy_pieces(audio_dir, tmp_path / "in", PIECES[:3]))
    current = beets_env.settings.spec.collection
    moved, stranger = "soundslike_model-0badc0de_l2_mean", "soundslike_other-12345678_l2_mean"
    with beets_env.store() as store:
        ids = sorted(store.ids(current))
        before = store.vectors(current, ids)
        payloads = store.payloads(current)
        store.rename(current, moved)
    assert (f"other collection {moved}: 3 points ('beet embed' takes it over if it holds "
            "this model's vectors" in beets_env.beet("embed", "--status"))
    beets_env.beet("embed")
    assert any(f"collection {moved} holds vectors of" in line for line in plugin_log)
    assert not any("analysing" in line for line in plugin_log)
    with beets_env.store() as store:
        assert store.collections() == [current]
        after = store.vectors(current, ids)
        assert all(np.array_equal(before[i], after[i]) for i in ids)  # moved, not redone

        rng = np.random.default_rng(0)
        noise = rng.standard_normal((len(ids), before[ids[0]].size)).astype(np.float32)
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        store.upsert(stranger, ids, noise, [payloads[i] for i in ids])
        store.delete(current, ids)
    plugin_log.clear()
    beets_env.beet("embed")
    assert not any("holds vectors of" in line for line in plugin_log)
    assert any("analysing 3 item(s)" in line for line in plugin_log)
    with beets_env.store() as store:
        assert store.collections() == sorted([current, stranger])
        assert store.count(current) == 3 and store.count(stranger) == 3
