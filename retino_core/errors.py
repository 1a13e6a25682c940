"""Errors of the training lifecycle, importable without torch (the CLI and app catch them)."""


class TrainingFailed(RuntimeError):
    """Training stopped for a reason the user must act on (NaN loss, out of memory, ...)."""


class WeightsError(RuntimeError):
    """Pretrained or local weights that cannot be had or do not fit."""


class CheckpointError(ValueError):
    """A checkpoint that is missing or not one this project wrote."""


def refused_load(err: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in one line (torch's own text suggests
    loading the file unsafely, which is the wrong advice for a file nobody vouches for)."""
    if type(err).__name__ == "UnpicklingError":
        return "it holds Python objects, not only tensors: refused, since unpickling them could run code"
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {first}"


class Interrupted(BaseException):
    """Raised in the trainer's main thread by SIGTERM: stop now, keep the last checkpoint."""


class DataError(ValueError):
    """A dataset that cannot be used as given; the message says what and where."""


class ImageError(ValueError):
    """An image that cannot be decoded into an RGB fundus photograph."""


class ExportError(RuntimeError):
    """An export that cannot be made or does not match the app's model; the message says which."""


class TrackingError(RuntimeError):
    """An MLflow tracking server or store that cannot be reached or used; the message says which."""


class ClusterError(RuntimeError):
    """A job that cannot be submitted, followed or cancelled (no SLURM here, sbatch refused, ...)."""
