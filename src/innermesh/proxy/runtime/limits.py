"""The runtime's fixed bounds, each with the precedent it follows.

Configuration (the plan's ``ConnectionLimits``) bounds pools per cluster; these bound what one
connection or one request may hold in memory, so that no client can make the proxy buffer without
limit.
"""

from __future__ import annotations

# Request heads: Envoy's max_request_headers_kb defaults to 60 KiB and max_headers_count to 100;
# nginx's large_client_header_buffers allow 4 x 8 KiB. Beyond either the answer is 431.
MAX_HEAD_BYTES = 60 * 1024
MAX_HEADERS = 100

# Response heads from upstreams get the same bounds; a larger one is answered 502.
MAX_RESPONSE_HEAD_BYTES = 60 * 1024

# A request body up to this size is kept while it is sent, so that a retry or a mirror can replay it
# (Envoy's per_request_buffer_limit_bytes defaults to 1 MiB; a sidecar sees many concurrent requests,
# so we keep less). A larger body streams through once and is never retried or mirrored.
REPLAY_LIMIT = 64 * 1024

# Write-buffer high-water mark per transport: above it the other side stops reading until the buffer
# drains to the low mark. 64 KiB is asyncio's default high mark and Envoy's default per-connection
# buffer limit is 1 MiB; a smaller mark keeps a sidecar's memory flat under many slow readers.
HIGH_WATER = 64 * 1024
LOW_WATER = 16 * 1024

# How long a request whose route has no timeout may wait for a mirror (shadow) response before the
# shadow connection is dropped: shadows must never accumulate.
SHADOW_TIMEOUT = 15.0

# How often idle upstream connections are checked against their pool's idle timeout.
IDLE_SWEEP_INTERVAL = 1.0
