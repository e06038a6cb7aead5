"""Graceful interruption: Ctrl-C or SIGTERM ends training at the next step boundary, after a checkpoint."""

from __future__ import annotations

import signal
import sys
import threading


class StopRequest:
    """Context manager: while active, SIGINT/SIGTERM only set `requested`; the training loop checks
    it after each optimizer step, writes a checkpoint and returns. A second Ctrl-C aborts at once."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        print(f"\n{self.signal_name}: stopping after this step and writing a checkpoint "
              "(press Ctrl-C again to abort without one)", file=sys.stderr, flush=True)
