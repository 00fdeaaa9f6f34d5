"""Hold Ctrl-C over a few statements that must not be cut in half (writing one device call into its log)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def defer_interrupts() -> Iterator[None]:
    """Delay SIGINT (Ctrl-C) until the block has finished, then deliver it to the handler that was in place.

    Used between a device's reading coming back and its last row being written to the measurement log, so an
    interrupted run never leaves a call half-logged. Only the main thread can install signal handlers; elsewhere
    (and when SIGINT is ignored or handled outside Python) the block runs unprotected, as before.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        previous = signal.getsignal(signal.SIGINT)
    except ValueError:  # no signal support in this interpreter
        yield
        return
    if not callable(previous):  # SIG_IGN / SIG_DFL / set outside Python: leave it alone
        yield
        return
    pending: list[int] = []
    try:
        signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    except ValueError:  # e.g. the main thread of a sub-interpreter: no handlers can be set here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pending:
            signal.raise_signal(signal.SIGINT)  # the previous handler runs now (KeyboardInterrupt by default)
