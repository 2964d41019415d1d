"""Fingerprints stored in Qdrant (the ``url:`` backend).

The server is qdrant-client's in-process engine (``QdrantClient(":memory:")``):
the same API, sparse vectors with the IDF modifier and filters as a Qdrant
server, reached through the same ServerStore the plugin builds for ``url:``.
The answers must be the ones the local index gives.
"""

from __future__ import annotations

import numpy as np
import pytest
from qdrant_client import QdrantClient
from scipy import signal
from fp_helpers import SR, add_noise, assert_match, clip, codec_roundtrip, synth_piece

from beetsplug.soundslike.fingerprint import ClipTooShort, FingerprintIndex, open_fingerprints
from beetsplug.soundslike.fingerprint.params import PART_SECONDS
from beetsplug.soundslike.fingerprint.server import COLLECTION, ServerFingerprints
from beetsplug.soundslike.store import ServerStore, StoreUnavailable

N_PIECES = 8


@pytest.fixture(scope="module")
def pieces():
    # 36 s pieces: two parts each on the server.
    return {item_id: synth_piece(seed=item_id) for item_id in range(1, N_PIECES + 2)}


@pytest.fixture()
def server(pieces):
    store = ServerStore("(in-process)", None, client=QdrantClient(location=":memory:"))
    with ServerFingerprints(store) as fps:
        for item_id in range(1, N_PIECES + 1):
            fps.add(item_id, pieces[item_id], SR)
        fps.flush()
        yield fps


def test_tracks_are_stored_as_parts(server, pieces):
    assert server.item_ids() == set(range(1, N_PIECES + 1))
    stats = server.stats()
    assert stats["items"] == N_PIECES
    assert stats["parts"] == N_PIECES * int(np.ceil(36 / PART_SECONDS))
    lm = server.landmarks(3)
    assert lm is not None and len(lm) > 500
    assert np.all(np.diff(lm.times.astype(np.int64)) >= 0)


def test_noisy_reencoded_clip_matches_like_the_local_index(server, pieces, tmp_path):
    x = add_noise(clip(pieces[5], 13.0, 5), 5.0, seed=1)
    x = codec_roundtrip(x, tmp_path, ["-c:a", "aac", "-b:a", "64k"], "m4a")
    m = server.identify(x, SR)
    assert_match(m, 5, 13.0)
    with FingerprintIndex(tmp_path / "local") as local:
        for item_id in range(1, N_PIECES + 1):
            local.add(item_id, pieces[item_id], SR)
        local.flush()
        lm = local.identify(x, SR)
    assert lm.item_id == m.item_id and abs(lm.offset - m.offset) < 0.1


def test_clip_across_two_parts(server, pieces):
    # 27..33 s: half in part 0, half in part 1.
    assert_match(server.identify(clip(pieces[2], 27.0, 6), SR), 2, 27.0)


def test_speed_change(server, pieces):
    x = signal.resample_poly(clip(pieces[4], 10.0, 5), 100, 102).astype(np.float32)
    m = server.identify(x, SR)
    assert_match(m, 4, 10.0)
    assert abs(m.speed - 1.02) < 0.006


def test_unknown_and_noise_are_none(server, pieces):
    assert server.identify(clip(pieces[N_PIECES + 1], 10.0, 5), SR) is None
    rng = np.random.default_rng(5)
    assert server.identify((0.1 * rng.standard_normal(5 * SR)).astype(np.float32), SR) is None
    with pytest.raises(ClipTooShort):
        server.identify(clip(pieces[1], 3.0, 0.3), SR)


def test_remove_and_replace(server, pieces):
    server.remove([6])
    server.flush()
    assert 6 not in server and len(server) == N_PIECES - 1
    assert server.identify(clip(pieces[6], 8.0, 5), SR) is None
    # Item 7 now holds another recording: its old parts are gone.
    server.add(7, pieces[N_PIECES + 1], SR)
    server.flush()
    assert_match(server.identify(clip(pieces[N_PIECES + 1], 10.0, 5), SR), 7, 10.0)
    assert server.identify(clip(pieces[7], 10.0, 5), SR) is None


