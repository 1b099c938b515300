"""Imported at start-up by every Python process the tests start (``tests/conftest.py`` puts this folder on
``PYTHONPATH``): under libfaketime 0.9.10 (Debian bookworm) with ``FAKETIME_DONT_FAKE_MONOTONIC=1`` -- how
CI runs the whole suite at other instants -- ``clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)`` fails
with EINVAL, and CPython 3.11's ``time.sleep`` uses exactly that: every ``time.sleep`` (the writer's
backoff, ``subprocess.wait(timeout=)``, retries) would raise ``OSError: [Errno 22]``. Sleep through
``select()`` instead, which libfaketime leaves alone. Nothing changes without libfaketime.
"""

import os

if "faketime" in os.environ.get("LD_PRELOAD", ""):
    import select
    import sys
    import time

    _sleep = time.sleep

    def _sleep_despite_libfaketime(seconds: float, _original=_sleep) -> None:  # type: ignore[no-untyped-def]
        try:
            _original(seconds)
        except OSError:
            select.select([], [], [], max(seconds, 0.0))

    time.sleep = _sleep_despite_libfaketime
    for _module in list(sys.modules.values()):  # modules that took `sleep = time.sleep` before (psycopg_pool)
        for _name, _value in list(vars(_module).items()) if hasattr(_module, "__dict__") else ():
            if _value is _sleep and _name != "_sleep":
                setattr(_module, _name, _sleep_despite_libfaketime)

    # With the monotonic clock faked too (no FAKETIME_DONT_FAKE_MONOTONIC), a timed wait on a lock never
    # times out: sem_clockwait gets a deadline from the faked clock that the kernel's never reaches. Every
    # timed wait of the threading module (Condition, so Event, Queue, psycopg_pool's waits) polls instead:
    # CPython 3.11's Condition.wait with the waiter kept registered (a notify is never lost) and the
    # blocking acquire replaced by short select() naps. callvault's own waits do the same (callvault.waits).
    if os.environ.get("FAKETIME_DONT_FAKE_MONOTONIC") != "1":
        import _thread
        import contextlib
        import threading

        def _polling_wait(self, timeout=None):  # type: ignore[no-untyped-def]
            if timeout is None:
                return _original_wait(self, None)
            if not self._is_owned():
                raise RuntimeError("cannot wait on un-acquired lock")
            waiter = _thread.allocate_lock()
            waiter.acquire()
            self._waiters.append(waiter)
            saved_state = self._release_save()
            gotit = False
            end = time.monotonic() + max(timeout, 0.0)
            try:
                while True:
                    gotit = waiter.acquire(False)
                    if gotit:
                        return True
                    left = end - time.monotonic()
                    if left <= 0:
                        return False
                    select.select([], [], [], min(left, 0.005))
            finally:
                self._acquire_restore(saved_state)
                if not gotit:
                    with contextlib.suppress(ValueError):  # a notify took it out already
                        self._waiters.remove(waiter)

        _original_wait = threading.Condition.wait
        threading.Condition.wait = _polling_wait  # type: ignore[method-assign]
