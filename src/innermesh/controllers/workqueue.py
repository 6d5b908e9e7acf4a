"""The work queue controllers pull keys from: de-duplicating, delaying and rate-limited, as client-go's.

Invariants (client-go's ``workqueue.Type``, which controller-runtime uses):

- **De-duplication.** A key added several times before a worker takes it is handed out once.
- **No concurrent processing of one key.** Between ``get`` and ``done`` a key is *processing*; adding
  it then only marks it *dirty*, and ``done`` puts it back in the queue, so the change that arrived
  during processing is seen by a later pass, never by two workers at once.
- **Delays.** ``add_after(key, delay)`` adds the key once the delay has passed; several pending delays
  for one key collapse to the earliest.
- **Rate limiting.** ``add_rate_limited(key)`` asks the rate limiter how long to wait: per key, an
  exponential backoff on consecutive failures (capped), reset by ``forget`` after a success; overall, a
  token bucket, so a storm of failures cannot spin the reconcilers.

The three states of a key::

    (absent) --add--> queued --get--> processing --done--> (absent)
                                         |  ^
                                    add  v  | done (re-queued)
                                    processing+dirty

Time comes from a ``Clock``; the queue sets one timer, for the earliest delayed key.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import Hashable
from typing import Generic, Protocol, TypeVar

from innermesh.controllers.clock import Clock, LoopClock, TimerHandle

K = TypeVar("K", bound=Hashable)
K_contra = TypeVar("K_contra", bound=Hashable, contravariant=True)


class ShutDown(Exception):
    """The queue was shut down: ``get`` has nothing more to give."""


# ---------------------------------------------------------------------------------------------------
# Rate limiters


class RateLimiter(Protocol[K_contra]):
    def when(self, key: K_contra) -> float:
        """How long to wait before processing ``key`` again (and count this as a failure)."""
        ...

    def forget(self, key: K_contra) -> None:
        """``key`` succeeded: start its backoff over."""
        ...

    def failures(self, key: K_contra) -> int: ...


class ExponentialBackoff(Generic[K]):
    """Per key: ``base * 2**failures``, at most ``cap`` (client-go's ItemExponentialFailureRateLimiter)."""

    def __init__(self, base: float = 0.005, cap: float = 30.0) -> None:
        if base <= 0 or cap < base:
            raise ValueError("ExponentialBackoff needs 0 < base <= cap")
        self.base = base
        self.cap = cap
        self._failures: dict[K, int] = {}

    def when(self, key: K) -> float:
        n = self._failures.get(key, 0)
        self._failures[key] = n + 1
        # 2**n overflows a float long after it passes any sane cap; stop doubling once capped.
        if n >= 64:
            return self.cap
        return min(self.base * float(1 << n), self.cap)

    def forget(self, key: K) -> None:
        self._failures.pop(key, None)

    def failures(self, key: K) -> int:
        return self._failures.get(key, 0)


class TokenBucket(Generic[K]):
    """Overall: ``qps`` tokens a second, ``burst`` at most saved up (client-go's BucketRateLimiter).
    ``when`` reserves the next token and says how long until it is there."""

    def __init__(self, qps: float, burst: int, clock: Clock) -> None:
        if qps <= 0 or burst < 1:
            raise ValueError("TokenBucket needs qps > 0 and burst >= 1")
        self.qps = qps
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last: float | None = None

    def when(self, key: K) -> float:
        now = self._clock.now()
        if self._last is not None:
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.qps)
        self._last = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.qps

    def forget(self, key: K) -> None:
        return None

    def failures(self, key: K) -> int:
        return 0


class MaxOf(Generic[K]):
    """The longest wait any of several limiters asks for."""

    def __init__(self, *limiters: RateLimiter[K]) -> None:
        self.limiters = limiters

    def when(self, key: K) -> float:
        return max(limiter.when(key) for limiter in self.limiters)

    def forget(self, key: K) -> None:
        for limiter in self.limiters:
            limiter.forget(key)

    def failures(self, key: K) -> int:
        return max(limiter.failures(key) for limiter in self.limiters)


def default_rate_limiter(clock: Clock, *, base: float = 0.005, cap: float = 30.0) -> RateLimiter[K]:
    """controller-runtime's default: per-key exponential backoff, and 10 retries a second overall with
    bursts of 100."""
    return MaxOf(ExponentialBackoff(base, cap), TokenBucket(10.0, 100, clock))


