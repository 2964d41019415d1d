#!/usr/bin/env python3
"""Cut a clip from a track and degrade it like a phone recording in a room:
pink noise at a given SNR, optional speed change, lossy re-encoding.

Usage: python scripts/degrade.py TRACK CLIP.m4a [--start S] [--seconds S]
                                 [--snr DB] [--speed FACTOR]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_audio  # noqa: E402

from beetsplug.soundslike.audio import decode  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("track")
    parser.add_argument("clip")
    parser.add_argument("--start", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--snr", type=float, default=5.0)
    parser.add_argument("--speed", type=float, default=1.0)
    args = parser.parse_args()

    rate = 22050
    audio = decode(args.track, rate, start=args.start, max_seconds=args.seconds)
    samples = audio.samples
    if args.speed != 1.0:
        # Playing faster shortens the clip and raises the pitch (a turntable).
        positions = np.arange(0, len(samples) - 1, args.speed)
        samples = np.interp(positions, np.arange(len(samples)), samples).astype(np.float32)
    noisy = gen_audio.add_noise(samples, args.snr, seed=7)
    gen_audio.write(noisy, args.clip, rate=rate)
    print(args.clip)


if __name__ == "__main__":
    main()
