"""GET and HEAD requests answered again when a database connection was lost under them (see
`protocoop.db.reconnect`): a read transaction cannot be resumed on a new connection, but a
request that changes nothing can be answered again from the start."""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from protocoop.db.reconnect import noting_lost_connections

log = logging.getLogger(__name__)


class ReplayLostReads:
    """Answer a GET or HEAD once more when its answer would be a 503 because a database
    connection was lost before anything of the answer was sent."""

    def __init__(self, app: ASGIApp, attempts: int = 2) -> None:
        self.app = app
        self.attempts = attempts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        received = _RecordedReceive(receive)
        for attempt in range(1, self.attempts + 1):
            if not await self._answer(
                scope, received.replay(), send, last=attempt == self.attempts
            ):
                return
            log.info(
                "%s %s answered again after a lost database connection",
                scope["method"],
                scope["path"],
            )

    async def _answer(self, scope: Scope, receive: Receive, send: Send, *, last: bool) -> bool:
        """Answer the request; True when the answer was held back to be given again."""
        held_back = False
        with noting_lost_connections() as lost:

            async def send_unless_lost(message: Message) -> None:
                nonlocal held_back
                if (
                    message["type"] == "http.response.start"
                    and message["status"] == 503
                    and lost.seen
                    and not last
                ):
                    held_back = True
                if not held_back:
                    await send(message)

            await self.app(scope, receive, send_unless_lost)
        return held_back


class _RecordedReceive:
    """The request's `receive`, keeping the body it delivered so that it can be delivered again."""

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.body: list[Message] = []

    def replay(self) -> Receive:
        """A `receive` for one attempt: the body received so far, then the client's."""
        given = 0

        async def receive() -> Message:
            nonlocal given
            if given < len(self.body):
                given += 1
                return self.body[given - 1]
            message = await self.receive()
            if message["type"] == "http.request":
                self.body.append(message)
                given += 1
            return message

        return receive
