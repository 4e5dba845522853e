"""JobSignals: followers on an event loop, changes from other threads."""

from __future__ import annotations

import asyncio
import threading

from coordinator.jobs.signals import JobSignals


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_a_change_while_not_waiting_is_remembered_once():
    signals = JobSignals()

    async def follow():
        with signals.subscribe("j") as sub:
            for _ in range(50):  # many commits while the follower reads or paces
                signals.notify("j")
            first = await sub.wait(5)
            second = await sub.wait(0.01)
            return first, second

    assert run(follow()) == (True, False)


def test_a_change_from_another_thread_wakes_a_waiting_follower():
    signals = JobSignals()

    async def follow():
        with signals.subscribe("j") as sub:
            loop = asyncio.get_running_loop()
            # notify from a thread once the follower is inside wait
            loop.call_later(0.05, lambda: threading.Thread(
                target=lambda: [signals.notify("j") for _ in range(20)]).start())
            return await sub.wait(30)

    # woken, not timed out: run() gives the whole test 10 s, the wait alone 30
    assert run(follow()) is True


def test_other_jobs_and_closed_subscriptions_are_not_woken():
    signals = JobSignals()

    async def follow():
        with signals.subscribe("a") as sub:
            signals.notify("b")
            woke = await sub.wait(0.01)
        signals.notify("a")  # after close: nobody to tell
        return woke, signals.followers()

    assert run(follow()) == (False, 0)
    assert signals.changed_at("b") == float("-inf")  # nobody followed b


def test_notify_all_wakes_every_follower():
    signals = JobSignals()

    async def follow():
        subs = [signals.subscribe(job) for job in ("a", "b", "c")]
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, signals.notify_all)
        woke = await asyncio.gather(*(s.wait(30) for s in subs))
        for s in subs:
            s.close()
        return woke

    assert run(follow()) == [True, True, True]
