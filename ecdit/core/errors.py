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
