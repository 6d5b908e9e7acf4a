"""A raw watch stream: one decoded watch event per line the server sends, in the format asked for.

``HttpClient.watch`` yields objects; ``get -w`` wants the server's Table rows (``Accept: ...as=Table``),
so it reads the stream itself here. The stream ends normally when the server ends the watch
(``timeoutSeconds``); the caller then watches again from the last resourceVersion it saw.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from innermesh.api import status as errors

# Watch lines hold whole objects, up to the server's 1.5 MiB limit (as in client.http).
_READ_BUFSIZE = 4 * 1024 * 1024
CONNECT_TIMEOUT = 10.0


async def watch_events(
    server: str, token: str | None, path: str, params: dict[str, str], accept: str = "application/json"
) -> AsyncIterator[dict[str, Any]]:
    """Events (``{"type": ..., "object": ...}``) as they arrive. Raises ApiError for an error answer
    or an ERROR event, and a 503 ApiError (``watch connection to ...``) when the connection fails."""
    headers = {"Accept": accept}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT)
    try:
        async with (
            aiohttp.ClientSession(headers=headers, read_bufsize=_READ_BUFSIZE) as session,
            session.get(server + path, params=params, timeout=timeout) as resp,
        ):
            if resp.status != 200:
                raise _error(resp.status, await resp.read())
            async for line in resp.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    obj = event.get("object") or {}
                    raise errors.ApiError.from_status(obj, int(obj.get("code") or 500))
                yield event
    except aiohttp.ClientConnectionError as e:
        raise errors.unavailable(f"watch connection to {server} lost: {e}") from None
    except aiohttp.ClientPayloadError as e:
        raise errors.unavailable(f"watch stream from {server} broke: {e}") from None


def _error(status: int, raw: bytes) -> errors.ApiError:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict) and body.get("kind") == "Status":
        return errors.ApiError.from_status(body, status)
    return errors.ApiError(
        status, "Unknown", f"the server answered {status}: {raw[:200].decode(errors='replace')}"
    )