# ---------------------------------------------------------------------------------------------------
# The queue


class WorkQueue(Generic[K]):
    def __init__(
        self,
        *,
        clock: Clock | None = None,
        rate_limiter: RateLimiter[K] | None = None,
        name: str = "",
    ) -> None:
        self.name = name
        self._clock: Clock = clock or LoopClock()
        self._limiter: RateLimiter[K] = rate_limiter or default_rate_limiter(self._clock)
        self._queue: deque[K] = deque()
        self._dirty: set[K] = set()
        self._processing: set[K] = set()
        # Delayed keys: the earliest time each is due, and a heap of (due, seq, key) with stale entries
        # skipped lazily (an entry is live when waiting[key] equals its due time).
        self._waiting: dict[K, float] = {}
        self._heap: list[tuple[float, int, K]] = []
        self._seq = itertools.count()
        self._timer: TimerHandle | None = None
        self._timer_due: float | None = None
        self._getters: deque[asyncio.Future[None]] = deque()
        self._shutting_down = False

    # -- adding ---------------------------------------------------------------------------------------

    def add(self, key: K) -> None:
        if self._shutting_down or key in self._dirty:
            return
        self._dirty.add(key)
        if key in self._processing:
            return  # handed out again by done()
        self._queue.append(key)
        self._wake_one()

    def add_after(self, key: K, delay: float) -> None:
        if self._shutting_down:
            return
        if delay <= 0:
            self.add(key)
            return
        due = self._clock.now() + delay
        current = self._waiting.get(key)
        if current is not None and current <= due:
            return
        self._waiting[key] = due
        heapq.heappush(self._heap, (due, next(self._seq), key))
        self._arm_timer()

    def add_rate_limited(self, key: K) -> None:
        self.add_after(key, self._limiter.when(key))

    def forget(self, key: K) -> None:
        self._limiter.forget(key)

    def num_requeues(self, key: K) -> int:
        return self._limiter.failures(key)

    # -- taking ---------------------------------------------------------------------------------------

    async def get(self) -> K:
        """The next key to process; raises ShutDown once the queue is shut down."""
        while not self._queue:
            if self._shutting_down:
                raise ShutDown(self.name)
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._getters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut in self._getters:
                    self._getters.remove(fut)
                elif fut.done() and not fut.cancelled():
                    # We were woken for a key we will not take: pass the wake-up on.
                    self._wake_one()
                raise
        return self._take()

    def get_nowait(self) -> K | None:
        """The next key if one is ready (tests and tools), else None."""
        return self._take() if self._queue else None

    def _take(self) -> K:
        key = self._queue.popleft()
        self._processing.add(key)
        self._dirty.discard(key)
        return key

    def done(self, key: K) -> None:
        """Processing of ``key`` finished; if it was added meanwhile, queue it again."""
        self._processing.discard(key)
        if key in self._dirty:
            self._queue.append(key)
            self._wake_one()

    # -- lifecycle and introspection -------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop handing out keys; waiting ``get`` calls raise ShutDown."""
        self._shutting_down = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_due = None
        while self._getters:
            fut = self._getters.popleft()
            if not fut.done():
                fut.set_result(None)

    def __len__(self) -> int:
        """Keys ready to be handed out."""
        return len(self._queue)

    @property
    def processing(self) -> frozenset[K]:
        return frozenset(self._processing)

    @property
    def waiting(self) -> dict[K, float]:
        """Delayed keys and when they are due."""
        return dict(self._waiting)

    # -- internals ------------------------------------------------------------------------------------

    def _wake_one(self) -> None:
        while self._getters:
            fut = self._getters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def _arm_timer(self) -> None:
        while self._heap and self._waiting.get(self._heap[0][2]) != self._heap[0][0]:
            heapq.heappop(self._heap)  # stale entry
        if not self._heap:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._timer_due = None
            return
        due = self._heap[0][0]
        if self._timer is not None and self._timer_due == due:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_due = due
        self._timer = self._clock.call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_due = None
        if self._shutting_down:
            return
        now = self._clock.now()
        while self._heap and self._heap[0][0] <= now:
            due, _, key = heapq.heappop(self._heap)
            if self._waiting.get(key) == due:
                del self._waiting[key]
                self.add(key)
        self._arm_timer()
