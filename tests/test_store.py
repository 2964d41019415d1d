"""Both store backends behind one interface, on real Qdrant engines: the
embedded engine (qdrant-edge) and qdrant-client, the code that talks to a
server, here driven against qdrant-client's own in-process engine (no
server can be started in the test environment); and two beet processes
sharing the embedded store."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FORMATS, BeetProcess, copy_pieces, gen_audio
from qdrant_client import QdrantClient

from beetsplug.soundslike.store import EdgeStore, ServerStore

C = "soundslike_test_l1_mean"
PIECES = [f"piece{i}{FORMATS[i % len(FORMATS)]}" for i in range(6)]


@pytest.fixture(params=["edge", "client"])
def store(request, tmp_path):
    if request.param == "edge":
        backend = EdgeStore(tmp_path / "edge")
    else:
        backend = ServerStore("(in-process)", None, client=QdrantClient(location=":memory:"))
    yield backend
    backend.close()


def unit(rows):
    rows = np.asarray(rows, np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_points_payloads_and_search(store):
    rng = np.random.default_rng(0)
    vectors = unit(rng.standard_normal((40, 16)))
    ids = list(range(1, 41))
    payloads = [{"artist": f"a{i % 4}", "path": b"/music/x.mp3", "album_id": i // 5} for i in ids]
    assert store.dimension(C) is None and store.payloads(C) == {}
    store.upsert(C, ids, vectors, payloads)
    assert store.dimension(C) == 16 and store.count(C) == 40
    assert C in store.collections()
    assert store.payloads(C)[3] == {"artist": "a3", "path": "/music/x.mp3", "album_id": 0}

    hits = store.nearest(C, vectors[0], 5)
    assert hits[0].id == 1 and hits[0].score == pytest.approx(1.0, abs=1e-4)
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    diverse = store.nearest(C, vectors[0], 5, variety=0.9)
    assert len({h.id for h in diverse}) == 5 and {h.id for h in diverse} != {h.id for h in hits}
    assert 1 not in {h.id for h in store.nearest(C, vectors[0], 5, exclude=[1])}
    assert {h.id for h in store.nearest(C, vectors[0], 10, allowed=[7, 8, 9])} == {7, 8, 9}

    store.set_payloads(C, {2: {"artist": "renamed"}, 999: {"artist": "ghost"}})
    payloads = store.payloads(C)
    assert payloads[2]["artist"] == "renamed" and 999 not in payloads
    store.delete(C, [5, 6, 12345])
    assert store.count(C) == 38 and 5 not in store.ids(C)
    got = store.vectors(C, [1, 5])
    assert set(got) == {1} and np.allclose(got[1], vectors[0], atol=1e-5)

    store.upsert(C, [1], vectors[1:2], [{"artist": "replaced"}])
    assert store.count(C) == 38 and store.payloads(C)[1]["artist"] == "replaced"
    store.drop(C)
    assert store.dimension(C) is None


def test_a_collection_is_renamed_whole_and_an_interrupted_rename_completes(store):
    rng = np.random.default_rng(1)
    vectors = unit(rng.standard_normal((30, 8)))
    ids = list(range(1, 31))
    payloads = [{"artist": f"a{i}", "path": f"/m/{i}.flac"} for i in ids]
    store.upsert(C, ids, vectors, payloads)
    store.rename(C, "soundslike_new_l1_mean")
    assert store.collections() == ["soundslike_new_l1_mean"]
    assert store.payloads("soundslike_new_l1_mean")[7] == payloads[6]
    assert store.nearest("soundslike_new_l1_mean", vectors[4], 1)[0].id == 5

    # Half of the points moved when the last rename stopped: the rest join.
    store.upsert(C, ids, vectors, payloads)
    store.delete("soundslike_new_l1_mean", ids[15:])
    store.rename(C, "soundslike_new_l1_mean")
    assert store.collections() == ["soundslike_new_l1_mean"]
    assert store.ids("soundslike_new_l1_mean") == set(ids)
    got = store.vectors("soundslike_new_l1_mean", [30])[30]
    assert np.allclose(got, vectors[29], atol=1e-5)


def test_wrong_dimension_is_refused(store):
    from beetsplug.soundslike.store import StoreError

    store.upsert(C, [1], unit(np.ones((1, 8))), [{}])
    with pytest.raises(StoreError, match="8-dimensional"):
        store.upsert(C, [2], unit(np.ones((1, 4))), [{}])


def test_edge_store_survives_a_half_created_collection(tmp_path):
    store = EdgeStore(tmp_path)
    (tmp_path / C).mkdir()  # a crash before the collection was complete
    (tmp_path / C / "junk").write_text("x")
    assert store.collections() == []
    store.upsert(C, [1, 2], unit(np.eye(2, 4)), [{}, {}])
    assert store.count(C) == 2


def test_two_processes_share_the_embedded_store(model_dir, audio_dir, tmp_path):
    """A 'beet embed' writing while 'beet similar' reads: both succeed."""
    beet = BeetProcess(tmp_path, model_dir, auto=False)
    incoming = copy_pieces(audio_dir, tmp_path / "incoming", PIECES)
    for n in range(20):
        gen_audio.write(gen_audio.piece(200 + n, 4.0), str(incoming / f"x{n}.flac"),
                        tags={"title": f"Extra {n}", "artist": "Extra"})
    assert beet.run("import", "-A", "-q", str(incoming)).returncode == 0
    assert beet.run("embed", "title:Piece").returncode == 0
    writer = beet.popen("embed")
    readers = []
    while writer.poll() is None and len(readers) < 20:
        readers.append(beet.run("similar", "title:Piece 0", "-n", "3"))
    writer.wait(timeout=300)
    assert writer.returncode == 0, writer.stderr.read()
    assert readers
    for result in readers:
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("#EXTM3U")
    status = beet.run("embed", "--status").stdout
    assert f"embedded: {len(PIECES) + 20}" in status
