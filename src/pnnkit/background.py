"""Run a function in a separate Python process while this one goes on (used for the digital baseline).

The child is *spawned* (a fresh interpreter: no copy of this process's threads, torch state or open devices), gets
its arguments and returns its result through a pipe, and runs torch with one intra-op thread, so that it uses one
spare core rather than competing for all of them. Its errors are raised again here by :meth:`BackgroundJob.result`;
a child that dies without answering (killed, out of memory) gives a one-line :class:`~pnnkit.errors.PnnkitError`.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable
from typing import Any

from .errors import PnnkitError


def _child(conn: Any, fn: Callable[..., Any], args: tuple[Any, ...], threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        conn.send(("ok", fn(*args)))
    except BaseException as e:  # noqa: BLE001 — every failure goes back to the parent, which raises it
        try:
            conn.send(("error", e))
        except Exception:  # the exception itself could not be sent (not picklable): its text can
            conn.send(("error", PnnkitError(f"{type(e).__name__}: {e}")))
    finally:
        conn.close()


class BackgroundJob:
    """``fn(*args)`` in a spawned process; :meth:`result` waits for it, :meth:`cancel` stops it.

    ``fn`` must be importable by name (a module-level function) and its arguments and result picklable; they travel
    between two pnnkit processes of the same installation only (nothing is read from disk).
    """

    def __init__(self, fn: Callable[..., Any], *args: Any, name: str = "pnnkit-background", threads: int = 1) -> None:
        ctx = mp.get_context("spawn")
        self.name = name
        self._conn, child_conn = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_child, args=(child_conn, fn, args, threads), name=name, daemon=True)
        self._proc.start()
        child_conn.close()  # only the child writes; EOF here then means the child is gone
        self._done = False

    def result(self) -> Any:
        """Wait for the child; its return value, or its exception raised here."""
        if self._done:
            raise PnnkitError(f"{self.name}: result() was already taken")
        try:
            status, value = self._conn.recv()
        except EOFError:
            self._proc.join()
            raise PnnkitError(f"{self.name}: the background process ended without a result "
                              f"(exit code {self._proc.exitcode})") from None
        finally:
            self._done = True
            self._conn.close()
        self._proc.join()
        if status == "error":
            raise value
        return value

    def cancel(self) -> None:
        """Stop the child if it is still running (nothing if its result was taken)."""
        if self._done:
            return
        self._done = True
        if self._proc.is_alive():
            self._proc.terminate()
        self._proc.join()
        self._conn.close()

    def running(self) -> bool:
        return self._proc.is_alive()
