"""User-facing errors: the CLI prints their message on one line and exits with status 1."""


class Lab6Error(Exception):
    """Base class for errors caused by the user's input, files or environment (not by a bug)."""


class LabelError(Lab6Error, ValueError):
    """A label set or label file is not valid."""


class DataError(Lab6Error):
    """A dataset folder, image or data file is missing or unreadable."""


class ConfigError(Lab6Error, ValueError):
    """A configuration value, profile or command-line option is not valid."""


class CheckpointError(Lab6Error):
    """A checkpoint or exported model is missing, corrupt or does not match."""


class TrainingError(Lab6Error):
    """Training went wrong in a way the user can act on (e.g. the loss diverged to NaN)."""


def first_line(e: BaseException) -> str:
    """'ErrorType: the first line of its message' (160 characters at most), for one-line error messages."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:160]}" if lines else type(e).__name__