def test_same_recording(server, pieces, tmp_path):
    copy = codec_roundtrip(pieces[4][3 * SR:], tmp_path, ["-c:a", "libmp3lame", "-b:a", "128k"], "mp3")
    server.add(51, copy, SR)
    server.flush()
    assert server.same_recording(4) == [51]
    assert server.same_recording(51) == [4]
    assert server.same_recording(2) == []


def test_interrupted_write_leaves_item_missing(server, pieces, monkeypatch):
    # Part 0 marks an item as present and goes last: a failure before it
    # leaves the item missing, for `beet embed` to redo.
    real = server._client.upsert
    calls = []

    def failing(collection, points, wait):
        if any(p.payload["part"] == 0 for p in points):
            raise ConnectionError("connection reset")
        calls.append(len(points))
        return real(collection, points=points, wait=wait)

    monkeypatch.setattr(server._client, "upsert", failing)
    server.add(60, synth_piece(60), SR)
    with pytest.raises(Exception, match="connection reset"):
        server.flush()
    assert calls and 60 not in server.stored_ids()


def test_url_selects_the_server_and_reports_it_down(tmp_path):
    class Settings:
        url = "http://127.0.0.1:9"  # nothing listens on the discard port
        api_key = ""
        timeout = 2
        fingerprint_dir = tmp_path / "fingerprints"

    fps = open_fingerprints(Settings())
    assert isinstance(fps, ServerFingerprints)
    with pytest.raises(StoreUnavailable, match="cannot reach the Qdrant server"):
        fps.item_ids()
    assert not Settings.fingerprint_dir.exists()
    assert COLLECTION.startswith("soundslike-fingerprints-v")


def test_beet_embed_run_puts_vectors_and_fingerprints_on_the_server(model_dir, audio_dir, tmp_path):
    """The indexer (what the import stage and ``beet embed`` run) with
    ``url:`` writes both signals to the server and nothing beside the
    library; clips are identified from there."""
    from beetsplug.soundslike.audio import decode
    from beetsplug.soundslike.embedder import Embedder
    from beetsplug.soundslike.indexer import Indexer
    from beetsplug.soundslike.settings import ModelSpec, Settings

    settings = Settings(
        spec=ModelSpec(model_dir, 2, "mean"), device="cpu", quantize=False, excerpts=2,
        excerpt_seconds=4.0, batch_size=4, store_dir=tmp_path / "soundslike",
        url="http://qdrant.invalid:6333", api_key="", timeout=2, fingerprint=True,
        max_fingerprint_seconds=3600,
    )

    class Track:
        def __init__(self, number, path):
            self.id, self.path = number, bytes(path)
            self.artist = self.title = self.album = self.albumartist = ""
            self.album_id, self.length = 0, 24.0

    files = sorted(audio_dir.glob("piece[0-5].*"))
    store = ServerStore("(in-process)", None, client=QdrantClient(location=":memory:"))
    indexer = Indexer(settings, lambda: Embedder(settings.spec, device="cpu", excerpts=2,
                                                 excerpt_seconds=4.0), store=store)
    report = indexer.run([Track(n + 1, bytes(f)) for n, f in enumerate(files)])
    assert report.ok and report.embedded == len(files)
    assert isinstance(indexer.fingerprints, ServerFingerprints)
    assert indexer.fingerprinted_ids() == set(range(1, len(files) + 1))
    assert store.count(settings.spec.collection) == len(files)
    assert not settings.fingerprint_dir.exists()

    samples = decode(bytes(files[3]), 16000).samples[5 * 16000:11 * 16000]
    match = indexer.fingerprints.identify(add_noise(samples, 10.0, seed=2), 16000)
    assert match is not None and match.item_id == 4 and abs(match.offset - 5.0) < 0.5
