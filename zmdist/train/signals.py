"""Stop requests by signal: note SIGTERM/SIGUSR1/SIGUSR2, let every rank agree, chain to the old handler.

A signal only sets a flag; the engine asks ``agreed_stop`` at the end of each step (an all-reduce of the
flag, so every rank stops at the same step), checkpoints, then calls ``chain`` so that a handler installed
before (submitit's, which requeues the job) runs after the checkpoint is on disk.
"""

from __future__ import annotations

import logging
import signal
from typing import Any, Callable

import torch

from zmdist.backends.base import Backend

log = logging.getLogger("zmdist")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class SignalGuard:
    """Context manager: installs the handlers on enter, restores the previous ones on exit."""

    def __init__(self) -> None:
        self.received = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "SignalGuard":
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._note)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _note(self, signum: int, _frame: Any) -> None:
        log.warning("received %s: checkpointing at the end of this step", signal.Signals(signum).name)
        self.received = signum

    def agreed_stop(self, backend: Backend) -> bool:
        """True on every rank when any rank received a stop signal."""
        flag = torch.tensor([float(self.received)], device=backend.device)
        return backend.all_reduce(flag, "max").item() > 0

    def chain(self) -> None:
        """Call the handler that was installed before ours for the received signal, if it was a function."""
        previous: Callable | Any = self._previous.get(self.received)
        if callable(previous):
            previous(self.received, None)
