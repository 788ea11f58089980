"""Errors that end a run with one `error:` line (the entry points catch them; nothing else does)."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name if it has none), for one-line errors."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class ConfigError(ValueError):
    """A model, training or evaluation setting that cannot work; the message names the key."""


class RunError(RuntimeError):
    """A run that must stop (its folder is in use, its metrics are damaged, its loss diverged); names the file or step."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit; the message names the file."""


class DatasetError(Exception):
    """Bad dataset or builder input; the message is one line naming the file/key and the expectation."""
