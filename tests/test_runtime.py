"""The process-level helpers around the dense kernels: split products, BLAS threads, heap reuse."""

from __future__ import annotations

import numpy as np
import pytest

from lipsdp import runtime
from lipsdp.runtime import blas_threads, heap_reuse, matmul, split_products, worth_a_second_thread


@pytest.mark.parametrize("shape", [(300, 200, 250), (301, 64, 257), (40, 500, 500)])
def test_split_products_equal_plain_products(shape):
    """Two row halves on two threads give the plain product (into ``out`` too), for views as well."""
    m, k, n = shape
    rng = np.random.default_rng(m + k + n)
    a, b = rng.normal(size=(m, k)), rng.normal(size=(k, n))
    ref = a @ b
    with blas_threads(1), split_products(True):
        got = matmul(a, b)
        out = np.full((m + 3, n), np.nan)
        into = matmul(a, b, out=out[2:m + 2])
        transposed = matmul(np.ascontiguousarray(a.T).T, b)  # F-ordered left factor
    assert np.allclose(got, ref, rtol=1e-12, atol=1e-12)
    assert into.base is out and np.allclose(out[2:m + 2], ref, rtol=1e-12, atol=1e-12)
    assert np.isnan(out[:2]).all() and np.isnan(out[m + 2:]).all()
    assert np.allclose(transposed, ref, rtol=1e-12, atol=1e-12)


def test_split_products_context_nests_and_restores():
    """Products split only inside the (nestable) context; the depth returns to where it was."""
    depth = runtime._split_depth
    with split_products(True) as outer:
        with split_products(True):
            inner_depth = runtime._split_depth
        assert runtime._split_depth == depth + (1 if outer.active else 0)
    assert runtime._split_depth == depth
    if runtime.available_cores() >= 2:
        assert inner_depth == depth + 2
    with split_products(False):
        assert runtime._split_depth == depth


def test_split_products_propagate_errors():
    """A shape mismatch raises the product's own error, inside the context as outside."""
    a, b = np.ones((400, 300)), np.ones((200, 100))
    with split_products(True), pytest.raises(ValueError):
        matmul(a, b)
    with pytest.raises(ValueError):
        matmul(a, b)


def test_heap_reuse_nests():
    """Nested heap_reuse contexts leave the settings to the outermost one and compute normally."""
    with heap_reuse():
        with heap_reuse():
            x = np.ones((600, 600)) @ np.ones((600, 10))
        assert runtime._heap_depth >= 1
    assert runtime._heap_depth == 0
    assert np.all(x == 600.0)


def _split_product_in_child(conn):
    with blas_threads(1), split_products(True):
        conn.send(float(matmul(np.ones((300, 300)), np.ones((300, 300)))[0, 0]))


@pytest.mark.skipif(runtime.available_cores() < 2, reason="split products need two cores")
def test_split_products_work_in_a_forked_child():
    """A child forked after the parent started its worker thread starts its own (no deadlock)."""
    import multiprocessing as mp

    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork on this platform")
    with split_products(True):
        matmul(np.ones((300, 300)), np.ones((300, 300)))  # the parent's worker now exists
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_split_product_in_child, args=(child,))
    proc.start()
    try:
        assert parent.poll(60), "the forked child hung on a split product"
        assert parent.recv() == 300.0
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()


@pytest.mark.parametrize("shape", [(5, 7), (300, 257), (513, 1000)])
def test_transpose_copy_is_the_transpose(shape):
    """Tile by tile, ragged edges included, into a C-contiguous array."""
    from lipsdp.runtime import transpose_copy

    a = np.random.default_rng(0).normal(size=shape)
    t = transpose_copy(a, tile=128)
    assert t.flags.c_contiguous and np.array_equal(t, a.T)
    assert np.array_equal(transpose_copy(a[:, ::2]), a[:, ::2].T)  # a strided view too


def test_transpose_copy_writes_into_the_given_array():
    from lipsdp.runtime import transpose_copy

    a = np.random.default_rng(1).normal(size=(300, 257))
    out = np.empty((257, 300))
    assert transpose_copy(a, tile=128, out=out) is out and np.array_equal(out, a.T)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("index", [np.int32, np.int64])
