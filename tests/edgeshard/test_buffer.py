"""BoundedBuffer: bounded in items and bytes, put never waits, take all or a selection."""

from __future__ import annotations

import threading
import time

from edgeshard.buffer import BoundedBuffer


def sized(entry: tuple[str, int, int]) -> tuple[int, int]:
    return entry[1], entry[2]


def test_put_refuses_what_does_not_fit_in_items_or_bytes_and_after_close():
    buf = BoundedBuffer(max_items=5, max_bytes=100, size=sized)
    assert buf.put(("a", 3, 10))
    assert not buf.put(("b", 3, 10))  # 6 items
    assert not buf.put(("c", 1, 95))  # 105 bytes
    assert buf.put(("d", 2, 90))
    assert buf.items == 5
    assert [e[0] for e in buf.take()] == ["a", "d"]
    assert buf.items == 0 and buf.put(("e", 5, 100))  # room again
    buf.close()
    assert not buf.put(("f", 1, 1))
    assert [e[0] for e in buf.take()] == ["e"]  # what was in it can still be taken


def test_take_a_selection_keeps_the_rest_in_order():
    buf = BoundedBuffer(max_items=10, max_bytes=10**6, size=sized)
    for name in "abcde":
        buf.put((name, 1, 1))
    taken = buf.take(lambda entries: [e for e in entries if e[0] in "bd"])
    assert [e[0] for e in taken] == ["b", "d"]
    assert buf.items == 3
    assert [e[0] for e in buf.take()] == ["a", "c", "e"]


def test_wait_returns_on_an_entry_or_on_close():
    buf = BoundedBuffer(max_items=10, max_bytes=10, size=sized)
    woke = threading.Event()

    def waiter():
        buf.wait()
        woke.set()

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.05)
    assert not woke.is_set()
    buf.put(("a", 1, 1))
    assert woke.wait(5)
    t.join(5)
    buf.take()
    woke.clear()
    t = threading.Thread(target=waiter)
    t.start()
    buf.close()
    assert woke.wait(5)
    t.join(5)
