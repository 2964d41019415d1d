#!/usr/bin/env python3
"""Generate music-like test audio: melodies, chords, drums and noise.

Each seed gives a different piece (key, tempo, timbre, rhythm), so a
library of generated pieces has clear neighbours and clear strangers. Used
by the tests and the offline demo; no audio is committed to the repo.

Usage: python scripts/gen_audio.py OUT_DIR [--count N] [--seconds S]
"""

from __future__ import annotations

import argparse
import os
import subprocess

import numpy as np

RATE = 22050

ENCODERS = {
    ".mp3": ["-c:a", "libmp3lame", "-b:a", "128k"],
    ".m4a": ["-c:a", "aac", "-b:a", "128k"],
    ".flac": ["-c:a", "flac"],
    ".ogg": ["-c:a", "libvorbis", "-q:a", "4"],
    ".wav": ["-c:a", "pcm_s16le"],
}


def piece(seed: int, seconds: float = 30.0, rate: int = RATE) -> np.ndarray:
    """A mono piece: a chord progression, a melody and a drum pattern."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    out = np.zeros(n, dtype=np.float64)

    root = 110.0 * 2 ** (rng.integers(0, 12) / 12)
    scale = np.array([0, 2, 4, 5, 7, 9, 11, 12, 14, 16])
    bpm = float(rng.uniform(80, 150))
    beat = 60.0 / bpm
    harmonics = rng.uniform(0.1, 0.8, size=5) ** np.arange(1, 6)
    bright = float(rng.uniform(0.5, 2.0))

    # Chords: one per bar of four beats.
    bar = 4 * beat
    degrees = rng.choice([0, 3, 4, 5], size=int(seconds / bar) + 2)
    for k, degree in enumerate(degrees):
        start = int(k * bar * rate)
        if start >= n:
            break
        end = min(n, int((k + 1) * bar * rate))
        seg = t[start:end] - t[start]
        env = np.minimum(1.0, seg * 20) * np.exp(-seg * 0.7)
        for step in (0, 2, 4):
            freq = root * 2 ** (scale[(degree + step) % len(scale)] / 12)
            out[start:end] += 0.12 * env * np.sin(2 * np.pi * freq * seg)

    # Melody: random notes on eighths and quarters.
    pos = 0.0
    while pos < seconds:
        length = beat * float(rng.choice([0.5, 1.0, 1.0, 2.0]))
        start, end = int(pos * rate), min(n, int((pos + length) * rate))
        if start >= n:
            break
        freq = 2 * root * 2 ** (scale[rng.integers(0, len(scale))] / 12)
        seg = t[start:end] - t[start]
        env = np.minimum(1.0, seg * 60) * np.exp(-seg * 3.0 / bright)
        tone = sum(
            h * np.sin(2 * np.pi * freq * (i + 1) * seg) for i, h in enumerate(harmonics)
        )
        out[start:end] += 0.25 * env * tone
        pos += length

    # Drums: kick on beats 1 and 3, noise snare on 2 and 4, hats on eighths.
    pattern = rng.random(8) < 0.7
    kick_len, snare_len, hat_len = int(0.15 * rate), int(0.12 * rate), int(0.04 * rate)
    kt = np.arange(kick_len) / rate
    kick = np.sin(2 * np.pi * (60 + 80 * np.exp(-kt * 30)) * kt) * np.exp(-kt * 18)
    snare = rng.standard_normal(snare_len) * np.exp(-np.arange(snare_len) / rate * 30)
    hat = np.diff(rng.standard_normal(hat_len + 1)) * np.exp(-np.arange(hat_len) / rate * 90)
    step = 0
    pos = 0.0
    while pos < seconds:
        start = int(pos * rate)
        if step % 4 == 0:
            _mix(out, start, 0.5 * kick)
        elif step % 4 == 2:
            _mix(out, start, 0.18 * snare)
        if pattern[step % 8]:
            _mix(out, start, 0.08 * hat)
        step += 1
        pos += beat / 2

    out /= max(1e-9, float(np.max(np.abs(out))))
    return (0.8 * out).astype(np.float32)


def _mix(out: np.ndarray, start: int, sound: np.ndarray) -> None:
    end = min(len(out), start + len(sound))
    if start < end:
        out[start:end] += sound[: end - start]


def add_noise(x: np.ndarray, snr_db: float, seed: int = 0, pink: bool = True) -> np.ndarray:
    """``x`` plus white or pink noise at ``snr_db``."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(len(x))
    if pink:
        spectrum = np.fft.rfft(noise)
        freqs = np.arange(len(spectrum), dtype=np.float64)
        freqs[0] = 1.0
        noise = np.fft.irfft(spectrum / np.sqrt(freqs), n=len(x))
    power = np.mean(x.astype(np.float64) ** 2)
    noise *= np.sqrt(power / (np.mean(noise ** 2) * 10 ** (snr_db / 10)))
    mixed = x + noise
    return (mixed / max(1.0, float(np.max(np.abs(mixed))))).astype(np.float32)


