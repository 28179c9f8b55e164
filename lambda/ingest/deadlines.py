"""The function's own deadline (a ``time.monotonic()`` value), acted on where a wait could outlast it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def call_at(deadline: float | None, action: Callable[[], object]) -> threading.Timer | None:
    """Call ``action`` in a thread of its own at ``deadline`` (at once if it passed); None without one.
    ``cancel()`` the timer once the wait it guards is over."""
    if deadline is None:
        return None
    timer = threading.Timer(max(deadline - time.monotonic(), 0), action)
    timer.daemon = True
    timer.start()
    return timer
