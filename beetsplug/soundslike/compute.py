"""How this process runs its numeric work: the fingerprint analysis of
``beet embed`` and ``beet import``, and the searches of ``beet identify``
and ``beet listen``, are many numpy passes over arrays of 0.1 to 30 MB.

Process-wide settings, each measured where it is used; none changes a
result.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import sys
import threading

from beets.ui import main as beets_main

#: glibc's ``mallopt`` parameters: allocations above ``M_MMAP_THRESHOLD``
#: bytes get pages of their own, and free memory above
#: ``M_TRIM_THRESHOLD`` at the heap's top goes back to the system.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def reuse_freed_memory() -> None:
    """Let the arrays one search or one track's analysis frees serve the
    next one's. By default glibc maps each large array afresh and unmaps
    it when freed, so every clip faulted in and zeroed about 11,000 new
    pages (45 MB: 10-15% of a search at 10,000 tracks), and every track's
    analysis its spectrograms' (a fifth of the analysis's CPU). Kept in
    the process (up to 32 MB an array, 256 MB idle), they are reused.
    The memory stays with the process, as a server's would; no effect
    where the C library is not glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, 32 << 20)
    mallopt(M_TRIM_THRESHOLD, 256 << 20)


def one_blas_thread() -> None:
    """Run numpy's matrix products (BLAS: OpenBLAS in numpy's wheels) on
    the calling thread. Clips are identified one per core already
    (``beet identify``'s threads, ``beet listen``'s uploads), and their
    products are small (the placement's and the second look's
    correlations); by default OpenBLAS splits each over threads of its
    own, which then spin waiting for the next one: 16% of the CPU of a
    many-clip ``beet identify`` went to that wait. The model's threads
    (torch's own libraries) are not BLAS's and are left alone."""
    from threadpoolctl import threadpool_limits  # here: 2.4 ms every beet command need not pay

    threadpool_limits(limits=1, user_api="blas")


def import_numpy_ma_meanwhile() -> None:
    """Import ``numpy.ma`` on a thread of its own, now. numpy imports it
    on the first median or quantile of a process (its NaN check asks
    whether the result is a masked array): 8 ms of the first clip's
    search. Started beside the decoding process, the import is done while
    the clip decodes."""
    threading.Thread(target=importlib.import_module, args=("numpy.ma",),
                     name="import-numpy-ma", daemon=True).start()


def exit_without_final_collection() -> None:
    """Spare a ``beet`` process that has answered the interpreter's final
    garbage collection passes: after the last command Python traverses
    every object left (beets', numpy's, ours) several times before it
    exits, 35-40 ms of a single ``beet identify CLIP`` that the system
    frees as fast by ending the process. ``gc.freeze`` moves them out of
    the collector's reach; objects still freed by reference counts are
    freed as before, and files are flushed as before. Only where the
    process is beets' command line (its main module runs
    ``beets.ui.main``): beets used as a library, or the tests, keep their
    collector."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if getattr(main, "main", None) is beets_main or getattr(spec, "name", "") == "beets.__main__":
        gc.freeze()
