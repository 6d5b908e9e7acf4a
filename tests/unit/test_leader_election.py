"""Leader election: the pure lease decisions, and two electors racing on virtual time."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
from typing import Any

import pytest

from innermesh.api import status as errors
from innermesh.api.coordination import LeaseSpec
from innermesh.api.registry import Kind
from innermesh.api.scheme import REGISTRY
from innermesh.controllers.clock import FakeClock
from innermesh.controllers.leader import (
    LeaderElectionConfig,
    LeaderElector,
    LeaseObserver,
    plan_lease,
    released_lease,
)

EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
LEASE = REGISTRY.by_gvk("coordination.k8s.io/v1", "Lease")


def at(seconds: float) -> dt.datetime:
    return EPOCH + dt.timedelta(seconds=seconds)


def held_by(holder: str | None, transitions: int = 0) -> LeaseSpec:
    return LeaseSpec(
        holder_identity=holder,
        lease_duration_seconds=15,
        acquire_time="2026-01-01T00:00:00.000000Z",
        renew_time="2026-01-01T00:00:00.000000Z",
        lease_transitions=transitions,
    )


# ---------------------------------------------------------------------------------------------------
# Pure decisions


def test_a_missing_lease_is_created_held_by_us() -> None:
    """No Lease yet: hold it, with acquire and renew times now and no transitions."""
    spec = plan_lease(None, "a", at(1), 15, expired=True)
    assert spec is not None
    assert spec.holder_identity == "a"
    assert spec.lease_duration_seconds == 15
    assert spec.acquire_time == spec.renew_time == "2026-01-01T00:00:01.000000Z"
    assert spec.lease_transitions == 0


def test_the_holder_renews_keeping_acquire_time_and_transitions() -> None:
    """Our own lease: only renewTime moves."""
    spec = plan_lease(held_by("a", transitions=3), "a", at(5), 15, expired=False)
    assert spec is not None
    assert spec.renew_time == "2026-01-01T00:00:05.000000Z"
    assert spec.acquire_time == "2026-01-01T00:00:00.000000Z"
    assert spec.lease_transitions == 3


def test_a_live_lease_of_another_holder_is_not_taken() -> None:
    """Someone else's unexpired lease: nothing to write."""
    assert plan_lease(held_by("b"), "a", at(5), 15, expired=False) is None


def test_an_expired_lease_is_taken_over_with_a_transition() -> None:
    """Someone else's expired lease: ours, with leaseTransitions + 1."""
    spec = plan_lease(held_by("b", transitions=2), "a", at(20), 15, expired=True)
    assert spec is not None
    assert spec.holder_identity == "a"
    assert spec.lease_transitions == 3
    assert spec.acquire_time == "2026-01-01T00:00:20.000000Z"


def test_a_released_lease_is_taken_at_once() -> None:
    """A lease released on shutdown has no holder: take it without waiting, no transition counted."""
    released = released_lease(held_by("b", transitions=2), at(3))
    assert released.holder_identity is None
    assert released.lease_transitions == 2
    spec = plan_lease(released, "a", at(3), 15, expired=False)
    assert spec is not None
    assert spec.holder_identity == "a"
    assert spec.lease_transitions == 2


def test_expiry_is_counted_from_when_we_saw_the_record_change() -> None:
    """The observer judges expiry on its own clock, from its last sight of a change to the record."""
    obs = LeaseObserver()
    obs.observe(held_by("b"), now=100.0)
    assert not obs.expired(114.9)
    obs.observe(held_by("b"), now=110.0)  # same record: the clock does not restart
    assert obs.expired(115.0)
    renewed = held_by("b").model_copy(update={"renew_time": "2026-01-01T00:00:09.000000Z"})
    obs.observe(renewed, now=116.0)
    assert not obs.expired(130.0)
    assert obs.expired(131.0)


def test_observer_sees_no_holder_as_expired() -> None:
    """Nobody holds a released (or never seen) lease."""
    obs = LeaseObserver()
    assert obs.expired(0.0)
    obs.observe(held_by(None), now=1.0)
    assert obs.expired(1.0)


@pytest.mark.parametrize(
    "kw",
    [
        {"renew_interval": 10.0, "renew_deadline": 10.0},
        {"renew_deadline": 15.0},
        {"retry_interval": 0.0},
        {"retry_interval": 12.0},
    ],
)
def test_config_orders_its_timings(kw: dict[str, float]) -> None:
    """renew_interval < renew_deadline < lease_duration, and a retry shorter than the deadline."""
    with pytest.raises(ValueError):
        LeaderElectionConfig(**kw)


# ---------------------------------------------------------------------------------------------------
# Two electors on virtual time


