"""innermesh: a service mesh with Kubernetes' resource model and an xDS control plane.

The packages, in the direction of their dependencies (a package imports only those above it):

- ``api``: resource kinds, schemas, validation, defaulting, selectors, patches (pure).
- ``store``: the Store over two backends, SQLite (embedded) and etcd, with revisions and watch.
- ``apiserver``: Kubernetes-style REST and watch over the store.
- ``client``: one Client interface, in-process and over HTTP, and informers.
- ``controllers``: the controller runtime and the reconcilers.
- ``cli``: the ``innermesh`` command.
"""

__version__ = "0.1.0"
