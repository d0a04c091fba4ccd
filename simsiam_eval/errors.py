"""The one exception type for problems the user can fix (bad file, bad key, missing data)."""

WORKER_PREFIX = "Caught UserError in DataLoader worker"


class UserError(Exception):
    """A user-facing problem: the CLI prints it as one line and exits non-zero."""


def one_line(exc: BaseException) -> str:
    """The message of a UserError, unwrapped from a DataLoader worker's traceback if needed."""
    text = str(exc).strip()
    if text.startswith(WORKER_PREFIX):
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split("UserError: ", 1)[-1]
    return text.splitlines()[0] if text else type(exc).__name__
