"""Stopping a run cleanly on SIGINT (Ctrl-C) or SIGTERM.

Python's default turns SIGINT into a `KeyboardInterrupt` raised wherever the main thread
happens to be — between two asynchronously dispatched steps, inside orbax, or while XLA still
runs computations that the interpreter then tears down (a segmentation fault at exit) — and
SIGTERM kills the process on the spot. Inside `graceful_stop` both only set a flag instead;
the training loop reads it after every step, finishes that step, writes a checkpoint, closes
orbax and returns, and ``rnnjax train`` exits with status 128 + the signal number (130 for
SIGINT, 143 for SIGTERM)::

    with graceful_stop() as stop:
        summary = train(config, out, stop=stop)
    if stop.signum is not None:
        ...  # interrupted: summary["step"] is the step of the last checkpoint

A second signal while the first is being handled exits at once (``os._exit``) without a
final checkpoint: checkpoints are atomic, so the run still resumes from the previous one.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """A flag set by a signal: call it (``stop()``) to know whether to stop.

    Attributes:
        signum: the number of the first signal received, or None.
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        """The signal's name ("SIGINT"), or "" when none was received."""
        return signal.Signals(self.signum).name if self.signum is not None else ""

    @property
    def exit_status(self) -> int:
        """128 + the signal number, the shell's convention for a process stopped by it."""
        return 128 + (self.signum or 0)


@contextmanager
def graceful_stop(signals: tuple[int, ...] = SIGNALS) -> Iterator[StopRequest]:
    """Turns ``signals`` into a `StopRequest` while the block runs; restores the handlers.

    Signals that are ignored when the block starts (SIGINT of a job started with ``&`` from
    a non-interactive shell, or under ``nohup``) stay ignored. Outside the main thread Python
    cannot install handlers: the request then never fires.
    """
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: object) -> None:
        del frame
        if stop.signum is not None:  # the second one: leave now (no buffered I/O here)
            name = signal.Signals(signum).name
            os.write(2, f"\n{name} again: exiting without a final checkpoint\n".encode())
            os._exit(128 + signum)
        stop.signum = signum

    previous = {}
    for signum in signals:
        if signal.getsignal(signum) is signal.SIG_IGN:
            continue
        previous[signum] = signal.signal(signum, handler)
    try:
        yield stop
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


__all__ = ["SIGNALS", "StopRequest", "graceful_stop"]
