"""Errors of the training lifecycle, importable without torch (the CLI and app catch them)."""


class TrainingFailed(RuntimeError):
    """Training stopped for a reason the user must act on (NaN loss, out of memory, ...)."""


class Interrupted(BaseException):
    """Raised in the trainer's main thread by SIGTERM: stop now, keep the last checkpoint."""
