"""A gRPC echo server for tests, with no .proto: methods are generic handlers over raw bytes.

Methods of ``innermesh.test.Echo``:

- ``Echo`` (unary) answers JSON naming the server (``--name``), the request's metadata and its body
  length;
- ``Fail`` (unary) aborts with the status code given as the request body (e.g. b"14");
- ``Sleep`` (unary) waits the request body's milliseconds (ending early when the call is cancelled)
  and answers JSON with the server and the deadline it was given (``time_remaining`` at the start,
  null for none);
- ``Trailers`` (unary) answers like ``Echo`` and sends trailing metadata ``x-trailer: from-<name>``
  and ``x-count-bin`` (binary);
- ``ServerStream`` (unary-stream): the body ``N`` or ``N:SIZE`` asks for N messages, each its index
  padded with "x" to SIZE bytes (default: just the index);
- ``ClientStream`` (stream-unary) answers JSON with the server, the number of messages received and
  their total size;
- ``Bidi`` (stream-stream) echoes each message as it arrives.

Runs as ``python -m support.grpc_echo --name N --port P`` and prints ``READY <port>`` once it serves.
``GrpcEcho`` starts and stops one as a subprocess for tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc

from support.child import start_child, stop_child

SERVICE = "innermesh.test.Echo"
ECHO = f"/{SERVICE}/Echo"
FAIL = f"/{SERVICE}/Fail"
SLEEP = f"/{SERVICE}/Sleep"
TRAILERS = f"/{SERVICE}/Trailers"
SERVER_STREAM = f"/{SERVICE}/ServerStream"
CLIENT_STREAM = f"/{SERVICE}/ClientStream"
BIDI = f"/{SERVICE}/Bidi"


def _identity(b: bytes) -> bytes:
    return b


def handler(name: str) -> grpc.GenericRpcHandler:
    def metadata_of(context: grpc.ServicerContext) -> dict[str, str]:
        return {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}

    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        return json.dumps({"server": name, "metadata": metadata_of(context), "size": len(request)}).encode()

    def fail(request: bytes, context: grpc.ServicerContext) -> bytes:
        code = next(c for c in grpc.StatusCode if c.value[0] == int(request or b"2"))
        context.abort(code, f"{name} failed as asked")

    def sleep(request: bytes, context: grpc.ServicerContext) -> bytes:
        remaining = context.time_remaining()
        end = time.monotonic() + int(request or b"0") / 1000
        while time.monotonic() < end and context.is_active():
            time.sleep(0.01)
        return json.dumps({"server": name, "time_remaining": remaining}).encode()

    def trailers(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.set_trailing_metadata((("x-trailer", f"from-{name}"), ("x-count-bin", b"\x00\x01\x02")))
        return echo(request, context)

    def server_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        count, _, size = request.partition(b":")
        width = int(size or b"0")
        for i in range(int(count)):
            yield str(i).encode().ljust(width, b"x")

    def client_stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        count = total = 0
        for message in requests:
            count += 1
            total += len(message)
        return json.dumps({"server": name, "count": count, "bytes": total}).encode()

    def bidi(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        yield from requests

    unary = grpc.unary_unary_rpc_method_handler
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": unary(echo, request_deserializer=_identity, response_serializer=_identity),
            "Fail": unary(fail, request_deserializer=_identity, response_serializer=_identity),
            "Sleep": unary(sleep, request_deserializer=_identity, response_serializer=_identity),
            "Trailers": unary(trailers, request_deserializer=_identity, response_serializer=_identity),
            "ServerStream": grpc.unary_stream_rpc_method_handler(
                server_stream, request_deserializer=_identity, response_serializer=_identity
            ),
            "ClientStream": grpc.stream_unary_rpc_method_handler(
                client_stream, request_deserializer=_identity, response_serializer=_identity
            ),
            "Bidi": grpc.stream_stream_rpc_method_handler(
                bidi, request_deserializer=_identity, response_serializer=_identity
            ),
        },
    )


def serve(name: str, port: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
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


class GrpcEcho:
    """One grpc echo server process. ``start`` waits for its READY line; ``stop`` ends it (SIGTERM,
    then SIGKILL); ``kill`` makes it vanish as a crashed process would."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> GrpcEcho:
        args = ["--name", self.name, "--port", "0"]
        self.process, words = start_child("support.grpc_echo", args, f"grpc echo {self.name}", timeout)
        self.port = int(words[0])
        return self

    def stop(self) -> None:
        stop_child(self.process)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> GrpcEcho:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def grpc_echoes(*names: str) -> Iterator[list[GrpcEcho]]:
    """Several grpc echo servers started together and stopped together."""
    servers = [GrpcEcho(n) for n in names]
    try:
        for s in servers:
            s.start()
        yield servers
    finally:
        for s in servers:
            s.stop()


if __name__ == "__main__":
    sys.exit(main())
