"""The bounded read-ahead queue of the GPU path (tasks.core.prefetch)."""

from __future__ import annotations

import threading

import pytest

from tasks.core.prefetch import prefetch


def test_depth_zero_is_the_iterable_itself():
    items = iter([1, 2, 3])
    assert prefetch(items, 0) is items
    with pytest.raises(ValueError, match="depth"):
        prefetch([1], -1)


def test_items_come_in_order_and_the_thread_ends():
    out = list(prefetch(range(100), 3))
    assert out == list(range(100))
    assert not any(t.name == "prefetch" for t in threading.enumerate())


def test_the_queue_is_bounded():
    produced = []
    release = threading.Event()

    def items():
        for i in range(50):
            produced.append(i)
            yield i

    it = iter(prefetch(items(), 2))
    assert next(it) == 0
    # the producer stops when the queue is full: the item taken, 2 queued, 1 waiting to be put
    for _ in range(50):
        release.wait(0.01)
    assert len(produced) <= 4
    assert list(it) == list(range(1, 50))


def test_a_producer_error_reaches_the_consumer_in_place():
    def items():
        yield 1
        yield 2
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for x in prefetch(items(), 2):
            got.append(x)
    assert got == [1, 2]
    assert not any(t.name == "prefetch" for t in threading.enumerate())


def test_a_consumer_that_stops_early_stops_the_producer():
    produced = []

    def items():
        for i in range(10_000):
            produced.append(i)
            yield i

    gen = prefetch(items(), 2)
    for x in gen:
        if x == 3:
            break
    gen.close()
    assert not any(t.name == "prefetch" for t in threading.enumerate())
    assert len(produced) < 10  # stopped, not drained
