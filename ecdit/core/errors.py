"""Errors that are not bad input: raised by the systems, caught by name in the CLI (which must not
import JAX to catch them, so they live in the core)."""


class TrainingDiverged(RuntimeError):
    """A training step produced a non-finite loss or gradient norm. The run stopped before saving
    anything past the last good step: `step` is the first bad step, `quantity` the metric that went
    non-finite ("loss" or "grad_norm"), `checkpoint_step` the newest step on disk (None when none
    was written)."""

    def __init__(self, message: str, step: int, quantity: str, checkpoint_step: int | None):
        super().__init__(message)
        self.step, self.quantity, self.checkpoint_step = step, quantity, checkpoint_step


class TrainingStopped(RuntimeError):
    """A training run stopped on a signal (SIGINT, SIGTERM, or under several processes JAX's
    preemption notice) after finishing a step. `step` is the step it stopped at, `signal` the
    signal's name ("SIGINT", "SIGTERM", "preemption notice"), `status` the conventional exit status
    (128 + the signal's number: 130, 143), `saved` whether that step is committed on disk (False
    only for a run without a run folder)."""

    def __init__(self, message: str, step: int, signal: str, status: int, saved: bool):
        super().__init__(message)
        self.step, self.signal, self.status, self.saved = step, signal, status, saved
