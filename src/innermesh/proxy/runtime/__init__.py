"""The sidecar's data plane: sockets, protocols, upstream pools, and forwarding by the plan.

The asyncio edge of the proxy (the plan, matching and balancing are pure and live one level up).
Built for the measured costs in ../shared/PERF-NOTES.md: ``asyncio.Protocol`` callbacks rather than
streams, httptools for HTTP/1.1, header bytes forwarded as received unless something rewrites them,
one coalesced write per direction per read, no syscall that a request does not need.

Modules, from the socket inwards:

- ``listeners.py``: ``ProxyRuntime``, the listeners bound from a plan; plan swaps and draining.
- ``detect.py``: first-bytes protocol detection for listeners of unknown protocol.
- ``http1.py``: the downstream HTTP/1.1 server protocol (requests in, responses out).
- ``forward.py``: one request's exchange: routing, faults, retries, timeouts, mirrors.
- ``upstream.py``: the upstream HTTP/1.1 client protocol and connection pools.
- ``tcp.py``: byte tunnels (TCP listeners, CONNECT, upgraded connections).
- ``messages.py``: the request/response vocabulary and the seams between the layers.
- ``wire.py``, ``errors.py``, ``limits.py``: HTTP/1.1 bytes, the proxy's own answers, fixed bounds.
- ``context.py``: what the connections of one process share.

Not yet here: HTTP/2 and gRPC (a protocol implementing ``messages.Downstream`` for streams, and an
HTTP/2 upstream pool for clusters whose protocol is ``http2``), TLS. Not forwarded: HTTP/1.1
request and response trailers (chunked bodies are re-chunked without them).
"""
