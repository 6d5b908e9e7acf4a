"""Level-based controllers: informers feed keys into a work queue; workers reconcile one key at a time.

A reconciler is ``async (key) -> Result | None`` and reads the current state (the informers' caches, or
the API), never the event that woke it: the same key may be reconciled any number of times, and every
run must bring the world closer to the desired state. The contract, controller-runtime's:

- return ``DONE`` (or None): success; the key's backoff is reset.
- return ``Result(requeue_after=s)``: success, and look again in ``s`` seconds (polling something no
  event reports, a grace period running out).
- return ``Result(requeue=True)``: not done yet, nothing wrong: look again after the key's backoff.
- raise any exception: failure; the key is retried after a per-key exponential backoff.
- raise ``TerminalError``: failure that retrying cannot fix; logged, not retried (a later change to the
  objects enqueues the key again).

Event handlers map an object to the keys that depend on it (``watch``): a Workload change enqueues the
Services that select it, before and after the change, so a relabel reaches both the old and the new.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from innermesh.api import status as errors
from innermesh.api.meta import Resource
from innermesh.client.informer import Informer
from innermesh.controllers.clock import Clock, LoopClock
from innermesh.controllers.workqueue import RateLimiter, ShutDown, WorkQueue, default_rate_limiter

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
R = TypeVar("R", bound=Resource)


@dataclass(frozen=True, slots=True)
class Result:
    """What a reconcile asks for beyond success: to be looked at again after ``requeue_after`` s, or
    (``requeue``) again after the key's backoff, which then keeps growing (waiting on something that
    is not there yet, like objects held by finalizers)."""

    requeue_after: float | None = None
    requeue: bool = False


DONE = Result()


class TerminalError(Exception):
    """A reconcile failure that retrying cannot fix; logged and not retried."""


Reconciler = Callable[[K], Awaitable[Result | None]]


class Controller(Generic[K]):
    """One reconciler, its queue and its workers. ``run`` until cancelled; ``enqueue`` is a no-op
    while it is not running (``resync`` lists every key when it starts, so nothing is lost)."""

    def __init__(
        self,
        name: str,
        reconcile: Reconciler[K],
        *,
        workers: int = 1,
        clock: Clock | None = None,
        rate_limiter: Callable[[Clock], RateLimiter[K]] | None = None,
        resync: Callable[[], Iterable[K]] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("a controller needs at least one worker")
        self.name = name
        self._reconcile = reconcile
        self.workers = workers
        self._clock: Clock = clock or LoopClock()
        self._rate_limiter = rate_limiter or default_rate_limiter
        self._resync = resync
        self._queue: WorkQueue[K] | None = None
        # Counters, for tests and for the status pages.
        self.reconciles = 0
        self.failures = 0

    # -- feeding ---------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._queue is not None

    @property
    def queue(self) -> WorkQueue[K] | None:
        return self._queue

    def enqueue(self, key: K) -> None:
        if self._queue is not None:
            self._queue.add(key)

    def watch(self, informer: Informer[R], to_keys: Callable[[R], Iterable[K]]) -> None:
        """Enqueue ``to_keys(obj)`` for the old and the new state of every change ``informer`` sees."""

        def handler(old: R | None, new: R | None) -> None:
            if self._queue is None:
                return
            keys: set[K] = set()
            if old is not None:
                keys.update(to_keys(old))
            if new is not None:
                keys.update(to_keys(new))
            for key in keys:
                self._queue.add(key)

        informer.add_handler(handler)

    # -- running ---------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Reconcile until cancelled. Each run starts with a fresh queue holding every ``resync`` key."""
        queue: WorkQueue[K] = WorkQueue(
            clock=self._clock, rate_limiter=self._rate_limiter(self._clock), name=self.name
        )
        self._queue = queue
        try:
            if self._resync is not None:
                for key in self._resync():
                    queue.add(key)
            async with asyncio.TaskGroup() as tg:
                for i in range(self.workers):
                    tg.create_task(self._worker(queue), name=f"controller-{self.name}-{i}")
        finally:
            queue.shutdown()
            if self._queue is queue:
                self._queue = None

    async def _worker(self, queue: WorkQueue[K]) -> None:
        while True:
            try:
                key = await queue.get()
            except ShutDown:
                return
            try:
                await self._process(queue, key)
            finally:
                queue.done(key)

    async def _process(self, queue: WorkQueue[K], key: K) -> None:
        self.reconciles += 1
        try:
            result = await self._reconcile(key)
        except asyncio.CancelledError:
            raise
        except TerminalError as e:
            self.failures += 1
            queue.forget(key)
            log.error("controller %s: %s failed and will not be retried: %s", self.name, key, e)
            return
        except errors.ApiError as e:
            self.failures += 1
            # Conflicts are the normal price of optimistic concurrency: retry quietly.
            level = logging.DEBUG if e.code == 409 else logging.WARNING
            log.log(level, "controller %s: %s failed (will retry): %s", self.name, key, e.message)
            queue.add_rate_limited(key)
            return
        except Exception:
            self.failures += 1
            log.exception("controller %s: %s failed (will retry)", self.name, key)
            queue.add_rate_limited(key)
            return
        if result is not None and result.requeue:
            queue.add_rate_limited(key)
            return
        queue.forget(key)
        if result is not None and result.requeue_after is not None:
            queue.add_after(key, result.requeue_after)
