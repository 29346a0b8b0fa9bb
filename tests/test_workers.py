"""The runtime's spinning worker threads: parts come back in order, errors reach the caller, one caller at a time,
and workers that fell asleep wake up."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from svdcompress.runtime._workers import SPIN_S, SpinningWorkers
from svdcompress.runtime.kernels.sync import spin_until


def test_spin_until_sees_a_store_from_another_thread_and_times_out() -> None:
    flags = np.zeros(16, np.int64)
    assert not spin_until(flags, 3, 1, 1000)

    def later() -> None:
        time.sleep(0.02)
        flags[3] = 1

    t = threading.Thread(target=later)
    t.start()
    t0 = time.perf_counter()
    assert spin_until(flags, 3, 1, 10**10)  # returns when the flag changes, long before the spin budget
    assert time.perf_counter() - t0 < 5
    t.join()


def test_parts_in_order_and_after_the_workers_blocked() -> None:
    pool = SpinningWorkers(2)
    try:
        seen_threads: set[str] = set()

        def fn(x: int) -> int:
            seen_threads.add(threading.current_thread().name)
            return x * x

        assert pool.try_map(fn, 2, [3, 4]) == [4, 9, 16]
        time.sleep(5 * SPIN_S)  # the workers stop spinning and block on the condition
        assert pool.try_map(fn, 5, [6]) == [25, 36]  # fewer parts than workers
        assert pool.try_map(fn, 1, []) == [1]
        assert len(seen_threads) == 3  # the caller and both workers ran parts
        assert pool.try_map(fn, 1, [1, 2, 3]) is None  # more parts than workers: refused, nothing run
    finally:
        pool.close()


def test_errors_reach_the_caller_and_every_part_finishes_first() -> None:
    pool = SpinningWorkers(1)
    finished: list[int] = []
    try:

        def slow(x: int) -> int:
            time.sleep(0.05)
            finished.append(x)
            if x == 2:
                raise ValueError("part 2 failed")
            return x

        with pytest.raises(ValueError, match="part 2 failed"):
            pool.try_map(slow, 1, [2])
        assert sorted(finished) == [1, 2]

        def first_fails(x: int) -> int:
            if x == 1:
                raise KeyError("first")
            time.sleep(0.05)
            finished.append(x)
            return x

        finished.clear()
        with pytest.raises(KeyError):
            pool.try_map(first_fails, 1, [7])
        assert finished == [7]  # the worker's part was collected before the error was raised
        assert pool.try_map(lambda x: x + 1, 1, [2]) == [2, 3]  # and the pool still works
    finally:
        pool.close()


def test_one_caller_at_a_time_and_close() -> None:
    pool = SpinningWorkers(1)
    inside = threading.Event()
    release = threading.Event()

    def hold(x: int) -> int:
        inside.set()
        release.wait(10)
        return x

    t = threading.Thread(target=lambda: pool.try_map(hold, 1, [2]))
    t.start()
    assert inside.wait(10)
    assert pool.try_map(lambda x: x, 1, [2]) is None  # busy: the caller runs whole instead
    release.set()
    t.join(10)
    pool.close()
    assert all(not th.is_alive() for th in pool._threads)
    assert pool.try_map(lambda x: x, 1, [2]) is None  # stopped


def test_an_idle_worker_does_not_keep_the_model_alive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gc
    import weakref

    import torch
    from torch import nn

    from svdcompress import runtime
    from svdcompress.export import export_csr

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 10)).eval()
    export_csr(net, tmp_path / "m.csr", input_shape=(64,))
    monkeypatch.setattr(runtime, "PRANGE_MIN_MACS", 1 << 62)  # a chain model: split on the workers, not by numba
    m = runtime.load(tmp_path / "m.csr", threads=2)
    m(np.ones((512, 64), np.float32))  # 512 × 37 k MACs: split, so the worker has run a part
    pool = m._pool
    assert pool is not None
    ref = weakref.ref(m)
    del m
    gc.collect()
    assert ref() is None  # collected, and its __del__ told the workers to stop
    for t in pool._threads:
        t.join(timeout=5)
    assert not any(t.is_alive() for t in pool._threads)
