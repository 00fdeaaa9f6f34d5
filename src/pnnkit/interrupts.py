"""Hold Ctrl-C over a few statements that must not be cut in half (writing one device call into its log)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class InterruptGate:
    """What :func:`interrupt_gate` yields: Ctrl-C passes while the gate is open and waits once it is closed."""

    def __init__(self) -> None:
        self.closed = False
        self.pending: list[int] = []

    def close(self) -> None:
        """From now until the gate's block ends, Ctrl-C waits (it is delivered when the block ends)."""
        self.closed = True


@contextmanager
def interrupt_gate() -> Iterator[InterruptGate]:
    """Own SIGINT (Ctrl-C) for a block that starts open and may be closed part-way with ``gate.close()``.

    While open, Ctrl-C goes straight to the handler that was in place (a ``KeyboardInterrupt`` by default), so a
    long device call can still be stopped. Once closed, it waits until the block has finished and is then
    delivered to that handler. Installed *before* the device call, the handler is already in place when the
    reading comes back: no signal can slip in between the return and the start of the deferral. Only the main
    thread can install signal handlers; elsewhere (and when SIGINT is ignored or handled outside Python) the gate
    does nothing and Ctrl-C behaves as it would without it.
    """
    gate = InterruptGate()
    if threading.current_thread() is not threading.main_thread():
        yield gate
        return
    try:
        previous = signal.getsignal(signal.SIGINT)
    except ValueError:  # no signal support in this interpreter
        yield gate
        return
    if not callable(previous):  # SIG_IGN / SIG_DFL / set outside Python: leave it alone
        yield gate
        return

    def handler(signum: int, frame: Any) -> None:
        if gate.closed:
            gate.pending.append(signum)
        else:
            previous(signum, frame)

    try:
        signal.signal(signal.SIGINT, handler)
    except ValueError:  # e.g. the main thread of a sub-interpreter: no handlers can be set here
        yield gate
        return
    try:
        yield gate
    finally:
        signal.signal(signal.SIGINT, previous)
        if gate.pending:
            signal.raise_signal(signal.SIGINT)  # the previous handler runs now (KeyboardInterrupt by default)

