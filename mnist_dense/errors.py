"""The errors a user can act on: each is shown as one line, with no traceback."""


class PipelineError(Exception):
    """A problem with the user's data, params or environment."""


class KernelPathError(RuntimeError):
    """A kernel path asked for after TensorFlow loaded on another one."""


def first_line(error: BaseException, limit: int = 200) -> str:
    """An error's message as one line for a one-line report: its first line, cut at `limit`
    characters, or its type's name when it has no message."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__
