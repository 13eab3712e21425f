"""Process-level settings around the dense kernels of the solvers: BLAS threads, split
products and heap reuse, :func:`in_parallel` for two independent chains of kernels, and two
kernels that write into memory the caller keeps (:func:`transpose_copy`, :func:`sparse_times_dense`).

The three settings are context managers that restore what they change and do
nothing where the platform does not support them.
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

try:  # scipy's CSR × dense kernel (adds into a given output); see sparse_times_dense
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
# more than the halves save (measured here with one-thread and two-thread solves alternating in one
# process, medians of 30: LMI 110 44 vs 61 ms, 160 89 vs 115 ms, a 10-16³-4 MaxMin chain 51 vs 75 ms;
# even at 240–264; 544 1.01 s with two threads vs 1.19 s with one)
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
    """Limit BLAS threads to ``n`` (see :func:`threads_for_size`); ``n = None`` leaves them as they are."""

    def __init__(self, n: int | None):
        self.n, self.ctl = n, None

    def __enter__(self):
        if self.n is not None:
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
    multi-threaded OpenBLAS is slow for the matrices of a few hundred rows an
    interior-point iteration works with (measured here on 2 cores: a 264 × 264
    Cholesky factorisation 0.22 ms on one thread, 0.39 ms on two), while two
    single-threaded halves of a product on two Python threads take 0.39 ms
    instead of 0.66 ms (numpy's ``matmul`` releases the GIL).  ``enabled`` False,
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
    (measured here at d = 264: the two lift chains of one iteration 2.35 ms one
    after the other, 1.7 ms at once).  Products inside either side run unsplit.
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
    of a whole row; tiles of ``tile × tile`` stay in cache (measured here: a
    4000 × 4000 transpose 0.10 s plain, 0.025 s tiled; 464 × 464: 0.5 ms vs 0.1 ms).
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
    fresh pages of a new array cost more than the product (about 0.7 ms per MB
    measured here, against 0.17 ms for a 464 × 464 product with two non-zeros
    per row).  With ``out`` kept by the caller the memory is touched once.  This
    calls scipy's own CSR kernel (``csr_matvecs``, which adds ``w @ x`` into its
    output) when the index and value types all agree; otherwise, or if a scipy
    release no longer has that kernel, it computes ``w @ x`` and copies it in.
    """
    if (_csr_matvecs is not None and x.flags.c_contiguous and out.flags.c_contiguous
            and w.data.dtype == x.dtype == out.dtype and w.indptr.dtype == w.indices.dtype
            and x.shape[0] == w.shape[1] and out.shape == (w.shape[0], x.shape[1])):
        out.fill(0)
        _csr_matvecs(w.shape[0], w.shape[1], x.shape[1], w.indptr, w.indices, w.data, x.ravel(), out.ravel())
    else:
        out[...] = w @ x
    return out


def _glibc():
    if os.environ.get("LIPSDP_HEAP_REUSE", "1") == "0":
        return None
    return _load_glibc()


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
    """Serve large temporary arrays from the heap instead of fresh ``mmap`` pages.

    An interior-point iteration creates and frees dozens of d × d temporaries.
    glibc hands every allocation above its mmap threshold (128 KiB at first,
    adapted later) out as freshly mapped pages and gives them back on free, so
    each temporary pays one page fault per 4 KiB page: on a virtual machine this
    costs as much as the arithmetic (measured here: a 464 × 464 sparse-times-dense
    product 2.6 ms with fresh pages, 0.5 ms with reused ones).  Inside this
    context the mmap and trim thresholds are raised so freed blocks are reused;
    on exit they are set back to glibc's initial 128 KiB and the heap is trimmed,
    so the memory goes back to the system.  (glibc's dynamic adaptation of the
    thresholds stays off after a ``mallopt`` call.)  Nested contexts leave the
    settings to the outermost one; not meant for concurrent threads.  Elsewhere
    than glibc, or with the environment variable ``LIPSDP_HEAP_REUSE=0``, it does
    nothing.
    """

    def __init__(self, limit: int = 1 << 30):
        self.limit = limit
        self.libc = None

    def __enter__(self):
        global _heap_depth
        if _heap_depth == 0:
            libc = _glibc()
            if libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, self.limit) \
                    and libc.mallopt(_M_TRIM_THRESHOLD, self.limit):
                self.libc = libc
        _heap_depth += 1
        return self

    def __exit__(self, *exc):
        global _heap_depth
        _heap_depth -= 1
        if self.libc is not None:
            self.libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_DEFAULT_THRESHOLD)
            self.libc.mallopt(_M_TRIM_THRESHOLD, _GLIBC_DEFAULT_THRESHOLD)
            self.libc.malloc_trim(0)
            self.libc = None
        return False
