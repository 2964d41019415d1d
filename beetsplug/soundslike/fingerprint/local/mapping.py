"""Memory maps of the index's ``.npy`` files, with read-ahead.

Lookups memory-map the sorted hash arrays and binary search them, so
memory stays bounded at 100k tracks. When the index is not in the page
cache (larger than RAM, or pushed out by other work), a search announces
the pages it will read before reading them (``madvise(MADV_WILLNEED)``),
so the disk serves them in parallel rather than one page fault at a time:
at 10,000 tracks a cold search of a clean clip fell from 1.5-2.5 s to
0.2 s.
"""

from __future__ import annotations

import ctypes
import mmap
import os

import numpy as np

from ..match import FingerprintError


def _load_mincore():
    """libc's ``mincore`` (which pages of a mapping are in memory), or None."""
    try:
        func = ctypes.CDLL(None, use_errno=True).mincore
    except (OSError, AttributeError):
        return None
    func.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    func.restype = ctypes.c_int
    return func


_mincore = _load_mincore()


class MappedFile:
    """A read-only memory map of one ``.npy`` file that can ask the kernel
    to read ranges of its array ahead (``madvise(MADV_WILLNEED)``).

    A search touches thousands of scattered pages of an index that may not
    be in the page cache (a library larger than RAM, or other work pushed
    it out): faulted one by one, each waits for the disk in turn. Announced
    together first, they are read in parallel. When a sample of the pages
    is in memory already, the announcement is skipped: it would cost a
    system call per range (a fifth of a search's time at 10,000 tracks)
    and save nothing.
    """

    #: Ranges closer than this (bytes) are read as one.
    GAP = 16 * 1024
    #: Ranges sampled to tell whether they are in memory already; all
    #: must be. With 8, a partly cached 100,000-track index (pages that
    #: earlier searches read) passed the sample now and then and the
    #: search faulted the rest in one by one: 10 s. With 32, a skip needs
    #: nearly every page cached, and what is missed costs milliseconds.
    PROBES = 32

    def __init__(self, mm: mmap.mmap, data_offset: int, itemsize: int):
        self._mm = mm
        self._offset = data_offset
        self._itemsize = itemsize
        self._address = np.frombuffer(mm, np.uint8).ctypes.data if len(mm) else 0

    def _in_memory(self, elements: np.ndarray) -> bool:
        """Whether the page of each of a sample of ``elements`` (indices
        into the array, in any order) is in memory."""
        if _mincore is None or elements.size < 2 * self.PROBES:
            return False
        sample = elements[np.linspace(0, elements.size - 1, self.PROBES).astype(np.int64)]
        pages = (sample.astype(np.int64) * self._itemsize + self._offset) // mmap.PAGESIZE * mmap.PAGESIZE
        resident = ctypes.create_string_buffer(1)
        for start in pages.tolist():
            if (start >= len(self._mm) or _mincore(self._address + start, mmap.PAGESIZE, resident) != 0
                    or not resident.raw[0] & 1):
                return False
        return True

    def prefetch(self, start: np.ndarray, stop: np.ndarray) -> None:
        """Read ahead elements ``[start[i], stop[i])`` (any order)."""
        if start.size == 0 or not hasattr(self._mm, "madvise"):
            return
        # Probed before the ranges are sorted and joined: in a cached
        # index that work would be all a search's read-ahead costs.
        if self._in_memory(start):
            return
        order = np.argsort(start, kind="stable")
        a = start[order].astype(np.int64) * self._itemsize + self._offset
        b = stop[order].astype(np.int64) * self._itemsize + self._offset
        b = np.maximum.accumulate(b)
        # Coalesce: a new range starts where the gap to the previous end is large.
        new = np.r_[True, a[1:] > b[:-1] + self.GAP]
        first = np.flatnonzero(new)
        a = a[first] // mmap.PAGESIZE * mmap.PAGESIZE
        b = np.r_[b[first[1:] - 1], b[-1]]
        size = len(self._mm)
        inside = a < size
        a, b = a[inside], b[inside]
        for lo, hi in zip(a.tolist(), np.minimum(b, size).tolist()):
            if hi > lo:
                try:
                    self._mm.madvise(mmap.MADV_WILLNEED, lo, hi - lo)
                except (OSError, ValueError):
                    return


def map_npy(path: str) -> tuple[np.ndarray, MappedFile]:
    """Memory-map a ``.npy`` file read-only: the array (a plain ndarray: the
    memmap subclass adds a Python-level cost to every one of the thousands
    of small reads a search makes) and its :class:`MappedFile`."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise FingerprintError(f"{path}: unsupported .npy version {version}")
        offset = f.tell()
        size = os.fstat(f.fileno()).st_size
        if fortran or dtype.hasobject:
            raise FingerprintError(f"{path}: not a plain array")
        count = int(np.prod(shape, dtype=np.int64))
        if offset + count * dtype.itemsize > size:
            raise FingerprintError(f"{path}: truncated")
        if count == 0:  # nothing to map (and mmap refuses an empty range)
            empty = np.zeros(shape, dtype)
            empty.flags.writeable = False
            return empty, MappedFile(b"", offset, dtype.itemsize)
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    array = np.frombuffer(mm, dtype, count, offset).reshape(shape)
    return array, MappedFile(mm, offset, dtype.itemsize)
