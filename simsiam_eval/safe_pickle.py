"""A restricted unpickler: plain containers and numpy arrays only; anything else is refused, never run."""
from __future__ import annotations

import pickle
from typing import Any, BinaryIO

_ALLOWED = {
    ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"), ("builtins", "set"),
    ("builtins", "frozenset"), ("builtins", "bytearray"), ("builtins", "slice"),
    ("collections", "OrderedDict"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}


class RefusedPickle(pickle.UnpicklingError):
    """The pickle names a global that is not a plain container or numpy array."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise RefusedPickle(f"refusing to load {module}.{name} (only numpy arrays and containers are allowed)")


def safe_load(file: BinaryIO, encoding: str = "latin1") -> Any:
    """Unpickle data made of dicts, lists, tuples, numbers, strings and numpy arrays."""
    return _RestrictedUnpickler(file, encoding=encoding).load()
