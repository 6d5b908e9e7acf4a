"""A bare HTTP/2 (h2c, prior knowledge) client for the tests that need what curl and grpcio hide:
stream resets both ways, GOAWAY, request headers sent exactly as written (``grpc-timeout`` without a
client that enforces it), a body sent in parts.

It reads in a background task, gives every DATA frame's window back at once, and records per stream
the response head, body, trailers and any reset; ``goaway`` holds the last GOAWAY received.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from hyperframe.frame import Frame, GoAwayFrame

LOOPBACK = "127.0.0.1"


@dataclass
class H2Response:
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    parts: list[bytes] = field(default_factory=list)  # the body's DATA frames
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    reset: int | None = None  # the RST_STREAM error code, when the stream was reset
    done: asyncio.Event = field(default_factory=asyncio.Event)
    head: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def body(self) -> bytes:
        return b"".join(self.parts)

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)

    def trailer(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.trailers if k == name), None)

    def json(self) -> Any:
        return json.loads(self.body)


class _GracefulConnection(H2Connection):
    """h2 closes its state machine on any GOAWAY (python-hyper/h2#1181), which would fail the
    streams a graceful one lets finish: a NO_ERROR GOAWAY is only reported here."""

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> tuple[list[Frame], list[Event]]:
        if frame.error_code != ErrorCodes.NO_ERROR:
            return super()._receive_goaway_frame(frame)
        event = ConnectionTerminated()
        event.error_code = ErrorCodes.NO_ERROR
        event.last_stream_id = frame.last_stream_id
        return [], [event]


class H2TestClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h2 = _GracefulConnection(H2Configuration(client_side=True, header_encoding=None))
        self.h2.initiate_connection()
        self.responses: dict[int, H2Response] = {}
        self.goaway: ConnectionTerminated | None = None
        self.goaway_seen = asyncio.Event()
        self.closed = asyncio.Event()
        self._flush()
        self._reading = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def connect(cls, port: int) -> H2TestClient:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        return cls(reader, writer)

    def request(
        self,
        authority: str,
        path: str = "/",
        *,
        method: str = "GET",
        headers: list[tuple[str, str]] = (),  # type: ignore[assignment]
        body: bytes = b"",
        end: bool = True,
    ) -> int:
        """Open a stream; returns its id. ``end=False`` leaves the request open for ``send``."""
        sid = self.h2.get_next_available_stream_id()
        fields = [(":method", method), (":scheme", "http"), (":authority", authority), (":path", path)]
        self.h2.send_headers(sid, [*fields, *headers], end_stream=end and not body)
        self.responses[sid] = H2Response()
        if body:
            self.h2.send_data(sid, body, end_stream=end)
        self._flush()
        return sid

    def tunnel(self, authority: str) -> int:
        """Open a CONNECT stream to ``authority`` (RFC 9113 section 8.5: no :scheme, no :path)."""
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, [(":method", "CONNECT"), (":authority", authority)])
        self.responses[sid] = H2Response()
        self._flush()
        return sid

    def send(self, sid: int, data: bytes, *, end: bool = False) -> None:
        self.h2.send_data(sid, data, end_stream=end)
        self._flush()

    def reset(self, sid: int, code: ErrorCodes = ErrorCodes.CANCEL) -> None:
        self.h2.reset_stream(sid, code)
        self._flush()

    async def response(self, sid: int, timeout: float = 10.0) -> H2Response:  # noqa: ASYNC109
        """The stream's response once it ended or was reset."""
        response = self.responses[sid]
        async with asyncio.timeout(timeout):
            await response.done.wait()
        return response

    async def close(self) -> None:
        self._reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reading
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    async def _read(self) -> None:
        try:
            while data := await self.reader.read(65536):
                for event in self.h2.receive_data(data):
                    self._event(event)
                self._flush()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self.closed.set()
            for response in self.responses.values():
                response.done.set()

    def _event(self, event: object) -> None:
        if isinstance(event, ResponseReceived):
            r = self.responses[event.stream_id]
            headers = [(bytes(k), bytes(v)) for k, v in event.headers]
            r.status = int(dict(headers)[b":status"])
            r.headers = [(k, v) for k, v in headers if not k.startswith(b":")]
            r.head.set()
        elif isinstance(event, DataReceived):
            self.responses[event.stream_id].parts.append(event.data)
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, TrailersReceived):
            self.responses[event.stream_id].trailers = [(bytes(k), bytes(v)) for k, v in event.headers]
        elif isinstance(event, StreamEnded):
            self.responses[event.stream_id].done.set()
        elif isinstance(event, StreamReset):
            r = self.responses[event.stream_id]
            r.reset = int(event.error_code)
            r.head.set()
            r.done.set()
        elif isinstance(event, ConnectionTerminated):
            self.goaway = event
            self.goaway_seen.set()

    async def __aenter__(self) -> H2TestClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
