"""Waiting a while, on any clock: the library's sleeps and timed waits (the writer's flush age and
backoff, the worker's cycle, lock retries).

On a real clock these are ``time.sleep``, ``queue.get(timeout=)`` and ``Event.wait(timeout)``. Under
libfaketime (Debian's 0.9.10: the tests and CI run whole suites at other instants with it) two of them
break, in opposite configurations:

* with ``FAKETIME_DONT_FAKE_MONOTONIC=1``, ``clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)`` fails with
  EINVAL, and CPython 3.11's ``time.sleep`` uses it: every sleep would raise ``OSError``;
* with the monotonic clock faked too, a timed wait on a lock (``sem_clockwait`` with a deadline from the
  faked clock) never times out: a flush age, a poll interval would never come.

So: a sleep that fails goes through ``select()`` (a relative timeout libfaketime leaves alone), and where
the monotonic clock is faked, timed waits poll in short ``select()`` naps. Nothing changes on a real clock.
"""

from __future__ import annotations

import os
import queue
import select
import threading
import time
from typing import TypeVar

T = TypeVar("T")
NAP_S = 0.005  # a polling wait's step where timed waits cannot be trusted


def _faked_monotonic() -> bool:
    return "faketime" in os.environ.get("LD_PRELOAD", "") and os.environ.get("FAKETIME_DONT_FAKE_MONOTONIC") != "1"


FAKED_MONOTONIC = _faked_monotonic()


def sleep(seconds: float) -> None:
    """``time.sleep``, through ``select()`` when the C library's sleep refuses (libfaketime)."""
    try:
        time.sleep(seconds)
    except OSError:
        select.select([], [], [], max(seconds, 0.0))


def queue_get(q: queue.Queue[T], timeout: float) -> T:
    """``q.get(timeout=timeout)`` (raises ``queue.Empty`` when nothing came)."""
    if not FAKED_MONOTONIC:
        return q.get(timeout=timeout)
    end = time.monotonic() + timeout
    while True:
        try:
            return q.get_nowait()
        except queue.Empty:
            left = end - time.monotonic()
            if left <= 0:
                raise
            select.select([], [], [], min(left, NAP_S))


def event_wait(event: threading.Event, timeout: float) -> bool:
    """``event.wait(timeout)``: whether the event is set."""
    if not FAKED_MONOTONIC:
        return event.wait(timeout)
    end = time.monotonic() + timeout
    while not event.is_set():
        left = end - time.monotonic()
        if left <= 0:
            return False
        select.select([], [], [], min(left, NAP_S))
    return True
