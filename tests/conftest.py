"""Suite-wide pytest hooks.

The sidecar's runtime runs on uvloop in production and on asyncio's own loop nowhere else, but the
two differ where it matters to a proxy (uvloop's transports are not ``asyncio.Transport`` subclasses;
callbacks arrive in a different order). So the runtime's tests run on both loops; the rest of the
suite runs on asyncio's default loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop

_BOTH_LOOPS = ("test_proxy_runtime", "test_proxy_h2", "test_proxy_grpc")


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    if item.path.name.startswith(_BOTH_LOOPS) and item.path.parent.name == "component":
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}  # one factory: pytest hides it from test ids
