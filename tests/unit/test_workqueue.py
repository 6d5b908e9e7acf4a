"""The work queue, its rate limiters and the controller loop, on virtual time (no sleeping)."""

from __future__ import annotations

import asyncio

import pytest

from innermesh.controllers.clock import FakeClock
from innermesh.controllers.runtime import DONE, Controller, Result, TerminalError
from innermesh.controllers.workqueue import (
    ExponentialBackoff,
    MaxOf,
    ShutDown,
    TokenBucket,
    WorkQueue,
)


def new_queue(clock: FakeClock, base: float = 1.0, cap: float = 8.0) -> WorkQueue[str]:
    return WorkQueue(clock=clock, rate_limiter=ExponentialBackoff(base, cap))


async def settle() -> None:
    """Let every ready task run until they all wait again."""
    for _ in range(10):
        await asyncio.sleep(0)


# ---------------------------------------------------------------------------------------------------
# The queue


def test_key_added_several_times_is_handed_out_once() -> None:
    """De-duplication: three adds of one key before a get give one key."""
    q = new_queue(FakeClock())
    for _ in range(3):
        q.add("a")
    q.add("b")
    assert len(q) == 2
    assert q.get_nowait() == "a"
    assert q.get_nowait() == "b"
    assert q.get_nowait() is None


def test_key_is_not_handed_out_while_it_is_processing() -> None:
    """A key being processed is not given to a second worker, even if added again."""
    q = new_queue(FakeClock())
    q.add("a")
    assert q.get_nowait() == "a"
    q.add("a")
    assert q.get_nowait() is None
    assert q.processing == frozenset({"a"})


def test_key_readded_while_processing_is_processed_again_afterwards() -> None:
    """done() re-queues a key that was added while it was processing, once."""
    q = new_queue(FakeClock())
    q.add("a")
    assert q.get_nowait() == "a"
    q.add("a")
    q.add("a")
    q.done("a")
    assert q.get_nowait() == "a"
    q.done("a")
    assert q.get_nowait() is None


def test_done_without_readd_leaves_nothing() -> None:
    """A processed key that was not added again is gone after done()."""
    q = new_queue(FakeClock())
    q.add("a")
    assert q.get_nowait() == "a"
    q.done("a")
    assert len(q) == 0
    assert q.processing == frozenset()


def test_add_after_waits_for_the_clock() -> None:
    """add_after makes the key ready only once the fake clock has passed the delay."""
    clock = FakeClock()
    q = new_queue(clock)
    q.add_after("a", 5.0)
    assert q.get_nowait() is None
    clock.advance(4.9)
    assert q.get_nowait() is None
    clock.advance(0.1)
    assert q.get_nowait() == "a"


def test_add_after_collapses_to_the_earliest_due_time() -> None:
    """Several delays for one key collapse to the earliest; the key is added once."""
    clock = FakeClock()
    q = new_queue(clock)
    q.add_after("a", 10.0)
    q.add_after("a", 3.0)
    q.add_after("a", 7.0)
    assert q.waiting == {"a": 3.0}
    clock.advance(3.0)
    assert q.get_nowait() == "a"
    q.done("a")
    clock.advance(10.0)
    assert q.get_nowait() is None


def test_delayed_keys_come_out_in_due_order() -> None:
    """Keys added with different delays become ready in the order they fall due."""
    clock = FakeClock()
    q = new_queue(clock)
    q.add_after("late", 2.0)
    q.add_after("early", 1.0)
    q.add_after("now", 0)
    assert q.get_nowait() == "now"
    clock.advance(5.0)
    assert [q.get_nowait(), q.get_nowait()] == ["early", "late"]


def test_rate_limited_backoff_doubles_per_failure_up_to_the_cap() -> None:
    """Consecutive failures of one key wait 1, 2, 4, 8, 8 s; another key starts at 1 s."""
    clock = FakeClock()
    q = new_queue(clock, base=1.0, cap=8.0)
    waits = []
    for _ in range(5):
        before = clock.now()
        q.add_rate_limited("a")
        waits.append(q.waiting["a"] - before)
        clock.advance(q.waiting["a"] - before)
        assert q.get_nowait() == "a"
        q.done("a")
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert q.num_requeues("a") == 5
    q.add_rate_limited("b")
    assert q.waiting["b"] == clock.now() + 1.0


