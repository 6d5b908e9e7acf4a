"""Namespaces: finishing their deletion, and the ``default`` ServiceAccount in each.

Deletion (Kubernetes' namespace controller): deleting a Namespace only marks it (deletionTimestamp,
phase Terminating) while ``spec.finalizers`` holds ``kubernetes``, and the API refuses new objects in
it. This controller then deletes every namespaced object of every kind in it, waits until they are
gone (objects with finalizers linger until their owners remove them: it keeps retrying, with
backoff), and finally removes ``kubernetes`` from ``spec.finalizers``, at which point the API server
completes the deletion.

Default ServiceAccount: every Active namespace has a ServiceAccount named ``default`` (workloads run
as it unless they name another); it is created when missing and recreated when deleted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from innermesh.api import status as errors
from innermesh.api.core import Namespace, ServiceAccount
from innermesh.api.registry import Kind
from innermesh.apiserver.admission import NAMESPACE_FINALIZER
from innermesh.client.base import Client
from innermesh.client.informer import Informer
from innermesh.controllers.runtime import DONE, Controller, Result
from innermesh.controllers.workqueue import default_rate_limiter

log = logging.getLogger(__name__)

DEFAULT_SERVICE_ACCOUNT = "default"


def namespaced_kinds(kinds: Iterable[Kind]) -> list[Kind]:
    """One Kind per stored resource (a resource served at two versions is stored once)."""
    seen: set[str] = set()
    out: list[Kind] = []
    for k in kinds:
        if not k.namespaced:
            continue
        prefix = k.key_prefix()
        if prefix in seen:
            continue
        seen.add(prefix)
        out.append(k)
    return out


def is_terminating(ns: Namespace) -> bool:
    return ns.metadata.deletion_timestamp is not None


class NamespaceController:
    def __init__(
        self,
        client: Client,
        namespace_kind: Kind,
        service_account_kind: Kind,
        kinds: Iterable[Kind],
        namespaces: Informer[Namespace],
        service_accounts: Informer[ServiceAccount],
    ) -> None:
        self.client = client
        self.ns_kind = namespace_kind
        self.sa_kind = service_account_kind
        self.kinds = namespaced_kinds(kinds)
        self.namespaces = namespaces
        self.service_accounts = service_accounts
        self.deleter: Controller[str] = Controller(
            "namespace",
            self.reconcile_deletion,
            workers=2,
            # Lingering objects are polled (no informer watches every kind): keep the backoff short.
            rate_limiter=lambda clock: default_rate_limiter(clock, base=0.05, cap=5.0),
            resync=lambda: [n.name for n in namespaces.list() if is_terminating(n)],
        )
        self.deleter.watch(namespaces, lambda n: [n.name] if is_terminating(n) else [])
        self.default_sa: Controller[str] = Controller(
            "serviceaccount",
            self.reconcile_default_sa,
            resync=lambda: [n.name for n in namespaces.list()],
        )
        self.default_sa.watch(namespaces, lambda n: [n.name])
        self.default_sa.watch(
            service_accounts, lambda sa: [sa.namespace] if sa.name == DEFAULT_SERVICE_ACCOUNT else []
        )

    @property
    def controllers(self) -> list[Controller[str]]:
        return [self.deleter, self.default_sa]

    # -- deletion ---------------------------------------------------------------------------------------

    async def reconcile_deletion(self, name: str) -> Result:
        ns = self.namespaces.get(None, name)
        if ns is None or not is_terminating(ns):
            return DONE
        if NAMESPACE_FINALIZER not in (ns.spec.finalizers or []):
            return DONE  # our part is done; other finalizers hold it
        remaining = await self._delete_content(name)
        if remaining:
            log.info("namespace %s: waiting for %d object(s) to be finalized and deleted", name, remaining)
            return Result(requeue=True)
        await self._remove_finalizer(name)
        return DONE

    async def _delete_content(self, namespace: str) -> int:
        """Delete everything in ``namespace``; how many objects are still there afterwards."""
        remaining = 0
        for kind in self.kinds:
            items, _ = await self.client.list(kind, namespace)
            for obj in items:
                meta = obj.get("metadata") or {}
                if not meta.get("deletionTimestamp"):
                    try:
                        await self.client.delete(kind, namespace, str(meta.get("name")))
                    except errors.ApiError as e:
                        if e.code != 404:
                            raise
            if items:
                # Deletion without finalizers is immediate; look again for what lingers.
                left, _ = await self.client.list(kind, namespace)
                remaining += len(left)
        return remaining

    async def _remove_finalizer(self, name: str) -> None:
        try:
            obj = await self.client.get(self.ns_kind, None, name)
        except errors.ApiError as e:
            if e.code == 404:
                return  # gone already (our cache was behind)
            raise
        spec = dict(obj.get("spec") or {})
        fins = [f for f in spec.get("finalizers") or [] if f != NAMESPACE_FINALIZER]
        if fins:
            spec["finalizers"] = fins
        else:
            spec.pop("finalizers", None)
        try:
            # Through /finalize: a Namespace's finalizers change nowhere else.
            await self.client.update(self.ns_kind, None, name, {**obj, "spec": spec}, subresource="finalize")
        except errors.ApiError as e:
            if e.code != 404:
                raise
        log.info("namespace %s: content deleted, finalizer removed", name)

    # -- the default ServiceAccount ---------------------------------------------------------------------

    async def reconcile_default_sa(self, namespace: str) -> Result:
        ns = self.namespaces.get(None, namespace)
        if ns is None or is_terminating(ns):
            return DONE
        if self.service_accounts.get(namespace, DEFAULT_SERVICE_ACCOUNT) is not None:
            return DONE
        body = {"metadata": {"name": DEFAULT_SERVICE_ACCOUNT, "namespace": namespace}}
        try:
            await self.client.create(self.sa_kind, namespace, body)
        except errors.ApiError as e:
            # 409: it exists (our cache is behind); 403/404: the namespace is going or gone.
            if e.code not in (403, 404, 409):
                raise
        return DONE
