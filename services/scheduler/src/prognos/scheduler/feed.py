"""Waking the watchers of the work order feed when a change commits."""

from __future__ import annotations

import asyncio


class ChangeNotifier:
    """Tells every waiting ``WatchWorkOrders`` stream that the feed may have grown.

    A waiter takes the current ``waiter()`` event *before* it reads the feed, then waits on
    it: a change committed between its read and its wait has set that event already, so no
    change is slept through. ``notify`` is called after commits in this process and for
    work order events another replica published on NATS.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.closed = False

    def waiter(self) -> asyncio.Event:
        return self._event

    def notify(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    def close(self) -> None:
        """End every watch (the server is shutting down)."""
        self.closed = True
        self.notify()
