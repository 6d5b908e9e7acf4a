"""Controllers: level-based reconcilers over informers, run by the leader among the servers.

The runtime (controller-runtime's design):

- ``clock``: time as an input (``LoopClock``; ``FakeClock`` for tests that step time).
- ``workqueue``: the de-duplicating, delaying, rate-limited queue of keys.
- ``runtime``: ``Controller`` (a reconcile function, its queue and workers), ``Result``,
  ``TerminalError``.
- ``leader``: leader election on a coordination.k8s.io/v1 Lease.
- ``manager``: ``ControllerManager``, which starts the shared informers and runs every controller
  while it holds the lease.

The reconcilers, one module each:

- ``clusterip``: repairs the ClusterIP allocator's IPAddress objects.
- ``endpointslice``: EndpointSlices for Services with selectors, from Workloads.
- ``routestatus``: HTTPRoute / GRPCRoute parent status, and GatewayClass acceptance.
- ``namespace``: finishing Namespace deletion; the ``default`` ServiceAccount.
"""
