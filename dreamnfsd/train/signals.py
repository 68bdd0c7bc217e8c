"""Ctrl-C / SIGTERM handling: the first signal asks the loop to save and stop; a second one exits at once."""

from __future__ import annotations

import os
import signal
import sys
import threading


class StopRequest:
    """Installs SIGINT/SIGTERM handlers for the duration of a ``with`` block.

    The training loop polls :attr:`requested` once per step, so a signal never interrupts a checkpoint write.
    """

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None:
            sys.stderr.write(f"\n{name} again: exiting now without saving.\n")
            sys.stderr.flush()
            os._exit(130 if signum == signal.SIGINT else 143)
        self.requested = name
        sys.stderr.write(f"\n{name}: saving a checkpoint after this step (send it again to exit at once).\n")
        sys.stderr.flush()

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