def babble(seconds: float, talkers: int = 4, seed: int = 0, rate: int = RATE) -> np.ndarray:
    """People talking: each talker a voiced buzz whose pitch wanders
    (90-250 Hz) through vowel formants that change every syllable, in
    bursts of syllables and pauses."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    out = np.zeros(n)
    vowels = [(730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410)]
    for _ in range(talkers):
        f0 = float(rng.uniform(90, 250)) * np.exp(np.cumsum(rng.normal(0, 0.0004, n)))
        phase = np.cumsum(f0 / rate)
        buzz = (phase % 1.0) < 0.1  # glottal pulses
        voice = np.zeros(n)
        pos = 0
        while pos < n:
            length = int(rng.uniform(0.12, 0.3) * rate)
            seg = buzz[pos:pos + length].astype(float)
            formants = vowels[rng.integers(0, len(vowels))]
            spec = np.fft.rfft(seg)
            freqs = np.fft.rfftfreq(seg.size, 1.0 / rate)
            gain = sum(1.0 / (1.0 + ((freqs - f) / 90.0) ** 2) for f in formants)
            sound = np.fft.irfft(spec * gain, n=seg.size) * np.hanning(seg.size)
            if rng.random() < 0.8:  # a syllable, else a pause
                voice[pos:pos + sound.size] += sound
            pos += length
        out += voice / (np.std(voice) + 1e-9)
    return (out / talkers).astype(np.float32)


def mix(x: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``x`` with ``noise`` (at least as long) at ``snr_db``."""
    noise = noise[: len(x)].astype(np.float64)
    power = np.mean(x.astype(np.float64) ** 2)
    noise = noise * np.sqrt(power / (np.mean(noise ** 2) * 10 ** (snr_db / 10)))
    mixed = x + noise
    return (mixed / max(1.0, float(np.max(np.abs(mixed))))).astype(np.float32)


def lowpass(x: np.ndarray, cutoff_hz: float, rate: int = RATE) -> np.ndarray:
    """A gentle low-pass (a "slightly filtered" copy of a track)."""
    spectrum = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(len(x), 1.0 / rate)
    spectrum *= 1.0 / (1.0 + (freqs / cutoff_hz) ** 4)
    return np.fft.irfft(spectrum, n=len(x)).astype(np.float32)


def write(
    samples: np.ndarray,
    path: str,
    rate: int = RATE,
    channels: int = 1,
    tags: dict[str, str] | None = None,
) -> str:
    """Encode float samples to ``path``; the format follows the extension;
    ``tags`` (title, artist, album, ...) are written as metadata."""
    ext = os.path.splitext(path)[1].lower()
    data = np.asarray(samples, np.float32)
    if channels == 2:
        data = np.stack([data, data], axis=1).reshape(-1)
    cmd = [
        "ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "f32le", "-ar", str(rate),
        "-ac", str(channels), "-i", "pipe:0", *ENCODERS[ext],
    ]
    for key, value in (tags or {}).items():
        cmd += ["-metadata", f"{key}={value}"]
    cmd.append(path)
    subprocess.run(cmd, input=data.tobytes(), check=True)
    if ext == ".wav" and tags:
        _tag_wav(path, tags)
    return path


def _tag_wav(path: str, tags: dict[str, str]) -> None:
    """ffmpeg writes RIFF INFO tags that beets does not read; add ID3."""
    from mutagen import id3
    from mutagen.wave import WAVE

    frames = {"title": id3.TIT2, "artist": id3.TPE1, "album": id3.TALB}
    audio = WAVE(path)
    audio.add_tags()
    for key, value in tags.items():
        if key in frames:
            audio.tags.add(frames[key](encoding=3, text=value))
    audio.save()


ARTISTS = ["The Sine Waves", "Chord Collective", "Drum Machine Orchestra"]


def demo_tags(seed: int) -> dict[str, str]:
    """Title, artist and album for generated piece ``seed``."""
    artist = ARTISTS[seed % len(ARTISTS)]
    return {"title": f"Piece {seed}", "artist": artist, "album": f"{artist} Vol. 1"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    exts = list(ENCODERS)
    for seed in range(args.count):
        ext = exts[seed % len(exts)]
        tags = demo_tags(seed)
        folder = os.path.join(args.out_dir, tags["artist"], tags["album"])
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"piece{seed:02d}{ext}")
        write(piece(seed, args.seconds), path, tags=tags)
        print(path)


if __name__ == "__main__":
    main()