def test_sparse_times_dense_writes_the_product_into_out(dtype, index):
    """The product lands in the caller's array, overwriting what was there (the kernel adds, so it is
    cleared first), for both precisions and index types."""
    import scipy.sparse as sp

    from lipsdp.runtime import sparse_times_dense

    rng = np.random.default_rng(2)
    w = sp.random(60, 45, density=0.05, format="csr", random_state=3, dtype=dtype)
    w.indptr, w.indices = w.indptr.astype(index), w.indices.astype(index)
    x = rng.normal(size=(45, 33)).astype(dtype)
    out = np.full((60, 33), 7.0, dtype=dtype)
    for _ in range(2):  # twice into the same memory
        assert sparse_times_dense(w, x, out) is out
        np.testing.assert_allclose(out, w.toarray() @ x, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)


def test_sparse_times_dense_falls_back_on_mixed_types():
    """A float32 matrix times a float64 block, or a strided block, goes through scipy's operator."""
    import scipy.sparse as sp

    from lipsdp.runtime import sparse_times_dense

    w = sp.random(20, 30, density=0.2, format="csr", random_state=4, dtype=np.float32)
    x = np.random.default_rng(5).normal(size=(30, 24))
    out = np.ones((20, 24))
    np.testing.assert_allclose(sparse_times_dense(w, x, out), w.toarray() @ x, rtol=1e-6)
    out2 = np.ones((20, 12))
    np.testing.assert_allclose(sparse_times_dense(w, x[:, ::2], out2), w.toarray() @ x[:, ::2], rtol=1e-6)


def test_in_parallel_runs_the_first_side_on_the_worker():
    """Both results come back in order; inside split_products the first side runs on another thread."""
    import threading

    from lipsdp.runtime import in_parallel

    ident = []
    first = lambda: (ident.append(threading.get_ident()), np.ones((200, 200)) @ np.ones((200, 3)))[1]  # noqa: E731
    second = lambda: np.arange(4)  # noqa: E731
    a, b = in_parallel(first, second)
    assert np.all(a == 200.0) and np.array_equal(b, np.arange(4)) and ident == [threading.get_ident()]
    with blas_threads(1), split_products(True) as ctx:
        a, b = in_parallel(first, second)
    assert np.all(a == 200.0) and np.array_equal(b, np.arange(4))
    assert (ident[-1] != threading.get_ident()) == ctx.active
    assert not runtime._pair_active


@pytest.mark.skipif(runtime.available_cores() < 2, reason="in_parallel needs two cores")
def test_in_parallel_sides_never_hand_work_to_a_busy_worker():
    """Large products and nested pairs inside either side run on their own thread (no deadlock)."""
    import threading

    from lipsdp.runtime import in_parallel

    big = np.ones((400, 400))
    result = {}

    def run():
        with blas_threads(1), split_products(True):
            result["pair"] = in_parallel(lambda: in_parallel(lambda: matmul(big, big)[0, 0], lambda: 1.0),
                                         lambda: matmul(big, big)[0, 0])

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "in_parallel deadlocked"
    assert result["pair"] == ((400.0, 1.0), 400.0)


def test_in_parallel_raises_after_both_sides_finished():
    """An error of either side is raised once the other side is done; the pair flag is cleared."""
    from lipsdp.runtime import in_parallel

    finished = []

    def slow():
        finished.append(float((np.ones((300, 300)) @ np.ones((300, 300)))[0, 0]))
        return 1

    def fail():
        raise ValueError("side failed")

    with blas_threads(1), split_products(True):
        with pytest.raises(ValueError, match="side failed"):
            in_parallel(slow, fail)
        assert finished == [300.0]
        with pytest.raises(ValueError, match="side failed"):
            in_parallel(fail, slow)
        assert finished == [300.0, 300.0]
    assert not runtime._pair_active


def test_blas_threads_limit_and_restore():
    """The cached controller limits numpy's and scipy's BLAS inside the context and restores them."""
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def counts():
        return [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]

    before = counts()
    with blas_threads(1):
        assert all(n == 1 for n in counts())
        with blas_threads(1):
            pass
        assert all(n == 1 for n in counts())
    assert counts() == before


def test_second_thread_only_for_enough_dense_work():
    """One block of 110 or 240 rows: no; one of 270 rows, or many blocks of 128 (a split MaxMin chain): yes."""
    assert not worth_a_second_thread([110])
    assert not worth_a_second_thread([240])
    assert not worth_a_second_thread([10, 16, 16, 16])
    assert worth_a_second_thread([270])
    assert worth_a_second_thread([128] * 36)
