"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's ``leaderelection`` does it.

Every replica of ``innermesh server`` runs the informers; only the holder of the Lease
``innermesh-system/innermesh-controllers`` runs the reconcilers, so two servers on one etcd never both
write. The rules:

- **Acquire and renew are compare-and-swap writes** (create-if-absent, or update at the
  resourceVersion just read). Of two replicas racing for a free lease, one write fails with 409.
- **Expiry is judged on the local monotonic clock**: a candidate notes *when it saw* the lease record
  last change (client-go's ``observedTime``) and takes the lease over only ``leaseDurationSeconds``
  after that, without comparing another machine's wall clock with its own. ``renewTime`` is written
  for people and tools to read.
- **The leader steps down before anyone else may step up**: it renews every ``renew_interval``; when
  no renew has succeeded for ``renew_deadline`` (< the lease duration) it stops its controllers at
  once, so they are stopped before any candidate, counting the full duration from its own last sight
  of a renew, can consider the lease expired. It also steps down at once when it sees another holder.
- **A leader that stops cleanly releases the lease** (holder cleared, duration 1 s), so a peer takes
  over at its next try rather than after the full duration.

``plan_lease`` and ``LeaseObserver`` are the pure decisions; ``LeaderElector`` does the I/O.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import logging
import math
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from innermesh.api import status as errors
from innermesh.api.coordination import Lease, LeaseSpec, format_micro_time
from innermesh.api.registry import Kind
from innermesh.client.base import Client
from innermesh.controllers.clock import Clock, LoopClock

log = logging.getLogger(__name__)

LEASE_NAME = "innermesh-controllers"
LEASE_NAMESPACE = "innermesh-system"


@dataclass(frozen=True, slots=True)
class LeaderElectionConfig:
    """Timings, in seconds. Kubernetes' defaults are 15 / 10 / 2; innermesh renews every 5 s."""

    lease_duration: float = 15.0
    renew_interval: float = 5.0
    renew_deadline: float = 10.0
    retry_interval: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.renew_interval < self.renew_deadline < self.lease_duration:
            raise ValueError("leader election needs 0 < renew_interval < renew_deadline < lease_duration")
        if not 0 < self.retry_interval < self.renew_deadline:
            raise ValueError("leader election needs 0 < retry_interval < renew_deadline")

    @property
    def lease_duration_seconds(self) -> int:
        """What the Lease records (whole seconds, at least 1)."""
        return max(1, math.ceil(self.lease_duration))


# ---------------------------------------------------------------------------------------------------
# Pure decisions


def plan_lease(
    current: LeaseSpec | None, identity: str, now: dt.datetime, duration_seconds: int, *, expired: bool
) -> LeaseSpec | None:
    """The lease spec to write to hold the lease as ``identity``, or None if someone else holds it.

    ``expired`` says whether the current holder's lease has run out (see ``LeaseObserver``)."""
    stamp = format_micro_time(now)
    if current is None:
        return LeaseSpec(
            holder_identity=identity,
            lease_duration_seconds=duration_seconds,
            acquire_time=stamp,
            renew_time=stamp,
            lease_transitions=0,
        )
    if current.holder_identity == identity:
        return current.model_copy(
            update={
                "renew_time": stamp,
                "lease_duration_seconds": duration_seconds,
                "acquire_time": current.acquire_time or stamp,
                "lease_transitions": current.lease_transitions or 0,
            }
        )
    if current.holder_identity and not expired:
        return None
    return LeaseSpec(
        holder_identity=identity,
        lease_duration_seconds=duration_seconds,
        acquire_time=stamp,
        renew_time=stamp,
        lease_transitions=(current.lease_transitions or 0) + (1 if current.holder_identity else 0),
    )


def released_lease(current: LeaseSpec, now: dt.datetime) -> LeaseSpec:
    """What a leader writes when it stops: nobody holds it (client-go's ReleaseOnCancel)."""
    stamp = format_micro_time(now)
    return LeaseSpec(
        holder_identity=None,
        lease_duration_seconds=1,
        acquire_time=stamp,
        renew_time=stamp,
        lease_transitions=current.lease_transitions or 0,
    )


def _record(spec: LeaseSpec | None) -> tuple[Any, ...] | None:
    if spec is None:
        return None
    return (
        spec.holder_identity,
        spec.renew_time,
        spec.acquire_time,
        spec.lease_duration_seconds,
        spec.lease_transitions,
    )


class LeaseObserver:
    """When this replica last saw the lease record change, on its own monotonic clock."""

    def __init__(self) -> None:
        self._record: tuple[Any, ...] | None = None
        self._spec: LeaseSpec | None = None
        self.observed_at: float | None = None

    def observe(self, spec: LeaseSpec | None, now: float) -> None:
        record = _record(spec)
        if record != self._record or self.observed_at is None:
            self._record = record
            self._spec = spec
            self.observed_at = now

    def expired(self, now: float) -> bool:
        """Whether the holder last seen has had a full lease duration, since we saw it change, to renew."""
        spec = self._spec
        if spec is None or not spec.holder_identity:
            return True
        if self.observed_at is None:
            return False
        return now >= self.observed_at + float(spec.lease_duration_seconds or 0)

    @property
    def holder(self) -> str | None:
        return self._spec.holder_identity if self._spec is not None else None


# ---------------------------------------------------------------------------------------------------
# The elector


class Attempt(enum.Enum):
    HELD = "held"  # we hold the lease (acquired or renewed)
    OTHER = "other"  # somebody else holds it
    FAILED = "failed"  # the write lost a race, or the API failed: try again


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class LeaderElector:
    def __init__(
        self,
        client: Client,
        lease_kind: Kind,
        identity: str,
        config: LeaderElectionConfig | None = None,
        *,
        namespace: str = LEASE_NAMESPACE,
        name: str = LEASE_NAME,
        clock: Clock | None = None,
        wall: Callable[[], dt.datetime] = _utcnow,
    ) -> None:
        if not identity:
            raise ValueError("leader election needs a non-empty identity")
        self.client = client
        self.kind = lease_kind
        self.identity = identity
        self.config = config or LeaderElectionConfig()
        self.namespace = namespace
        self.name = name
        self._clock: Clock = clock or LoopClock()
        self._wall = wall
        self._observer = LeaseObserver()
        self._maybe_holding = False
        self.is_leader = False
        self.transitions = 0  # how many times this replica became leader

    async def run(self, lead: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Campaign forever; while leading, run ``lead()`` (cancelled on losing the lease). Cancel to
        stop: the lease is released if held."""
        try:
            while True:
                renewed_at = await self._acquire()
                await self._hold(lead, renewed_at)
                await self._clock.sleep(self.config.retry_interval)
        finally:
            if self._maybe_holding:
                await self._release()

    async def _acquire(self) -> float:
        while True:
            started = self._clock.now()
            outcome = await self._attempt(budget=self.config.retry_interval * 2)
            if outcome is Attempt.HELD:
                return started
            await self._clock.sleep(self.config.retry_interval)

    async def _hold(self, lead: Callable[[], Coroutine[Any, Any, None]], renewed_at: float) -> None:
        cfg = self.config
        self.is_leader = True
        self.transitions += 1
        log.info("%s is now the leader (lease %s/%s)", self.identity, self.namespace, self.name)
        task = asyncio.create_task(lead(), name="leader-work")
        try:
            while True:
                wait = renewed_at + cfg.renew_interval - self._clock.now()
                if wait > 0:
                    sleeper = asyncio.create_task(self._clock.sleep(wait))
                    try:
                        await asyncio.wait({task, sleeper}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        sleeper.cancel()
                if task.done():
                    if not task.cancelled() and task.exception() is not None:
                        log.error("leader work failed; stepping down", exc_info=task.exception())
                    return
                renewed = await self._renew(renewed_at)
                if renewed is None:
                    return
                renewed_at = renewed
        finally:
            self.is_leader = False
            task.cancel()
            await asyncio.wait({task})
            log.info("%s stopped leading", self.identity)

    async def _renew(self, renewed_at: float) -> float | None:
        """Renew until it works (the new renew time) or the deadline passes (None: step down)."""
        cfg = self.config
        deadline = renewed_at + cfg.renew_deadline
        while True:
            started = self._clock.now()
            remaining = deadline - started
            if remaining <= 0:
                log.warning(
                    "%s could not renew the lease for %.1fs; stepping down", self.identity, cfg.renew_deadline
                )
                return None
            outcome = await self._attempt(budget=remaining)
            if outcome is Attempt.HELD:
                return started
            if outcome is Attempt.OTHER:
                log.warning("%s lost the lease to %s", self.identity, self._observer.holder)
                return None
            await self._clock.sleep(min(cfg.retry_interval, max(0.0, deadline - self._clock.now())))

    async def _attempt(self, budget: float) -> Attempt:
        try:
            async with asyncio.timeout(budget):
                return await self._try_acquire_or_renew()
        except TimeoutError:
            log.warning("leader election: the API did not answer within %.1fs", budget)
            return Attempt.FAILED
        except errors.ApiError as e:
            log.warning("leader election: %s", e.message)
            return Attempt.FAILED
        except Exception:  # a malformed Lease, a bug: keep campaigning rather than die silently
            log.exception("leader election attempt failed")
            return Attempt.FAILED

    async def _try_acquire_or_renew(self) -> Attempt:
        duration = self.config.lease_duration_seconds
        try:
            obj = await self.client.get(self.kind, self.namespace, self.name)
        except errors.ApiError as e:
            if e.code != 404:
                raise
            spec = plan_lease(None, self.identity, self._wall(), duration, expired=True)
            assert spec is not None
            body = {"metadata": {"name": self.name, "namespace": self.namespace}, "spec": spec.to_dict()}
            try:
                await self.client.create(self.kind, self.namespace, body)
            except errors.ApiError as e2:
                if e2.code == 409:
                    return Attempt.FAILED
                raise
            self._observer.observe(spec, self._clock.now())
            self._maybe_holding = True
            return Attempt.HELD
        # Seen now, after the read returned: never earlier than the write that produced this record,
        # so the expiry we reckon from it can not come before the holder's own deadline.
        now = self._clock.now()
        lease = Lease.model_validate(obj)
        self._observer.observe(lease.spec, now)
        spec = plan_lease(
            lease.spec, self.identity, self._wall(), duration, expired=self._observer.expired(now)
        )
        if spec is None:
            self._maybe_holding = False
            return Attempt.OTHER
        body = {**obj, "spec": spec.to_dict()}
        try:
            await self.client.update(self.kind, self.namespace, self.name, body)
        except errors.ApiError as e:
            if e.code in (404, 409):
                return Attempt.FAILED
            raise
        self._observer.observe(spec, self._clock.now())
        self._maybe_holding = True
        return Attempt.HELD

    async def _release(self) -> None:
        """Give the lease up if we still hold it (best effort: on failure it simply expires)."""
        try:
            async with asyncio.timeout(max(1.0, self.config.retry_interval)):
                obj = await self.client.get(self.kind, self.namespace, self.name)
                lease = Lease.model_validate(obj)
                if lease.spec.holder_identity != self.identity:
                    return
                spec = released_lease(lease.spec, self._wall())
                await self.client.update(
                    self.kind, self.namespace, self.name, {**obj, "spec": spec.to_dict()}
                )
                log.info("%s released the lease", self.identity)
        except Exception as e:  # best effort: unreleased, the lease simply expires
            log.warning("%s could not release the lease (it will expire): %s", self.identity, e)
        finally:
            self._maybe_holding = False
