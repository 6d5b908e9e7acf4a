"""Waiting on a condition with a deadline, instead of sleeping.

``await eventually(predicate, timeout)`` polls ``predicate`` (a plain or async function) until it
returns something truthy and returns that value; at the deadline it fails the test with the last
value or exception seen, so the failure says what was wrong, not only that it took too long. An
exception from the predicate (an API call answering 404, say) counts as "not yet".

``await timed(predicate, timeout)`` does the same and returns how long it took, polling every 2 ms,
for latency measurements.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")

# ``timeout`` is a polling deadline, not an I/O timeout that asyncio.timeout could replace.
# ruff: noqa: ASYNC109


@overload
async def eventually(  # an async predicate is awaited, so its T is returned
    predicate: Callable[[], Awaitable[T]], timeout: float = 5.0, *, interval: float = 0.01, what: str = ""
) -> T: ...


@overload
async def eventually(
    predicate: Callable[[], T], timeout: float = 5.0, *, interval: float = 0.01, what: str = ""
) -> T: ...


async def eventually(
    predicate: Callable[[], Any], timeout: float = 5.0, *, interval: float = 0.01, what: str = ""
) -> Any:
    """The first truthy value of ``predicate()`` within ``timeout`` seconds, or AssertionError."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            last = value
        except Exception as e:  # AssertionError included: "not yet" until the deadline
            last = e
        if time.monotonic() >= deadline:
            label = f" ({what})" if what else ""
            raise AssertionError(f"condition not met within {timeout}s{label}; last: {last!r}")
        await asyncio.sleep(interval)


async def timed(
    predicate: Callable[[], Any], timeout: float = 5.0, *, interval: float = 0.002, what: str = ""
) -> float:
    """Seconds until ``predicate`` held; fails like ``eventually``."""
    start = time.monotonic()
    await eventually(predicate, timeout, interval=interval, what=what)
    return time.monotonic() - start
