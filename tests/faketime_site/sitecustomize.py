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
