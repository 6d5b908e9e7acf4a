"""A gRPC echo server for tests, with no .proto: methods are generic handlers over raw bytes.

``/innermesh.test.Echo/Echo`` (unary) answers JSON naming the server (``--name``), the request's
metadata and its body length; ``/innermesh.test.Echo/Fail`` aborts with the status code given as the
request body (e.g. b"14"). Runs as ``python -m support.grpc_echo --name N --port P`` and prints
``READY <port>`` once it serves.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from concurrent import futures

import grpc

SERVICE = "innermesh.test.Echo"
ECHO = f"/{SERVICE}/Echo"
FAIL = f"/{SERVICE}/Fail"


def _identity(b: bytes) -> bytes:
    return b


def handler(name: str) -> grpc.GenericRpcHandler:
    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        return json.dumps({"server": name, "metadata": metadata, "size": len(request)}).encode()

    def fail(request: bytes, context: grpc.ServicerContext) -> bytes:
        code = next(c for c in grpc.StatusCode if c.value[0] == int(request or b"2"))
        context.abort(code, f"{name} failed as asked")

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(
                echo, request_deserializer=_identity, response_serializer=_identity
            ),
            "Fail": grpc.unary_unary_rpc_method_handler(
                fail, request_deserializer=_identity, response_serializer=_identity
            ),
        },
    )


def serve(name: str, port: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler(name),))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(f"READY {bound}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=0.5).wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--name", required=True)
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args(argv)
    serve(args.name, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
