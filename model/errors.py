"""The small exception tree shared by `model/` and `hpo/`.

`UsageError` and its subclasses are user mistakes: the CLI prints their message
as one line on stderr and exits 2. Everything else is a bug or a runtime fault.
"""

from __future__ import annotations


class UsageError(Exception):
    """A user mistake (bad input, config, data or storage); message names the fix."""


class ConfigError(UsageError):
    """A TrainConfig key, type or value is wrong."""


class DataError(UsageError):
    """A data set is missing, incomplete or malformed."""


class CheckpointError(UsageError):
    """A checkpoint is missing, truncated or does not fit the model."""


DIVERGED = "training diverged"  # how a DivergedError's message (a trial's fail_reason) starts


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite; the run cannot go on."""

    def __init__(self, epoch: int, loss: float) -> None:  # epoch: 1-based, as the console counts
        super().__init__(f"{DIVERGED} at epoch {epoch}: loss is {loss}")
        self.epoch = epoch
        self.loss = loss
