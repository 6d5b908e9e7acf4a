"""What every command shares: the connection flags, errors and exit codes, kinds, and output.

Exit codes: 0 success, 1 the thing asked failed (an error from the server, an unreachable server, a bad
manifest), 2 a usage error (bad flags; argparse uses 2 as well). Errors print on stderr as one line each:
``error: ...`` for what the CLI found, ``Error from server (Reason): ...`` for what the server answered,
as kubectl prints them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, NoReturn, TextIO

import yaml

from innermesh.api import status as errors
from innermesh.api.registry import Kind, UnknownKind
from innermesh.api.scheme import REGISTRY
from innermesh.cli.process import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CliError, UsageError
from innermesh.client.http import HttpClient

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "CliError", "UsageError"]  # re-exported for commands

DEFAULT_SERVER = "http://127.0.0.1:7443"
SERVER_ENV = "INNERMESH_SERVER"
TOKEN_ENV = "INNERMESH_TOKEN"  # noqa: S105 (the variable's name, not a token)
DEFAULT_NAMESPACE = "default"


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    raise CliError(message, code)


# ---------------------------------------------------------------------------------------------------
# Connection


def add_connection_flags(parser: argparse.ArgumentParser, *, top_level: bool) -> None:
    """--server and --token. On subcommands their default is "not given", so that a value given before
    the subcommand (``innermesh --server URL get svc``) is not overwritten by the subcommand's default."""
    default: Any = None if top_level else argparse.SUPPRESS
    parser.add_argument(
        "--server",
        metavar="URL",
        default=default,
        help=f"the innermesh API server (default: ${SERVER_ENV}, else {DEFAULT_SERVER})",
    )
    parser.add_argument(
        "--token",
        metavar="TOKEN",
        default=default,
        help=f"bearer token for the API server (default: ${TOKEN_ENV})",
    )


def server_url(args: argparse.Namespace) -> str:
    url = getattr(args, "server", None) or os.environ.get(SERVER_ENV) or DEFAULT_SERVER
    if "://" not in url:
        url = "http://" + url
    return url.rstrip("/")


def token(args: argparse.Namespace) -> str | None:
    return getattr(args, "token", None) or os.environ.get(TOKEN_ENV) or None


def make_client(args: argparse.Namespace) -> HttpClient:
    return HttpClient(server_url(args), token=token(args))


def is_unreachable(e: errors.ApiError) -> bool:
    """An error the HTTP client made up because it got no answer (not a 503 the server sent)."""
    return e.code == 503 and e.message.startswith(
        (
            "cannot reach the innermesh server",
            "the innermesh server at",
            "watch connection to",
            "watch stream from",
        )
    )


def server_error(e: errors.ApiError) -> str:
    """One line for an API error, as kubectl words it."""
    if is_unreachable(e):
        return f"error: {e.message}"
    if e.code == 422 and e.reason == "Invalid":
        return f"The {e.message}" if e.kind and e.message.startswith(f'{e.kind} "') else f"error: {e.message}"
    return f"Error from server ({e.reason}): {e.message}"


# ---------------------------------------------------------------------------------------------------
# Kinds and namespaces


def resolve_kind(name: str) -> Kind:
    try:
        return REGISTRY.resolve(name)
    except UnknownKind:
        fail(f'error: the server doesn\'t have a resource type "{name}"')


def qualified(kind: Kind) -> str:
    """How kubectl names a kind in its messages: ``service``, ``httproute.gateway.networking.k8s.io``."""
    return f"{kind.singular}.{kind.group}" if kind.group else kind.singular


def namespace_arg(args: argparse.Namespace) -> str:
    return getattr(args, "namespace", None) or DEFAULT_NAMESPACE


def scope(kind: Kind, namespace: str | None) -> str | None:
    """The namespace a request for ``kind`` uses: none for cluster-scoped kinds."""
    return namespace if kind.namespaced else None


# ---------------------------------------------------------------------------------------------------
# Output


class _Dumper(yaml.SafeDumper):
    """YAML as kubectl prints it: block style, sorted keys, lists at their key's indentation, multi-line
    strings as literal blocks."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    if dumper.resolve(yaml.ScalarNode, value, (True, False)) != "tag:yaml.org,2002:str":  # type: ignore[no-untyped-call]
        # A string that would read back as something else ("32", "true", a timestamp): double quotes,
        # as kubectl writes them.
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style='"')
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _str_representer)


def to_yaml(obj: Any) -> str:
    return yaml.dump(obj, Dumper=_Dumper, default_flow_style=False, sort_keys=True, width=1 << 30)


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=4, sort_keys=True, ensure_ascii=False)


def out(text: str = "", stream: TextIO | None = None) -> None:
    """Print a line and flush it at once (watchers and pipes see it as it happens)."""
    target = stream or sys.stdout
    target.write(text + "\n")
    target.flush()


def err(text: str) -> None:
    out(text, sys.stderr)
