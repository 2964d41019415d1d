"""Broken inputs shared by the tests of ``beet embed`` and ``beet identify``."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
from conftest import gen_audio

from beets.library import Item


def write_bad_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """Broken inputs: title -> (path, words the error line must contain)."""
    folder.mkdir(parents=True, exist_ok=True)
    bad: dict[str, tuple[Path, str]] = {}
    bad["missing"] = (folder / "gone.mp3", "file not found")
    (folder / "empty.mp3").write_bytes(b"")
    bad["empty"] = (folder / "empty.mp3", "empty file")
    whole = gen_audio.write(gen_audio.piece(11, 6.0), str(folder / "whole.mp3"))
    (folder / "truncated.mp3").write_bytes(Path(whole).read_bytes()[:1500])
    bad["truncated"] = (folder / "truncated.mp3", "")
    (folder / "notes.flac").write_text("this is a text file, not audio\n" * 50)
    bad["text"] = (folder / "notes.flac", "not a readable audio file")
    gen_audio.write(np.zeros(22050 * 5, np.float32), str(folder / "silence.flac"))
    bad["silence"] = (folder / "silence.flac", "silent")
    gen_audio.write(gen_audio.piece(12, 0.3), str(folder / "short.wav"))
    bad["short"] = (folder / "short.wav", "too short")
    # A WAV header announcing a codec nobody implements (format tag 0x7777).
    data = b"\x01\x02" * 8000
    fmt = struct.pack("<HHIIHH", 0x7777, 1, 8000, 16000, 2, 16)
    riff = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    (folder / "codec.wav").write_bytes(b"RIFF" + struct.pack("<I", len(riff)) + riff)
    bad["codec"] = (folder / "codec.wav", "unsupported audio codec")
    return bad


def add_items(lib, files: dict[str, Path]) -> dict[str, Item]:
    items = {}
    for title, path in files.items():
        item = Item(path=os.fsencode(str(path)), title=title, artist="Test", length=1.0)
        lib.add(item)
        items[title] = item
    return items
