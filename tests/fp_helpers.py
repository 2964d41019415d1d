"""Generated music and degraded clips for the fingerprint tests, and an
index of them.

Every piece is synthesised from a seed: a random melody over random chords
(harmonic tones with attack/decay envelopes) and drum-like noise bursts, so
pieces differ in notes and rhythm, like different recordings. Clips are cut,
degraded (noise, lossy codec, speed change) and identified against an index
of ten pieces. Test modules import the fixtures they use from here.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from scipy import signal

from beetsplug.soundslike.fingerprint import FingerprintIndex, Match, params
from beetsplug.soundslike.fingerprint import landmarks as fp

SR = 16000
N_PIECES = 10


def synth_piece(seed: int, seconds: float = 36.0) -> np.ndarray:
    """A piece of music: melody, chords and drums, all decided by ``seed``."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    out = np.zeros(n, np.float64)
    beat = rng.uniform(0.22, 0.4)
    root = rng.integers(45, 57)
    scale = np.array([0, 2, 4, 5, 7, 9, 11, 12, 14, 16])
    t_note = np.arange(int(SR * 1.6)) / SR

    def tone(midi, length, amp, harmonics):
        f0 = 440.0 * 2 ** ((midi - 69) / 12)
        m = min(int(length * SR), t_note.size)
        t = t_note[:m]
        env = np.minimum(1.0, t / 0.01) * np.exp(-t * rng.uniform(2.0, 5.0))
        wave = sum(a * np.sin(2 * np.pi * f0 * (k + 1) * t) for k, a in enumerate(harmonics))
        return amp * env * wave

    pos = 0.0
    while pos < seconds - 1.7:
        start = int(pos * SR)
        # melody note on every beat, chord every four beats
        midi = root + 12 + scale[rng.integers(0, scale.size)]
        note = tone(midi, beat * rng.choice([1, 1, 2]), 0.5, [1.0, 0.5, 0.3, 0.15])
        out[start:start + note.size] += note
        if rng.random() < 0.3:
            chord_root = root + scale[rng.integers(0, 5)]
            for iv in (0, 4, 7):
                c = tone(chord_root + iv, beat * 4, 0.2, [1.0, 0.4, 0.2])
                out[start:start + c.size] += c
        if rng.random() < 0.5:
            m = int(0.08 * SR)
            burst = rng.standard_normal(m) * np.exp(-np.arange(m) / (0.015 * SR)) * 0.4
            out[start:start + m] += signal.lfilter([1, -0.9], [1], burst)
        pos += beat
    out /= np.max(np.abs(out)) + 1e-9
    return (0.8 * out).astype(np.float32)


def add_noise(x: np.ndarray, snr_db: float, seed: int, color: str = "pink") -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(x.size)
    if color == "pink":
        spec = np.fft.rfft(noise)
        f = np.arange(spec.size, dtype=np.float64)
        f[0] = 1
        noise = np.fft.irfft(spec / np.sqrt(f), x.size)
    gain = np.sqrt(np.mean(x.astype(np.float64) ** 2) / np.mean(noise ** 2)) / 10 ** (snr_db / 20)
    return (x + gain * noise).astype(np.float32)


def codec_roundtrip(x: np.ndarray, tmp_path, args: list[str], ext: str) -> np.ndarray:
    """Encode with ffmpeg and decode back (what a recorded/streamed clip goes through)."""
    src, dst = tmp_path / "clip.f32", tmp_path / f"clip.{ext}"
    x.astype("<f4").tofile(src)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "f32le", "-ar", str(SR), "-ac", "1", "-i", str(src),
                    *args, str(dst)], check=True)
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(dst), "-ac", "1", "-ar", str(SR), "-f", "f32le", "-"],
                         check=True, capture_output=True).stdout
    return np.frombuffer(out, "<f4").copy()


def clip(x: np.ndarray, start_s: float, seconds: float) -> np.ndarray:
    return x[int(start_s * SR): int((start_s + seconds) * SR)].copy()


@pytest.fixture(scope="module")
def pieces():
    return {item_id: synth_piece(seed=item_id) for item_id in range(1, N_PIECES + 2)}


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, pieces):
    """An index of pieces 1..10; piece 11 stays out (the "unknown" one)."""
    d = tmp_path_factory.mktemp("fpindex")
    with FingerprintIndex(d) as index:
        for item_id in range(1, N_PIECES + 1):
            assert index.add(item_id, pieces[item_id], SR) > 500
    return d


@pytest.fixture()
def index(index_dir, tmp_path):
    """A private copy of the shared index, so tests may modify it."""
    d = tmp_path / "idx"
    shutil.copytree(index_dir, d)
    with FingerprintIndex(d) as idx:
        yield idx


def assert_match(m: Match | None, item_id: int, offset: float, tol: float = 0.5):
    assert m is not None, "no match"
    assert m.item_id == item_id
    assert abs(m.offset - offset) <= tol, m
    assert 0.5 <= m.confidence <= 1.0
    assert m.score >= 5


def counted_on_disk(index: FingerprintIndex) -> np.ndarray:
    """Postings per hash value over the index's segments, counted."""
    total = np.zeros(1 << params.HASH_BITS, np.int64)
    for seg in index._segments:
        total += np.bincount(seg.keys(), minlength=total.size)
    return total


def assert_consistent(index: FingerprintIndex) -> None:
    """Every segment's inverted index holds exactly the keys of its
    forward copy."""
    for seg in index._segments:
        hashes, posts = seg.keys(), np.asarray(seg.posts)
        assert np.all(hashes[1:] >= hashes[:-1])
        local = posts >> seg.time_bits
        assert np.all(local < len(seg.item_ids))
        for k in range(len(seg.item_ids)):
            h, t = seg.forward(k)
            assert np.all(np.diff(t.astype(np.int64)) >= 0)  # time order
            mine = local == k
            got = np.sort((hashes[mine].astype(np.uint64) << np.uint64(32)) | (posts[mine] & seg.frame_mask))
            want = np.sort((fp.landmark_keys(h).astype(np.uint64) << np.uint64(32))
                           | (t & seg.frame_mask))
            assert np.array_equal(got, want)
