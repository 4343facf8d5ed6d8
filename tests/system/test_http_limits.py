"""A real `protocoop serve` bounds what a client may make it hold: the size and number of a
request's header fields (431, then the connection is closed) and the time a request's head and
body may take to arrive (408, then closed) — while ordinary requests, large bodies and pipelined
requests are answered as before.

The clients here are raw sockets, so that they can send what no HTTP library would. The server
runs on SQLite only: these limits live in the HTTP layer, in front of the application and its
database, and do not depend on which database is behind it. The limits are made small and the
timeouts short through the environment; the tests assert what happens, never how long it took,
beyond "before the test's own generous deadline".
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator

import pytest

from protocoop.auth.roles import Role
from protocoop.db import Database, migrate
from tests.support.api import make_key
from tests.support.live_server import _SERVERS, LiveServer

pytestmark = pytest.mark.exclusive  # timing, crash windows and group sizes need the cores

MAX_HEADER_BYTES = 8192
MAX_HEADERS = 30
HEADER_TIMEOUT_S = 1
BODY_TIMEOUT_S = 1
DEADLINE_S = 20.0
"""How long any one step of a test waits for the server: far beyond every timeout above."""
TRICKLE_PAUSE_S = 0.1


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One `protocoop serve` (one worker, SQLite) with small limits and short timeouts."""
    workdir = tmp_path_factory.mktemp("limited-server")
    database_url = f"sqlite:///{workdir / 'protocoop.db'}"
    server = LiveServer(
        backend="sqlite",
        database_url=database_url,
        workdir=workdir,
        auto_migrate=True,
        workers=1,
        extra_env={
            "PROTOCOOP_MAX_HEADER_BYTES": str(MAX_HEADER_BYTES),
            "PROTOCOOP_MAX_HEADERS": str(MAX_HEADERS),
            "PROTOCOOP_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
            "PROTOCOOP_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
        },
    )
    try:
        migrate.upgrade(database_url)
        db = Database(server.settings(), pooled=False)
        try:
            server.admin_token = make_key(db, Role.ADMIN)
        finally:
            db.dispose()
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def server(limited_server: LiveServer, request: pytest.FixtureRequest) -> LiveServer:
    """The shared server, its log attached to the report of a test that fails."""
    request.node.stash.setdefault(_SERVERS, []).append(limited_server)
    return limited_server


# --- a raw HTTP/1.1 client -----------------------------------------------------------------------


def connect(server: LiveServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE_S)
    sock.settimeout(DEADLINE_S)
    return sock


def head(method: str, path: str, *fields: tuple[str, str]) -> bytes:
    """A request head: the request line, `Host` and `fields`, and the blank line."""
    lines = [f"{method} {path} HTTP/1.1", "Host: test", *(f"{n}: {v}" for n, v in fields)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class Answer:
    """One response as read off the socket."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def problem(self) -> dict[str, object]:
        assert self.headers.get("content-type", "").startswith("application/problem+json")
        document = json.loads(self.body)
        assert isinstance(document, dict)
        assert document["status"] == self.status
        return document


class Reader:
    """Reads responses one after the other from a socket (keeping what it read ahead)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        assert chunk, f"the server closed the connection; unread: {self.buffer[:200]!r}"
        self.buffer += chunk

    def response(self) -> Answer:
        while b"\r\n\r\n" not in self.buffer:
            self._more()
        raw_head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = raw_head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            self._more()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Answer(int(status_line.split()[1]), headers, body)

    def closed(self) -> bool:
        """True once the server has closed the connection (nothing more to read)."""
        try:
            return self.sock.recv(65536) == b"" and not self.buffer
        except ConnectionResetError:
            return not self.buffer


def trickle_until_answered(sock: socket.socket, start: bytes) -> None:
    """Send `start`, then one byte at a time until the server answers or closes; fail when the
    server still waits at the test's deadline."""
    sock.sendall(start)
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sock], [], [], TRICKLE_PAUSE_S)
        if readable:
            return
        try:
            sock.sendall(b"a")
        except (BrokenPipeError, ConnectionResetError):
            return
    pytest.fail(f"the server was still waiting for the trickled request after {DEADLINE_S}s")


# --- what still works ----------------------------------------------------------------------------