def test_forget_resets_the_backoff() -> None:
    """After forget (a success), the next failure waits the base delay again."""
    clock = FakeClock()
    q = new_queue(clock, base=1.0, cap=8.0)
    for _ in range(3):
        q.add_rate_limited("a")
        clock.advance(10)
        q.get_nowait()
        q.done("a")
    q.forget("a")
    assert q.num_requeues("a") == 0
    q.add_rate_limited("a")
    assert q.waiting["a"] == clock.now() + 1.0


def test_token_bucket_spends_its_burst_then_paces() -> None:
    """The overall limiter lets a burst through at once, then one key per 1/qps seconds."""
    clock = FakeClock()
    bucket: TokenBucket[str] = TokenBucket(qps=2.0, burst=2, clock=clock)
    assert [bucket.when("x"), bucket.when("y")] == [0.0, 0.0]
    assert bucket.when("z") == pytest.approx(0.5)
    assert bucket.when("w") == pytest.approx(1.0)
    clock.advance(10.0)
    assert bucket.when("v") == 0.0


def test_max_of_takes_the_longest_wait() -> None:
    """Combined limiters answer the longest delay either asks for."""
    clock = FakeClock()
    limiter: MaxOf[str] = MaxOf(ExponentialBackoff(0.1, 10.0), TokenBucket(1.0, 1, clock))
    assert limiter.when("a") == pytest.approx(0.1)
    assert limiter.when("a") == pytest.approx(1.0)  # the bucket is empty now
    limiter.forget("a")
    assert limiter.failures("a") == 0


def test_backoff_rejects_nonsense() -> None:
    """A cap below the base is a configuration error."""
    with pytest.raises(ValueError):
        ExponentialBackoff(base=2.0, cap=1.0)


async def test_get_waits_until_a_key_is_added() -> None:
    """An awaiting get() returns as soon as a key is added."""
    q = new_queue(FakeClock())
    getter = asyncio.create_task(q.get())
    await settle()
    assert not getter.done()
    q.add("a")
    assert await asyncio.wait_for(getter, 1) == "a"


async def test_get_wakes_when_a_delay_falls_due() -> None:
    """An awaiting get() returns when the clock passes a delayed key's due time."""
    clock = FakeClock()
    q = new_queue(clock)
    q.add_after("a", 30.0)
    getter = asyncio.create_task(q.get())
    await settle()
    clock.advance(29.0)
    await settle()
    assert not getter.done()
    clock.advance(1.0)
    assert await asyncio.wait_for(getter, 1) == "a"


async def test_shutdown_wakes_waiting_getters() -> None:
    """shutdown() makes waiting and later get() calls raise ShutDown, and ignores new adds."""
    clock = FakeClock()
    q = new_queue(clock)
    q.add_after("a", 1.0)
    getter = asyncio.create_task(q.get())
    await settle()
    q.shutdown()
    with pytest.raises(ShutDown):
        await asyncio.wait_for(getter, 1)
    q.add("b")
    assert len(q) == 0
    assert clock.pending_timers == 0


async def test_cancelled_getter_passes_its_wakeup_on() -> None:
    """A getter cancelled after being woken does not swallow the key: another getter gets it."""
    q = new_queue(FakeClock())
    first = asyncio.create_task(q.get())
    second = asyncio.create_task(q.get())
    await settle()
    q.add("a")
    first.cancel()
    await settle()
    assert await asyncio.wait_for(second, 1) == "a"


# ---------------------------------------------------------------------------------------------------
# The controller loop


