"""Decoding: a file and the same bytes from memory go through
the same decoding process and give the same samples; a stretch is read without
decoding the rest; windows read alone are the whole decode's samples; every
failure is a one-line reason."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FORMATS, gen_audio

from beetsplug.soundslike.audio import (
    SAMPLE_RATE, AudioError, decode, decode_bytes, decode_windows, excerpt_windows,
)


def test_file_and_upload_decode_alike(tmp_path):
    path = tmp_path / "piece.flac"
    gen_audio.write(gen_audio.piece(3, 4.0), str(path))
    from_file = decode(path, max_seconds=3.0, probe=False)
    from_memory = decode_bytes(path.read_bytes(), max_seconds=3.0)
    assert from_file.sample_rate == from_memory.sample_rate == SAMPLE_RATE
    assert from_file.samples.dtype == np.float32
    assert np.array_equal(from_file.samples, from_memory.samples)
    assert abs(from_memory.seconds - 3.0) < 0.01 and from_memory.duration == from_memory.seconds

    whole = decode(path)
    assert abs(whole.seconds - 4.0) < 0.05 and abs(whole.duration - 4.0) < 0.05
    stretch = decode(str(path).encode(), start=1.0, max_seconds=1.0)
    assert abs(stretch.seconds - 1.0) < 0.01 and abs(stretch.duration - 4.0) < 0.05
    start = int(1.0 * SAMPLE_RATE)
    same = np.corrcoef(stretch.samples[1000:-1000], whole.samples[start + 1000:start + 15000])
    assert same[0, 1] > 0.99


@pytest.mark.parametrize("rate", [22050, 44100, 48000])
@pytest.mark.parametrize("ext", FORMATS)
def test_windows_are_the_whole_decodes_samples(tmp_path, ext, rate):
    """Excerpt windows decoded alone (what ``beet embed`` reads after its
    fingerprint phase) are bit for bit the whole decode's slices, in every
    format and at source rates whose grid meets 16 kHz every 20, 10 and
    1 ms: at the start, at the end, overlapping, anywhere."""
    path = tmp_path / f"piece{ext}"
    gen_audio.write(gen_audio.piece(2, 40.0, rate=rate), str(path), rate=rate, channels=2)
    whole = decode(path, probe=False).samples
    windows = excerpt_windows(whole, 3, 10.0) + [
        (0, 3000), (12345, 777), (200_000, 50_000), (230_000, 40_000), (len(whole) - 4000, 4000),
    ]
    parts = decode_windows(str(path).encode(), windows)
    for (start, count), part in zip(windows, parts):
        assert np.array_equal(part, whole[start:start + count]), (start, count)
    with pytest.raises(AudioError, match="changed"):
        decode_windows(path, [(len(whole) - 100, 1000)])


def test_a_damaged_file_says_so_and_its_windows_would_shift(tmp_path):
    """A file with frames that do not decode is read as ffmpeg reads it
    (those frames skipped) and says it was damaged: the windows' read, which
    counts MP3 packets far from a window instead of decoding them, would
    place the windows after the damage a few frames later, which is why
    ``beet embed`` reads such a file whole again."""
    intact = tmp_path / "intact.mp3"
    gen_audio.write(gen_audio.piece(4, 60.0), str(intact))
    data = bytearray(intact.read_bytes())
    early = len(data) // 5  # 12 s in: far from the window below
    data[early:early + 1500] = bytes((i * 97 + 13) % 256 for i in range(1500))
    damaged = tmp_path / "damaged.mp3"
    damaged.write_bytes(bytes(data))
    whole, broken = decode(intact), decode(damaged)
    assert not whole.damaged and broken.damaged
    assert len(broken.samples) < len(whole.samples)  # the damaged frames are gone
    start = 40 * SAMPLE_RATE
    (part,) = decode_windows(damaged, [(start, 3 * SAMPLE_RATE)])
    (same,) = decode_windows(intact, [(start, 3 * SAMPLE_RATE)])
    assert np.array_equal(same, whole.samples[start:start + 3 * SAMPLE_RATE])
    assert not np.array_equal(part, broken.samples[start:start + 3 * SAMPLE_RATE])


def test_failures_are_one_line_reasons(tmp_path):
    (tmp_path / "empty.mp3").write_bytes(b"")
    (tmp_path / "text.flac").write_text("not audio\n" * 100)
    cases = [
        (lambda: decode(tmp_path / "gone.mp3"), "file not found"),
        (lambda: decode(tmp_path / "empty.mp3"), "empty file (0 bytes)"),
        (lambda: decode(tmp_path), "is a folder, not an audio file"),
        (lambda: decode(tmp_path / "text.flac"), "not a readable audio file"),
        (lambda: decode_bytes(b""), "empty upload"),
        (lambda: decode_bytes(b"not audio\n" * 100), "not a readable audio file"),
    ]
    for call, words in cases:
        with pytest.raises(AudioError) as info:
            call()
        assert words in str(info.value) and "\n" not in str(info.value)
