"""The HTTP/1.1 connection `protocoop serve` runs: uvicorn's httptools protocol, bounded.

uvicorn bounds neither the size nor the number of a request's header fields (httptools keeps
whatever arrives) nor the time a request head may take, so one slow or endless head holds memory
and a connection for as long as the client likes. `BoundedHttpProtocol` counts the bytes of each
request head as they arrive and stops reading at `max_header_bytes` (431), counts its header
fields (431 past `max_headers`), and gives a head `header_timeout_s` to arrive, from its first
byte or the connection's opening (408). Each refusal is an RFC 9457 problem, then the connection
is closed. A chunked body's framing and trailer fields (which httptools also keeps whole) get
the same byte and field budget; past it the connection is closed. The size and time of the body
itself are bounded one layer up, by `http.BodyLimitMiddleware`.

Counting costs a comparison per read and per header field; the timer is only armed when a head
spans reads (and once per connection, for its first request).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httptools
import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from protocoop.config import get_settings
from protocoop.errors import PROBLEM_CONTENT_TYPE, HeadersTooLarge, ProblemError, RequestTimeout
from protocoop.security import SECURITY_HEADERS


class _TooManyHeaders(Exception):
    """Raised from the parser's header callback to stop parsing the request."""


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools connection with a size, field-count and time limit on request heads.

    A head is the bytes from the end of the previous request (or the connection's opening) to
    the end of its header fields. Bytes that follow a request's end within the same read (a
    pipelining client) start the next head uncounted, so a head can exceed the limit by at most
    one read (256 KiB) before it is refused; the framing budget is as approximate."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        settings = get_settings()
        self.max_head_bytes = settings.max_header_bytes
        self.max_headers = settings.max_headers
        self.head_timeout_s = settings.header_timeout_s
        self.head_open = True
        """Reading a request head: counting its bytes and fields against the limits."""
        self.head_bytes = 0
        self.header_count = 0
        """Header fields of the current request, its trailer fields included."""
        self.framing_bytes = 0
        """Bytes received after the head that were not body: chunk framing and trailers."""
        self.head_timer: asyncio.TimerHandle | None = None

    # --- the connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()  # a connection that never sends a whole head is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self.head_open:
            room = self.max_head_bytes - self.head_bytes
            if len(data) > room:
                self._receive_past_the_limit(data, room)
                return
            self.head_bytes += len(data)
            self._feed(data)
            return
        self.framing_bytes += len(data)  # less the body, which `on_body` subtracts
        self._feed(data)
        if self.framing_bytes > self.max_head_bytes and not self.head_open:
            self.logger.warning("Chunk framing and trailers over the header limit: closing.")
            self._refuse(HeadersTooLarge())  # a request is being answered: closes, unanswered

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as error:
            if isinstance(error.__context__, _TooManyHeaders):
                self._refuse(
                    HeadersTooLarge(f"A request may have at most {self.max_headers} header fields.")
                )
                return
            self._invalid_request()
            return
        except httptools.HttpParserError:
            self._invalid_request()
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self.head_open and self.head_bytes and self.head_timer is None:
            self._arm_head_timer()  # a head spanning reads: it has `head_timeout_s` in all

    def _receive_past_the_limit(self, data: bytes, room: int) -> None:
        """Feed only what the head's limit leaves room for: if the head ends within it, go on
        with the rest (a body, or the next request); if not, refuse it unread."""
        self.head_bytes += room
        self._feed(data[:room])
        if self.transport.is_closing():
            return
        if self.head_open and self.head_bytes >= self.max_head_bytes:  # the same head, unfinished
            self._refuse(
                HeadersTooLarge(
                    f"A request's head (request line and header fields) may be at most "
                    f"{self.max_head_bytes} bytes."
                )
            )
            return
        self.data_received(data[room:])

    def _invalid_request(self) -> None:
        msg = "Invalid HTTP request received."
        self.logger.warning(msg)
        self.send_400_response(msg)

    # --- parser callbacks ----------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_count += 1
        if self.header_count > self.max_headers:
            raise _TooManyHeaders
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.head_open = False
        self.framing_bytes = 0
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self.framing_bytes -= len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        # Whatever the client sends next is the next request's head.
        self.head_open = True
        self.head_bytes = 0
        self.header_count = 0
        super().on_message_complete()

    # --- refusals ------------------------------------------------------------------------------

    def _arm_head_timer(self) -> None:
        self.head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if not self.head_open or self.transport.is_closing():
            return
        if self._answering():
            # A pipelined head waits while we answer the requests before it: not its fault.
            self._arm_head_timer()
            return
        if not self.head_bytes:  # nothing of a request arrived: close, as an idle keep-alive
            self.transport.close()
            return
        self._refuse(
            RequestTimeout(f"A request's head must arrive within {self.head_timeout_s:g} seconds.")
        )

    def _answering(self) -> bool:
        """A response to an earlier request on this connection is still being made."""
        return bool(self.pipeline) or (self.cycle is not None and not self.cycle.response_complete)

    def _refuse(self, problem: ProblemError) -> None:
        """Answer `problem` and close the connection, reading nothing more. While an earlier
        request is still being answered no response can be written: the connection is closed."""
        self.head_open = False
        self._cancel_head_timer()
        if not self._answering():
            self.transport.write(self._problem_response(problem))
        self.transport.close()

    def _problem_response(self, problem: ProblemError) -> bytes:
        body = orjson.dumps(problem.body())
        headers = [
            *self.server_state.default_headers,
            (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            *((name.lower().encode(), value.encode()) for name, value in SECURITY_HEADERS.items()),
        ]
        lines = [STATUS_LINE[problem.status]]
        lines.extend(name + b": " + value + b"\r\n" for name, value in headers)
        return b"".join([*lines, b"\r\n", body])
