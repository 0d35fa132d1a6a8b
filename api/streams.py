"""Long responses (logs --follow, deployment output, run) that cannot starve the server.

Each is async end to end (no thread of the shared pool waits on it), counted against its
user's `max_streams`, and ended at once when its client goes: the body iterator is closed (so
Docker's stream is closed) and the user's count drops, whichever way the response ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from api.spec import ApiError


class UserStreams:
    """How many streams each user holds open; one event loop uses it, so no lock."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: dict[str, int] = {}

    def take(self, user: str) -> Callable[[], None]:
        """Count one more stream of `user`, or refuse with a 429; returns what gives it back."""
        held = self.open.get(user, 0)
        if held >= self.limit:
            raise ApiError(429, "too_many_streams",
                           f"{user} has {held} streams open (logs --follow, deployment output, run), "
                           f"this server's max_streams; close one and try again")
        self.open[user] = held + 1
        given_back = False

        def give_back() -> None:
            nonlocal given_back
            if not given_back:
                given_back = True
                left = self.open.get(user, 1) - 1
                if left > 0:
                    self.open[user] = left
                else:
                    self.open.pop(user, None)

        return give_back

    def count(self, user: str) -> int:
        return self.open.get(user, 0)


class OpenStream(StreamingResponse):
    """A StreamingResponse that, however it ends (done, client gone, error), closes its body
    iterator at once and gives its user's stream back."""

    def __init__(self, content: AsyncIterator[str], give_back: Callable[[], None], media_type: str,
                 headers: dict[str, str] | None = None,
                 cleanup: Callable[[], Awaitable[None]] | None = None) -> None:
        super().__init__(content, media_type=media_type, headers=headers)
        self._content, self._give_back, self._cleanup = content, give_back, cleanup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._give_back()
            with anyio.CancelScope(shield=True):
                close = getattr(self._content, "aclose", None)
                try:
                    if close is not None:
                        await close()  # a generator left at a yield: closes Docker's stream now
                finally:
                    if self._cleanup is not None:
                        await self._cleanup()
