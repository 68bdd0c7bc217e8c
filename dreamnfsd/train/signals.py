"""Ctrl-C / SIGTERM handling: the first signal asks the loop to save and stop; a second one exits at once.

Exit codes follow the shell convention 128 + signal number: 130 after SIGINT (Ctrl-C), 143 after SIGTERM, both for
the clean stop (checkpoint saved) and for the immediate exit on a second signal.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from signal import _HANDLER  # typeshed's name for what signal.signal takes and returns

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


def exit_code(signal_name: str | None) -> int:
    return EXIT_CODES.get(signal_name or "SIGINT", 130)


class Interrupted(KeyboardInterrupt):
    """Raised by :class:`StopRequest` in ``immediate`` mode (a phase that cannot poll, such as export)."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


class StopRequest:
    """Installs SIGINT/SIGTERM handlers for the duration of a ``with`` block.

    The training loop polls :attr:`requested` once per step, so a signal never interrupts a checkpoint write. With
    ``immediate=True`` the first signal raises :class:`Interrupted` instead (for code that cannot poll).
    """

    def __init__(self, immediate: bool = False) -> None:
        self.requested: str | None = None
        self.immediate = immediate
        self._previous: dict[int, _HANDLER] = {}

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None:
            sys.stderr.write(f"\n{name} again: exiting now without saving.\n")
            sys.stderr.flush()
            os._exit(exit_code(name))
        self.requested = name
        if self.immediate:
            raise Interrupted(name)
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
