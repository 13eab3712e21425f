"""Process-level settings around the dense kernels of the solvers: BLAS threads, split
products and heap reuse, :func:`in_parallel` for two independent chains of kernels, and two
kernels that write into memory the caller keeps (:func:`transpose_copy`, :func:`sparse_times_dense`).

The three settings are context managers that do nothing where the platform does not
support them.  :class:`blas_threads` limits the BLAS thread pool for the call and sets every
library's previous count back on exit (threadpoolctl reads them first), exceptions and
nesting included; :class:`split_products` only changes a counter of this module (its worker
thread is started on first use and kept); :class:`heap_reuse` changes glibc's malloc
thresholds, which cannot be read back, so it is opt-in (the ipm's ``heap_reuse`` option).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np
import scipy.linalg  # noqa: F401  (its BLAS is loaded before _blas_controller scans)
import scipy.sparse as sp
from threadpoolctl import ThreadpoolController

try:  # scipy's CSR × dense kernel (adds into a given output); see csr_product_into
    from scipy.sparse._sparsetools import csr_matvecs as _csr_matvecs
except ImportError:  # pragma: no cover - a scipy without it: the public operator is used
    _csr_matvecs = None

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_GLIBC_DEFAULT_THRESHOLD = 128 * 1024  # glibc's initial mmap and trim thresholds

# below this matrix size BLAS runs single-threaded (threading overhead dominates, badly so on a busy machine)
SINGLE_THREAD_BELOW = 1200

_heap_depth = 0  # nesting depth of heap_reuse (only the outermost context changes the settings)

# split_products: products of at least this many flops run as two row halves on two threads
SPLIT_MIN_FLOPS = 1e7
# a solve uses the second thread (split_products, in_parallel) only when its blocks hold at least this
# much dense work, Σ d³ over blocks: below it, handing work to the other thread and waking it costs
# more than the halves save (bench/NOTES.md)
PARALLEL_MIN_WORK = 256 ** 3
_split_depth = 0  # nesting depth of split_products (0: products run as plain np.matmul)
_pair_active = False  # both threads are busy with one side each of in_parallel: products run unsplit
_worker_ident = None  # thread id of the worker (code running there never hands work to itself)
_split_lock = threading.Lock()
_split_pool: ThreadPoolExecutor | None = None
_split_pool_pid = 0  # the process that started the worker (a forked child has no worker thread)


def worth_a_second_thread(dims) -> bool:
    """Whether dense work on blocks of sizes ``dims`` is large enough to share between two threads
    (:data:`PARALLEL_MIN_WORK`)."""
    return sum(float(d) ** 3 for d in dims) >= PARALLEL_MIN_WORK


def threads_for_size(size: int) -> int | None:
    """BLAS threads for dense work on ``size × size`` matrices: 1 when small, else all (None)."""
    return 1 if size < SINGLE_THREAD_BELOW else None


@functools.cache
def _blas_controller():
    """threadpoolctl's view of the BLAS libraries loaded in this process, taken once (the scan of
    every loaded library costs several ms); numpy's and scipy's, which the solvers call, are
    imported before it."""
    return ThreadpoolController().select(user_api="blas")


class blas_threads:
    """Limit BLAS threads to ``n`` (see :func:`threads_for_size`) inside the context.

    On exit every library's count is set back to what threadpoolctl read on entry
    (also when the body raises; nested contexts restore in turn).  ``n = None``, or the
    environment variable ``LIPSDP_KEEP_BLAS_THREADS=1``, leaves them as they are.
    """

    def __init__(self, n: int | None):
        self.n, self.ctl = n, None

    def __enter__(self):
        if self.n is not None and os.environ.get("LIPSDP_KEEP_BLAS_THREADS", "0") != "1":
            try:
                self.ctl = _blas_controller().limit(limits=self.n)
            except Exception:  # no BLAS threadpoolctl knows: run as is
                self.ctl = None
        return self

    def __exit__(self, *exc):
        if self.ctl is not None:
            self.ctl.unregister()
        return False


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class split_products:
    """Inside this context :func:`matmul` computes large products as two row halves in parallel.

    Meant around single-threaded BLAS (:class:`blas_threads` with ``n = 1``):
    multi-threaded OpenBLAS is slower than one thread for the matrices of a few
    hundred rows an interior-point iteration works with, while two single-threaded
    halves of a product on two Python threads are faster than one (numpy's
    ``matmul`` releases the GIL; bench/NOTES.md).  ``enabled`` False,
    or a single available core, leaves products as they are.  Nested contexts
    count; the worker thread is started on first use and kept (a forked child
    starts its own: the parent's thread does not exist there).
    """

    def __init__(self, enabled: bool = True):
        self.active = bool(enabled) and available_cores() >= 2

    def __enter__(self):
        global _split_depth
        if self.active:
            with _split_lock:
                _split_depth += 1
        return self

    def __exit__(self, *exc):
        global _split_depth
        if self.active:
            with _split_lock:
                _split_depth -= 1
        return False


def _remember_worker() -> None:
    global _worker_ident
    _worker_ident = threading.get_ident()


def _split_worker() -> ThreadPoolExecutor:
    """The worker thread of this process (started on first use, again after a fork)."""
    global _split_pool, _split_pool_pid
    with _split_lock:
        if _split_pool is None or _split_pool_pid != os.getpid():
            _split_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lipsdp-split",
                                             initializer=_remember_worker)
            _split_pool_pid = os.getpid()
        return _split_pool


def _worker_free() -> bool:
    """Whether this thread may hand work to the worker: inside :class:`split_products`, not inside
    :func:`in_parallel` (the worker is busy with one side), and not on the worker itself."""
    return _split_depth > 0 and not _pair_active and threading.get_ident() != _worker_ident


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``a @ b`` for dense 2-D arrays (into ``out`` when given); two row halves on two threads
    inside :class:`split_products` when the product is large (``SPLIT_MIN_FLOPS``)."""
    m, k = a.shape
    n = b.shape[1]
    if m < 64 or 2.0 * m * k * n < SPLIT_MIN_FLOPS or not _worker_free():
        return np.matmul(a, b, out=out)
    if out is None:
        out = np.empty((m, n), dtype=np.result_type(a, b))
    half = m // 2
    lower = _split_worker().submit(np.matmul, a[half:], b, out=out[half:])
    np.matmul(a[:half], b, out=out[:half])
    lower.result()
    return out


def in_parallel(first, second) -> tuple:
    """``(first(), second())``, the two computed at once inside :class:`split_products`.

    ``first`` runs on the worker thread and ``second`` on the calling one; the
    two must be independent (no shared state written).  Meant for the two sides
    of an interior-point iteration (the X side and the Z side): each is a chain
    of BLAS, LAPACK and scipy.sparse calls on matrices of a few hundred rows, which
    run single-threaded and release the GIL, so two chains at once use both cores
    where splitting each product would pay thread hand-offs on small products
    (bench/NOTES.md).  Products inside either side run unsplit.
    Outside :class:`split_products`, or when already inside ``in_parallel``, the
    two run one after the other on this thread.  An exception of either side is
    raised after both have finished.
    """
    global _pair_active
    if not _worker_free():
        return first(), second()
    worker = _split_worker()
    _pair_active = True
    try:
        pending = worker.submit(first)
        try:
            b = second()
        finally:
            wait([pending])
        return pending.result(), b
    finally:
        _pair_active = False


def transpose_copy(a: np.ndarray, tile: int = 256, out: np.ndarray | None = None) -> np.ndarray:
    """``a.T`` as a C-contiguous array (new, or written into ``out``), copied tile by tile.

    ``np.ascontiguousarray(a.T)`` walks one side of a large array with a stride
    of a whole row; tiles of ``tile × tile`` stay in cache (bench/NOTES.md).
    """
    m, n = a.shape
    if out is None:
        out = np.empty((n, m), dtype=a.dtype)
    if m * n <= tile * tile:
        out[...] = a.T
        return out
    for i in range(0, m, tile):
        for j in range(0, n, tile):
            out[j:j + tile, i:i + tile] = a[i:i + tile, j:j + tile].T
    return out


def sparse_times_dense(w: sp.csr_matrix, x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``w @ x`` written into ``out`` (C-contiguous, ``w.shape[0] × x.shape[1]``); returns ``out``.

    scipy's operator returns a new array each time.  An interior-point iteration
    forms a few such products of a fixed shape, and on a virtual machine the
    fresh pages of a new array can cost more than the product (bench/NOTES.md).
    With ``out`` kept by the caller the memory is touched once
    (:func:`csr_product_into`).
    """
    if x.shape[0] != w.shape[1] or out.shape != (w.shape[0], x.shape[1]):
        out[...] = w @ x  # scipy's own shape rules (and errors)
        return out
    return csr_product_into(w.indptr, w.indices, w.data, x, out)


def csr_product_into(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, x: np.ndarray,
                     out: np.ndarray) -> np.ndarray:
    """``A @ x`` written into ``out`` for the CSR arrays of ``A`` (``out.shape[0]`` rows, ``x.shape[0]``
    columns), without building a scipy matrix; returns ``out``.

    This calls scipy's own CSR kernel (``csr_matvecs``, which adds ``A @ x`` into its
    output, row by row in CSR order) when the arrays are C-contiguous and the index and
    value types all agree; otherwise, or if a scipy release no longer has that kernel, it
    computes ``A @ x`` with scipy's operator and copies it in.
    """
    if (_csr_matvecs is not None and x.flags.c_contiguous and out.flags.c_contiguous
            and data.dtype == x.dtype == out.dtype and indptr.dtype == indices.dtype):
        out.fill(0)
        _csr_matvecs(out.shape[0], x.shape[0], x.shape[1], indptr, indices, data, x.ravel(), out.ravel())
    else:
        out[...] = sp.csr_matrix((data, indices, indptr), shape=(out.shape[0], x.shape[0])) @ x
    return out


@functools.cache
def _load_glibc():
    """glibc through ctypes (None elsewhere), loaded once per process: by its soname, else through
    ``find_library`` (which runs ldconfig, a few ms)."""
    for name in ("libc.so.6", None):
        try:
            name = name or ctypes.util.find_library("c")
            libc = ctypes.CDLL(name) if name else None
        except OSError:
            continue
        if libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim"):
            return libc
    return None


class heap_reuse:
    """Opt-in: serve large temporary arrays from the heap instead of fresh ``mmap`` pages.

    glibc hands an allocation above its mmap threshold out as freshly mapped
    pages and unmaps them on free, so a loop that creates and frees large
    temporaries pays a page fault per 4 KiB page.  Inside this context the mmap
    and trim thresholds are raised to ``limit`` so freed blocks are reused; on
    exit they are set to glibc's initial 128 KiB and the heap is trimmed.

    This is process-wide state that cannot be restored exactly: glibc has no
    call that reads the thresholds, and any ``mallopt`` of them turns glibc's
    adaptive threshold off for the rest of the process.  So lipsdp never enters
    it on its own: only the ipm back end's ``heap_reuse=True`` option does
    (``enabled`` False, a platform without glibc, or a nested context change
    nothing).  Not meant for concurrent threads.
    """

    def __init__(self, limit: int = 1 << 30, enabled: bool = True):
        self.limit, self.enabled = limit, bool(enabled)
        self.libc = None
        self.entered = False

    def __enter__(self):
        global _heap_depth
        if not self.enabled:
            return self
        if _heap_depth == 0:
            self.libc = _load_glibc()  # set back on exit even if one of the two calls was refused
            if self.libc is not None:
                self.libc.mallopt(_M_MMAP_THRESHOLD, self.limit)
                self.libc.mallopt(_M_TRIM_THRESHOLD, self.limit)
        _heap_depth += 1
        self.entered = True
        return self

    def __exit__(self, *exc):
        global _heap_depth
        if self.entered:
            _heap_depth -= 1
            self.entered = False
        if self.libc is not None:
            self.libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_DEFAULT_THRESHOLD)
            self.libc.mallopt(_M_TRIM_THRESHOLD, _GLIBC_DEFAULT_THRESHOLD)
            self.libc.malloc_trim(0)
            self.libc = None
        return False
