"""The sidecar proxy (``innermesh proxy``).

Pure parts, no I/O: ``plan`` (the compiled, immutable configuration the hot path reads),
``compile`` (Envoy v3 resources -> plan; what it refuses makes the xDS client NACK), ``matching``
(route matching and the RE2 subset it runs), ``balance`` (clusters, load balancers, request
hashes). I/O at the edges: ``xdsclient`` (the ADS stream), ``runtime/`` (listeners, HTTP/1.1 and
TCP forwarding by the plan), ``admin`` and ``sidecar`` (the process).
"""
