"""Memory maps of the local index's files and their read-ahead."""

from __future__ import annotations

import mmap
import os

import numpy as np
import pytest

from beetsplug.soundslike.fingerprint import FingerprintError
from beetsplug.soundslike.fingerprint.local.mapping import MappedFile, map_npy


def test_no_read_ahead_for_pages_already_in_memory(tmp_path):
    # Asking the kernel for pages it holds costs a system call per range
    # and gains nothing: a sample of them is checked first.
    path = tmp_path / "a.npy"
    np.save(path, np.arange(1 << 20, dtype=np.uint32))
    path.read_bytes()  # now in the page cache
    with open(path, "rb") as f:
        mm = _RecordingMap(f.fileno(), 0, access=mmap.ACCESS_READ)
    mm.calls = []
    mapped = MappedFile(mm, 128, 4)
    starts = np.arange(0, 1 << 20, 5000)
    mapped.prefetch(starts, starts + 10)
    assert mm.calls == []
    # Out of the page cache, every range is asked for.
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)  # dirty pages cannot be dropped
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    mapped.prefetch(starts, starts + 10)
    if not mapped._in_memory(np.arange(0, 1 << 20, 1024 * 37)):  # eviction works on this file system
        assert len(mm.calls) == starts.size


def test_mapped_arrays_equal_the_saved_ones(tmp_path):
    for name, array in (("a", np.arange(1000, dtype=np.uint32) * 7),
                        ("b", np.arange(30, dtype=np.int64).reshape(10, 3)),
                        ("c", np.zeros(0, np.uint64))):
        np.save(tmp_path / f"{name}.npy", array)
        mapped, _ = map_npy(str(tmp_path / f"{name}.npy"))
        assert mapped.dtype == array.dtype and np.array_equal(mapped, array)
        assert not mapped.flags.writeable
    # A file cut short (a disk that filled up) is refused, not read past its end.
    raw = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "short.npy").write_bytes(raw[:-100])
    with pytest.raises(FingerprintError, match="truncated"):
        map_npy(str(tmp_path / "short.npy"))


class _AdviceRecorder(bytearray):
    """Stands in for the mmap: records what read-ahead is asked for."""

    def __init__(self, size):
        super().__init__(size)
        self.calls = []

    def madvise(self, option, start, length):
        self.calls.append((start, start + length))


class _RecordingMap(mmap.mmap):
    """A real memory map that records read-ahead requests."""

    def madvise(self, option, start=0, length=None):
        self.calls.append((start, length))


def test_read_ahead_ranges_are_page_aligned_coalesced_and_bounded():
    page = mmap.PAGESIZE
    rec = _AdviceRecorder(size=(1 << 22) + page)
    mapped = MappedFile(rec, data_offset=128, itemsize=4)
    # Elements 0-9 and 100-109 lie within a few hundred bytes: one range.
    # Element 500,000 is ~2 MB further: a range of its own. The last one
    # runs past the end of the file and is cut there.
    mapped.prefetch(np.array([100, 500_000, 0, (1 << 20) - 5]), np.array([110, 500_010, 10, (1 << 20) + 2000]))
    assert rec.calls == [(0, 128 + 110 * 4),
                         ((128 + 500_000 * 4) // page * page, 128 + 500_010 * 4),
                         ((128 + ((1 << 20) - 5) * 4) // page * page, (1 << 22) + page)]
    assert all(start % page == 0 for start, _ in rec.calls)