@pytest.mark.slow
def test_ordinary_large_and_pipelined_requests_are_answered_on_one_connection(
    server: LiveServer,
) -> None:
    auth = ("Authorization", f"Bearer {server.admin_token}")
    # A body much larger than the header limit, arriving with the head in one write.
    large_body = json.dumps({"id": "x" * (MAX_HEADER_BYTES * 8)}).encode()
    post = head(
        "POST",
        "/v1/communities",
        auth,
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(large_body))),
    )
    fields = [(f"X-Field-{n}", "v" * 100) for n in range(MAX_HEADERS - 2)]  # Host and auth
    with connect(server) as sock:
        reader = Reader(sock)
        sock.sendall(head("GET", "/healthz"))
        assert reader.response().status == 200

        sock.sendall(post + large_body)
        refused = reader.response()
        assert refused.status == 422  # the application read the whole body and judged it
        assert refused.problem()["code"] == "validation_error"

        # Pipelined: a large POST and two GETs (one with as many fields as allowed) at once.
        sock.sendall(post + large_body + head("GET", "/healthz") + head("GET", "/healthz", *fields))
        assert [reader.response().status for _ in range(3)] == [422, 200, 200]

        # A chunked body in small chunks, with a trailer field.
        chunked = head(
            "POST",
            "/v1/communities",
            auth,
            ("Content-Type", "application/json"),
            ("Transfer-Encoding", "chunked"),
        )
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in [b"{"] * 1 + [b" "] * 500)
        sock.sendall(chunked + chunks + b"1\r\n}\r\n0\r\nX-Trailer: yes\r\n\r\n")
        refused = reader.response()
        assert refused.status == 422
        assert refused.problem()["code"] == "validation_error"

        sock.sendall(head("GET", "/v1/communities", auth))
        assert reader.response().status == 200


# --- header size and count -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("earlier_requests", [0, 1])
def test_a_head_over_the_size_limit_is_answered_431_and_closed(
    server: LiveServer, earlier_requests: int
) -> None:
    with connect(server) as sock:
        reader = Reader(sock)
        for _ in range(earlier_requests):  # the limit holds for every request of a connection
            sock.sendall(head("GET", "/healthz"))
            assert reader.response().status == 200
        sock.sendall(head("GET", "/healthz", ("X-Large", "v" * MAX_HEADER_BYTES)))
        answer = reader.response()
        assert answer.status == 431
        assert answer.problem()["code"] == "headers_too_large"
        assert reader.closed()


ENDLESS_FIELD_AFTER = {
    "head": b"GET /healthz HTTP/1.1\r\nHost: test\r\n",
    "trailer": b"POST /v1/communities HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n",
}


@pytest.mark.slow
@pytest.mark.parametrize("section", sorted(ENDLESS_FIELD_AFTER))
def test_an_endless_header_field_is_cut_off_before_it_is_all_received(
    server: LiveServer, section: str
) -> None:
    """The server stops reading an unfinished header (or trailer) field once it passes the
    limit, rather than buffering whatever a client sends: 16 MiB cannot all be sent."""
    total = 16 * 1024 * 1024
    piece = b"X-Endless: " + b"v" * 65536
    sent = 0
    with connect(server) as sock:
        sock.sendall(ENDLESS_FIELD_AFTER[section])
        try:
            while sent < total:
                sent += sock.send(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass
    assert sent < total


@pytest.mark.slow
def test_more_header_fields_than_allowed_are_answered_431_and_closed(server: LiveServer) -> None:
    fields = [(f"X-Field-{n}", "v") for n in range(MAX_HEADERS)]  # with Host, one too many
    with connect(server) as sock:
        reader = Reader(sock)
        sock.sendall(head("GET", "/healthz", *fields[:-1]))
        assert reader.response().status == 200
        sock.sendall(head("GET", "/healthz", *fields))
        answer = reader.response()
        assert answer.status == 431
        assert answer.problem()["code"] == "headers_too_large"
        assert reader.closed()


# --- header and body time ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_head_sent_too_slowly_is_answered_408_and_closed(server: LiveServer) -> None:
    with connect(server) as sock:
        reader = Reader(sock)
        trickle_until_answered(sock, b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: ")
        answer = reader.response()
        assert answer.status == 408
        assert answer.problem()["code"] == "request_timeout"
        assert reader.closed()


@pytest.mark.slow
def test_a_connection_that_sends_nothing_is_closed(server: LiveServer) -> None:
    with connect(server) as sock:
        assert Reader(sock).closed()


@pytest.mark.slow
def test_a_body_sent_too_slowly_is_answered_408_and_closed(server: LiveServer) -> None:
    start = head(
        "POST",
        "/v1/communities",
        ("Authorization", f"Bearer {server.admin_token}"),
        ("Content-Type", "application/json"),
        ("Content-Length", "100000"),
    )
    with connect(server) as sock:
        reader = Reader(sock)
        trickle_until_answered(sock, start + b'{"id": "')
        answer = reader.response()
        assert answer.status == 408
        assert answer.problem()["code"] == "request_timeout"
        assert reader.closed()
