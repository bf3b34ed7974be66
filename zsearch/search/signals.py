"""Ctrl-C and SIGTERM during a search: stop after the current trial, not in the middle of it."""

from __future__ import annotations

import logging
import signal

log = logging.getLogger("zsearch")


class GracefulStop:
    """First SIGINT/SIGTERM: finish the current trial, write outputs, exit 0. Second: stop now."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stop requested: finishing the current trial (press Ctrl-C again to abort)")
