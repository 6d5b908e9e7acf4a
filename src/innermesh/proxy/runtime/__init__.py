"""The sidecar's data plane: sockets, protocols, upstream pools, and forwarding by the plan.

The asyncio edge of the proxy (the plan, matching and balancing are pure and live one level up).
Built for the measured costs in ../shared/PERF-NOTES.md: ``asyncio.Protocol`` callbacks rather than
streams, httptools for HTTP/1.1, header bytes forwarded as received unless something rewrites them,
one coalesced write per direction per read, no syscall that a request does not need.

Modules, from the socket inwards:

- ``listeners.py``: ``ProxyRuntime``, the listeners bound from a plan; plan swaps and draining.
- ``detect.py``: first-bytes protocol detection: HTTP/1.x, the HTTP/2 preface (h2c with prior
  knowledge, on every HTTP listener), or opaque TCP (on listeners of unknown protocol).
- ``http1.py``: the downstream HTTP/1.1 server protocol (requests in, responses out).
- ``h2.py``: the downstream HTTP/2 server protocol over the ``h2`` library: each stream is its own
  exchange, flow-control windows given back only as the destination drains, GOAWAY on drain.
- ``h2upstream.py``: HTTP/2 to upstreams (clusters of protocol ``http2``, and ``downstream`` ones when
  the client spoke HTTP/2): one multiplexed connection per endpoint within its stream limit.
- ``grpc.py``: gRPC specifics: the proxy's own answers as trailers-only responses (Envoy's HTTP to
  gRPC status table, DEADLINE_EXCEEDED for timeouts), ``grpc-timeout`` as a cap on the route timeout.
- ``forward.py``: one request's exchange: routing, faults, retries, timeouts, mirrors.
- ``upstream.py``: the upstream HTTP/1.1 client protocol and connection pools.
- ``tcp.py``: byte tunnels (TCP listeners, CONNECT, upgraded connections).
- ``messages.py``: the request/response vocabulary and the seams between the layers.
- ``wire.py``, ``errors.py``, ``limits.py``: HTTP/1.1 bytes, the proxy's own answers, fixed bounds.
- ``context.py``: what the connections of one process share.

Not yet here: TLS and ALPN (with the mesh's mutual TLS; ``DetectProtocol._hand_over`` is where the
negotiated protocol will choose). Not forwarded: request trailers, and response trailers to HTTP/1.1
clients (chunked bodies are re-chunked without them); HTTP/2 clients get the upstream's trailers.
"""