async def test_controller_reconciles_each_key_and_retries_failures_with_backoff() -> None:
    """A failing reconcile is retried after 1 s, then 2 s (virtual time); success stops the retries."""
    clock = FakeClock()
    calls: list[tuple[str, float]] = []
    outcomes = iter([RuntimeError("boom"), RuntimeError("boom"), None])

    async def reconcile(key: str) -> Result | None:
        calls.append((key, clock.now()))
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return DONE

    ctl: Controller[str] = Controller(
        "t", reconcile, clock=clock, rate_limiter=lambda c: ExponentialBackoff(1.0, 60.0)
    )
    task = asyncio.create_task(ctl.run())
    await settle()
    ctl.enqueue("k")
    await settle()
    clock.advance(1.0)
    await settle()
    clock.advance(2.0)
    await settle()
    clock.advance(100.0)
    await settle()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert calls == [("k", 0.0), ("k", 1.0), ("k", 3.0)]
    assert ctl.failures == 2
    assert not ctl.running


async def test_controller_does_not_retry_terminal_errors() -> None:
    """TerminalError is logged and not retried."""
    clock = FakeClock()
    calls: list[float] = []

    async def reconcile(key: str) -> Result | None:
        calls.append(clock.now())
        raise TerminalError("bad input")

    ctl: Controller[str] = Controller("t", reconcile, clock=clock)
    task = asyncio.create_task(ctl.run())
    await settle()
    ctl.enqueue("k")
    await settle()
    clock.advance(3600.0)
    await settle()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert calls == [0.0]


async def test_controller_requeues_after_the_asked_delay() -> None:
    """Result(requeue_after=s) looks at the key again after s seconds."""
    clock = FakeClock()
    calls: list[float] = []

    async def reconcile(key: str) -> Result | None:
        calls.append(clock.now())
        return Result(requeue_after=10.0) if len(calls) < 3 else DONE

    ctl: Controller[str] = Controller("t", reconcile, clock=clock, resync=lambda: ["k"])
    task = asyncio.create_task(ctl.run())
    for _ in range(5):
        await settle()
        clock.advance(10.0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert calls == [0.0, 10.0, 20.0]


async def test_controller_requeue_uses_the_growing_backoff() -> None:
    """Result(requeue=True) waits the key's backoff, which grows until a plain success."""
    clock = FakeClock()
    calls: list[float] = []

    async def reconcile(key: str) -> Result | None:
        calls.append(clock.now())
        return Result(requeue=True) if len(calls) < 4 else DONE

    ctl: Controller[str] = Controller(
        "t",
        reconcile,
        clock=clock,
        rate_limiter=lambda c: ExponentialBackoff(1.0, 60.0),
        resync=lambda: ["k"],
    )
    task = asyncio.create_task(ctl.run())
    for _ in range(20):
        await settle()
        clock.advance(1.0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert calls == [0.0, 1.0, 3.0, 7.0]


async def test_controller_never_runs_one_key_on_two_workers_at_once() -> None:
    """With several workers, a key added during its own reconcile runs again only after it."""
    active: set[str] = set()
    overlaps: list[str] = []
    runs: dict[str, int] = {}
    gate = asyncio.Event()

    async def reconcile(key: str) -> Result | None:
        if key in active:
            overlaps.append(key)
        active.add(key)
        runs[key] = runs.get(key, 0) + 1
        await gate.wait()
        active.discard(key)
        return DONE

    ctl: Controller[str] = Controller("t", reconcile, workers=4)
    task = asyncio.create_task(ctl.run())
    await settle()
    ctl.enqueue("a")
    ctl.enqueue("b")
    await settle()
    for _ in range(5):
        ctl.enqueue("a")  # while "a" is processing
    await settle()
    assert runs == {"a": 1, "b": 1}
    gate.set()
    await settle()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert overlaps == []
    assert runs == {"a": 2, "b": 1}


async def test_enqueue_is_ignored_while_the_controller_is_stopped() -> None:
    """Keys enqueued while stopped are dropped; the resync on start lists what matters."""
    seen: list[str] = []

    async def reconcile(key: str) -> Result | None:
        seen.append(key)
        return DONE

    ctl: Controller[str] = Controller("t", reconcile, resync=lambda: ["from-resync"])
    ctl.enqueue("dropped")
    task = asyncio.create_task(ctl.run())
    await settle()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert seen == ["from-resync"]