class FakeLeases:
    """A Lease store with resourceVersions, and a network that can be cut per client."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str | None, str], dict[str, Any]] = {}
        self.rv = 0

    def client(self) -> FakeClient:
        return FakeClient(self)


class FakeClient:
    def __init__(self, store: FakeLeases) -> None:
        self.store = store
        self.cut = False

    def _check(self) -> None:
        if self.cut:
            raise errors.unavailable("network cut")

    async def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any]:
        self._check()
        obj = self.store.objects.get((namespace, name))
        if obj is None:
            raise errors.not_found(kind.plural, name)
        return copy.deepcopy(obj)

    async def create(
        self, kind: Kind, namespace: str | None, body: dict[str, Any], **_: Any
    ) -> dict[str, Any]:
        self._check()
        key = (namespace, body["metadata"]["name"])
        if key in self.store.objects:
            raise errors.already_exists(kind.plural, key[1])
        self.store.rv += 1
        obj = copy.deepcopy(body)
        obj["metadata"]["resourceVersion"] = str(self.store.rv)
        self.store.objects[key] = obj
        return copy.deepcopy(obj)

    async def update(
        self, kind: Kind, namespace: str | None, name: str, body: dict[str, Any], **_: Any
    ) -> dict[str, Any]:
        self._check()
        current = self.store.objects.get((namespace, name))
        if current is None:
            raise errors.not_found(kind.plural, name)
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise errors.conflict(kind.plural, name)
        self.store.rv += 1
        obj = copy.deepcopy(body)
        obj["metadata"]["resourceVersion"] = str(self.store.rv)
        self.store.objects[(namespace, name)] = obj
        return copy.deepcopy(obj)

    def holder(self) -> str | None:
        obj = self.store.objects.get(("innermesh-system", "innermesh-controllers"))
        return None if obj is None else obj["spec"].get("holderIdentity")


CONFIG = LeaderElectionConfig(lease_duration=15, renew_interval=5, renew_deadline=10, retry_interval=2)


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


class Race:
    """Two electors on one store and one fake clock; ``step`` moves time and checks the invariant."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.store = FakeLeases()
        self.clients = {name: self.store.client() for name in ("a", "b")}
        self.working: dict[str, bool] = {"a": False, "b": False}
        self.electors = {
            name: LeaderElector(
                client,  # type: ignore[arg-type]  # the fake implements the three calls used
                LEASE,
                name,
                CONFIG,
                clock=self.clock,
                wall=lambda: at(self.clock.now()),
            )
            for name, client in self.clients.items()
        }
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.both_worked = False

    def lead(self, name: str) -> Any:
        async def work() -> None:
            self.working[name] = True
            try:
                await asyncio.Event().wait()
            finally:
                self.working[name] = False

        return work

    async def start(self, name: str) -> None:
        self.tasks[name] = asyncio.create_task(self.electors[name].run(self.lead(name)))
        await settle()

    async def stop(self, name: str) -> None:
        self.tasks[name].cancel()
        await asyncio.gather(self.tasks[name], return_exceptions=True)

    async def step(self, seconds: float, tick: float = 0.25) -> None:
        elapsed = 0.0
        while elapsed < seconds:
            self.clock.advance(tick)
            elapsed += tick
            await settle()
            if self.working["a"] and self.working["b"]:
                self.both_worked = True

    def leaders(self) -> list[str]:
        return [n for n, working in self.working.items() if working]


async def test_only_one_of_two_electors_leads() -> None:
    """Two candidates: exactly one runs its work, and keeps the lease by renewing."""
    race = Race()
    await race.start("a")
    await race.start("b")
    await race.step(60)
    assert race.leaders() == ["a"]
    assert race.clients["a"].holder() == "a"
    assert not race.both_worked
    await race.stop("a")
    await race.stop("b")


async def test_clean_stop_hands_over_at_the_next_retry() -> None:
    """A leader that stops releases the lease; the other takes it within one retry interval."""
    race = Race()
    await race.start("a")
    await race.start("b")
    await race.step(10)
    await race.stop("a")
    assert race.clients["a"].holder() is None
    await race.step(CONFIG.retry_interval + 0.5)
    assert race.leaders() == ["b"]
    await race.stop("b")


async def test_partitioned_leader_steps_down_before_the_other_takes_over() -> None:
    """A partitioned leader stops at the renew deadline; the other starts after the lease, never both."""
    race = Race()
    await race.start("a")
    await race.start("b")
    await race.step(6)
    assert race.leaders() == ["a"]
    race.clients["a"].cut = True
    cut_at = race.clock.now()
    stopped_at = None
    started_at = None
    while race.clock.now() < cut_at + 40:
        await race.step(0.25)
        if stopped_at is None and not race.working["a"]:
            stopped_at = race.clock.now()
        if started_at is None and race.working["b"]:
            started_at = race.clock.now()
    assert not race.both_worked
    assert stopped_at is not None
    assert started_at is not None
    assert stopped_at - cut_at <= CONFIG.renew_deadline
    assert stopped_at < started_at <= cut_at + CONFIG.lease_duration + 2 * CONFIG.retry_interval
    race.clients["a"].cut = False
    await race.step(30)
    assert race.leaders() == ["b"]
    assert race.clients["b"].holder() == "b"
    await race.stop("a")
    await race.stop("b")
