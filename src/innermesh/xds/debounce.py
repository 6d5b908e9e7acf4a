"""Debouncing configuration changes: one push per burst, and a bound on how long a burst can delay it.

Changes arrive in bursts (an ``innermesh apply`` of ten objects, a Service with its EndpointSlices,
a controller catching up after a restart). Regenerating after each would cost one translation per
proxy per change; waiting for quiet makes one translation per burst. A burst that never goes quiet
(a flapping endpoint) must not hold configuration back forever, hence the cap after its first change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


def fire_at(first: float, last: float, quiet: float, max_delay: float) -> float:
    """When a burst whose first change came at ``first`` and latest at ``last`` is pushed."""
    return min(last + quiet, first + max_delay)


class Debouncer:
    """Calls ``fire`` ``quiet`` seconds after the last ``poke``, and at most ``max_delay`` seconds after
    the first poke of a burst. ``poke`` runs on an event loop (the timer lives there); the delays are
    checked at construction, so a wrong setting fails where it is made, not at the first change."""

    def __init__(self, fire: Callable[[], None], *, quiet: float, max_delay: float) -> None:
        if quiet < 0 or max_delay < quiet:
            raise ValueError(f"debounce: need 0 <= quiet ({quiet}) <= max_delay ({max_delay})")
        self._fire = fire
        self._quiet = quiet
        self._max_delay = max_delay
        self._first: float | None = None
        self._handle: asyncio.TimerHandle | None = None

    def poke(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._first is None:
            self._first = now
        if self._handle is not None:
            self._handle.cancel()
        self._handle = loop.call_at(fire_at(self._first, now, self._quiet, self._max_delay), self._on_timer)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None
        self._first = None

    def _on_timer(self) -> None:
        self._handle = None
        self._first = None
        self._fire()
