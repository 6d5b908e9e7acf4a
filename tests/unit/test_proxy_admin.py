"""The admin port's answers (pure over the view); the real port is exercised in tests/e2e/test_sidecar.py."""

from __future__ import annotations

import json
from typing import Any

from innermesh.proxy.admin import PROMETHEUS_TEXT, answer


class View:
    def __init__(self, ready: bool) -> None:
        self._ready = ready

    def ready(self) -> tuple[bool, str]:
        return (True, "") if self._ready else (False, "no configuration yet")

    def stats_text(self) -> str:
        return "innermesh_proxy_config_applied_total 1\n"

    def config_dump(self) -> dict[str, Any]:
        return {"version": "abc"}


def test_ready_says_why_not() -> None:
    assert answer(View(True), b"GET", b"/ready") == (200, b"text/plain", b"LIVE\n")
    assert answer(View(False), b"GET", b"/ready") == (503, b"text/plain", b"no configuration yet\n")


def test_stats_and_config_dump() -> None:
    assert answer(View(True), b"GET", b"/stats") == (
        200,
        PROMETHEUS_TEXT,
        b"innermesh_proxy_config_applied_total 1\n",
    )
    status, content_type, body = answer(View(True), b"GET", b"/config_dump")
    assert (status, content_type, json.loads(body)) == (200, b"application/json", {"version": "abc"})


def test_unknown_paths_and_methods() -> None:
    assert answer(View(True), b"GET", b"/nope")[0] == 404
    assert answer(View(True), b"POST", b"/ready")[0] == 405
