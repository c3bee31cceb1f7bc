"""Stopping a training run on a signal without losing work (docs/checkpoints.md, "Stopping,
preemption and recovery").

`StopSignals` is a context manager that `train.train(stop=...)` enters around its loop and final
save (the main thread only; elsewhere it does nothing). While it is active:

    one process        SIGINT (Ctrl-C) and SIGTERM (a scheduler, `timeout`, a preempted VM) set a
                       flag instead of ending the process; the loop (`train.train(stop=...)`) asks
                       `reached(step)` after every step, and once it is true saves that step
                       (an atomic commit, as every save) and raises TrainingStopped.
    several processes  SIGTERM is JAX's preemption notice: jax.distributed.initialize installs a
                       handler for it (the preemption sync manager's), which is left as it is;
                       SIGINT is turned into the same notice (the process sends itself SIGTERM).
                       `reached(step)` is JAX's preemption sync point
                       (`multihost_utils.reached_preemption_sync_point`): once any process has the
                       notice, every process learns the largest step any of them has reached and
                       stops one step later, so all save the same step.

A second signal once a stop is requested abandons it: one line on stderr, and the process ends
at once (os._exit, status 128 + the signal's number) as kill -9 would: the save in progress, if
any, never commits, and the last committed step stays exactly as it was. (Under several
processes a second SIGTERM changes nothing: JAX's notice is a flag.)
"""
from __future__ import annotations

import os
import signal
import sys
import threading

import jax
from jax.experimental import multihost_utils

NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}
NOTICE = "preemption notice"                                     # several processes, no signal of our own


def exit_status(signum: int) -> int:
    """The shell's convention for a process ended by a signal: 128 + its number (130, 143)."""
    return 128 + int(signum)


class StopSignals:
    """SIGINT and SIGTERM request a stop at the end of the current step (see the module docstring).

    `signum` is the first signal this process received (None: none); `committed` is the newest
    committed step as (step, directory), kept up to date by the training loop so that an abandoned
    stop can say what is kept; `write` prints the abandon line (default: to stderr)."""

    def __init__(self, *, write=None):
        self.signum: int | None = None
        self.committed: tuple[int, str] | None = None
        self.several = False
        self._write = write or (lambda line: (sys.stderr.write(line + "\n"), sys.stderr.flush()))
        self._previous: dict = {}

    def __enter__(self) -> "StopSignals":
        self.signum, self.committed = None, None
        self.several = jax.process_count() > 1                   # then `reached` is JAX's sync point
        if threading.current_thread() is not threading.main_thread():
            return self                                          # signals reach the main thread only
        # Several processes: SIGTERM stays with JAX's preemption notifier (a handler set here would
        # replace it and no process would learn of the notice).
        for signum in (signal.SIGINT,) if self.several else (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            self._abandon(signum)
        self.signum = signum
        if self.several:                                         # SIGINT becomes JAX's preemption notice
            os.kill(os.getpid(), signal.SIGTERM)

    def _abandon(self, signum) -> None:
        """A second signal: say what is kept, then end at once (no cleanup, as kill -9)."""
        if self.committed is None:
            kept = "no step was committed"
        else:
            step, directory = self.committed
            kept = f"the last committed step, {step}, is intact in {directory}: resume with the same command"
        try:
            self._write(f"ecdit: {NAMES.get(signum, signum)} again while stopping: ended at once, without "
                        f"saving; {kept}")
        finally:
            os._exit(exit_status(signum))

    @property
    def requested(self) -> bool:
        """Whether this process received a signal (several processes: of its own)."""
        return self.signum is not None

    def reached(self, step: int) -> bool:
        """Whether to stop after `step` (the number of steps done). Several processes: JAX's
        preemption sync point, to be asked at every step by every process with the same steps."""
        if self.several:
            return bool(multihost_utils.reached_preemption_sync_point(int(step)))
        return self.signum is not None

    @property
    def name(self) -> str:
        """"SIGINT", "SIGTERM", or (several processes, no signal received here) "preemption notice"."""
        if self.signum is None:
            return NOTICE
        return NAMES.get(self.signum, str(self.signum))

    @property
    def status(self) -> int:
        """The exit status: 130 for SIGINT, 143 for SIGTERM and for another process's notice."""
        return exit_status(self.signum if self.signum is not None else signal.SIGTERM)
