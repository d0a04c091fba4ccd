"""The one exception type for problems the user can fix (bad file, bad key, missing data), and what
reading a damaged file raises."""
import pickle
import struct

WORKER_PREFIX = "Caught UserError in DataLoader worker"


class UserError(Exception):
    """A user-facing problem: the CLI prints it as one line and exits non-zero."""


class NonFiniteLoss(Exception):
    """A training step's loss was NaN or Inf (on some process): on the CPU found before that step changed any
    weight, on a GPU up to a few steps later (simsiam_eval.distributed.loss_is_finite)."""

    def __init__(self, epoch: int, step: int) -> None:
        super().__init__(f"the loss is NaN or Inf at epoch {epoch}, step {step}")
        self.epoch, self.step = epoch, step


# What torch.load (zip and pre-1.6 formats) and pickle raise on empty, truncated or byte-flipped files
# (UnicodeDecodeError is a ValueError, KeyError and IndexError are LookupErrors). Not TypeError,
# AttributeError or NameError: from our own code (a wrong argument, a hook that fails) those are bugs.
UNREADABLE_FILE_ERRORS = (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, LookupError, struct.error,
                          AssertionError, MemoryError, OSError)


def one_line(exc: BaseException) -> str:
    """The message of a UserError, unwrapped from a DataLoader worker's traceback if needed."""
    text = str(exc).strip()
    if text.startswith(WORKER_PREFIX):
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split("UserError: ", 1)[-1]
    return text.splitlines()[0] if text else type(exc).__name__
