"""Whether two items hold one recording (``FingerprintIndex.same_recording``):
the same master re-encoded, copied or trimmed, not another piece."""

from __future__ import annotations

import numpy as np
from fp_helpers import SR, codec_roundtrip, index, index_dir, pieces, synth_piece  # noqa: F401 (fixtures)

from beetsplug.soundslike.fingerprint import local


def test_same_recording(index, pieces, tmp_path):
    # Item 51 is piece 4 re-encoded as mp3 with its first 3 s cut; item 52
    # is another piece.
    copy = codec_roundtrip(pieces[4][3 * SR:], tmp_path, ["-c:a", "libmp3lame", "-b:a", "128k"], "mp3")
    index.add(51, copy, SR)
    index.add(52, synth_piece(99), SR)
    index.flush()
    assert index.same_recording(4) == [51]
    assert index.same_recording(51) == [4]
    assert index.same_recording(52) == []
    lm = index.landmarks(4)
    assert lm is not None and len(lm) > 500 and np.all(np.diff(lm.times.astype(np.int64)) >= 0)


def test_a_large_librarys_check_reads_a_share_of_the_hashes_and_finds_the_copies(
        index, pieces, tmp_path, monkeypatch):
    # In a large library a track's hashes hold tens of millions of
    # postings. The check reads a share of the hashes, chosen by their
    # value (a copy chooses the same ones), and judges the agreement
    # against what it read: here the budget is cut so that a small index
    # is sampled too.
    monkeypatch.setattr(local, "SAME_RECORDING_POSTINGS", 400)
    asked = []

    def lookup(segments, q):
        asked.append(len(q.hashes))
        return real_lookup(segments, q)

    real_lookup = local.lookup
    monkeypatch.setattr(local, "lookup", lookup)
    copy = codec_roundtrip(pieces[4][3 * SR:], tmp_path, ["-c:a", "libmp3lame", "-b:a", "128k"], "mp3")
    index.add(51, copy, SR)
    index.add(52, synth_piece(99), SR)
    index.add(53, pieces[4][8 * SR: 26 * SR], SR)  # a 18 s excerpt
    index.flush()
    assert index.same_recording(4) == [51, 53]
    # The two copies of piece 4 agree with each other at about the bar
    # (a quarter of the shorter one): either may or may not name the
    # other, but both name piece 4, so they fall in one group.
    assert 4 in index.same_recording(51)
    assert 4 in index.same_recording(53)
    assert index.same_recording(52) == []
    keyed = int(np.sum(index.landmarks(4).keys != 0))
    assert asked[0] < keyed / 2
