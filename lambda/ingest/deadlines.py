"""The function's own deadline (a ``time.monotonic()`` value), acted on where a wait could outlast it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar

T = TypeVar("T")


def call_at(deadline: float | None, action: Callable[[], object]) -> threading.Timer | None:
    """Call ``action`` in a thread of its own at ``deadline`` (at once if it passed); None without one.
    ``cancel()`` the timer once the wait it guards is over."""
    if deadline is None:
        return None
    timer = threading.Timer(max(deadline - time.monotonic(), 0), action)
    timer.daemon = True
    timer.start()
    return timer


def in_thread(call: Callable[[], T], name: str) -> Future[T]:
    """``call()`` in a daemon thread of its own, its result (or exception) in the future returned: a caller
    can stop waiting for it at a deadline, and a call that never returns holds no one up, not even the
    interpreter's exit (a ThreadPoolExecutor's worker would)."""
    future: Future[T] = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(call())
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


def awaited(work: Future[T], deadline: float | None, cut_off: Callable[[], BaseException]) -> T:
    """The result of ``work`` (going on in another thread), waited for until ``deadline`` at the most; then
    the exception ``cut_off()`` makes is raised, and the work's answer, should it come, is dropped."""
    timeout = None if deadline is None else max(deadline - time.monotonic(), 0)
    try:
        return work.result(timeout)
    except FutureTimeout:
        raise cut_off() from None


def bounded(call: Callable[[], T], deadline: float | None, cut_off: Callable[[], BaseException], name: str) -> T:
    """``call()``, waited for until ``deadline`` at the most (it goes on in a thread of its own, its answer
    dropped; ``cut_off()`` makes the exception raised); without a deadline, made here. For a request whose
    answer may stall: its client would wait for its read timeout (a minute, and again for each retry)."""
    if deadline is None:
        return call()
    return awaited(in_thread(call, name), deadline, cut_off)
