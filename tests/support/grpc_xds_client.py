"""An unmodified grpcio client with an ``xds:///`` target, driven line by line over stdin.

Run with ``GRPC_XDS_BOOTSTRAP`` pointing at a bootstrap file (grpc reads it when the first xds
channel is made). It opens one channel to ``--target`` and keeps it for its whole life, so tests see
how one client follows configuration changes. Commands, one per line; each answers one JSON line:

    call N     -> {"servers": {"<name>": count, ...}, "errors": {"<StatusCode>": count}}
    quit
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter

import grpc

from support.grpc_echo import ECHO


def _identity(b: bytes) -> bytes:
    return b


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--target", required=True)
    p.add_argument("--timeout", type=float, default=5.0)
    args = p.parse_args(argv)
    channel = grpc.insecure_channel(args.target)
    echo = channel.unary_unary(ECHO, request_serializer=_identity, response_deserializer=_identity)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "quit":
            break
        if words[0] == "call":
            servers: Counter[str] = Counter()
            errors: Counter[str] = Counter()
            for _ in range(int(words[1])):
                try:
                    reply = echo(b"ping", timeout=args.timeout, wait_for_ready=True)
                    servers[json.loads(reply)["server"]] += 1
                except grpc.RpcError as e:
                    errors[str(e.code())] += 1
            print(json.dumps({"servers": servers, "errors": errors}), flush=True)
    channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
