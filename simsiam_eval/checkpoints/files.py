"""Open a checkpoint file safely: torch files with ``weights_only=True``, pickles through a restricted
unpickler, safetensors as tensors; every failure is a one-line UserError naming the file."""
from __future__ import annotations

import json
import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch

from simsiam_eval.errors import UNREADABLE_FILE_ERRORS, UserError, one_line
from simsiam_eval.safe_pickle import RefusedPickle, safe_load

_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first object of a pre-1.6 (non-zip) torch.save file


def load_file(path: str | Path) -> Any:
    """The object stored in ``path`` (a torch checkpoint, a plain pickle or a safetensors file)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not a checkpoint file")
    size = path.stat().st_size
    if size == 0:
        raise UserError(f"{path}: empty file, not a checkpoint")
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":
        check_zip_records(path)
        return _torch_load(path)
    if _is_safetensors(head, size):
        return _safetensors_load(path)
    if head[:1] == b"\x80":
        obj = _pickle_load(path)
        return _torch_load(path) if obj == _TORCH_LEGACY_MAGIC else obj
    raise UserError(f"{path}: not a checkpoint (neither a torch file, a pickle nor safetensors)")


def _is_safetensors(head: bytes, size: int) -> bool:
    """An 8-byte little-endian header length that fits the file, then the JSON header."""
    if len(head) < 9:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return 0 < header_len <= size - 8 and head[8:9] == b"{"


# Modules whose presence in a checkpoint means it was crafted to run code: refused outright.
_HOSTILE_MODULES = {"os", "posix", "nt", "subprocess", "builtins", "__builtin__", "sys", "importlib", "runpy",
                    "shutil", "socket", "pty", "code", "ctypes", "marshal", "types", "webbrowser", "pickle",
                    "torch.serialization", "torch._C", "operator", "functools"}


def _is_hostile(name: str) -> bool:
    """A global such as ``posix.system``, whose module only a file crafted to run code names."""
    return name.rpartition(".")[0] in _HOSTILE_MODULES or name.split(".")[0] in _HOSTILE_MODULES


class Placeholder:
    """Stands in for a non-tensor object of a checkpoint (argparse.Namespace, an OmegaConf config...).

    Its constructor and ``__setstate__`` only store what they receive: nothing from the file runs.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<placeholder for {type(self).__qualname__}>"


def check_zip_records(path: Path) -> None:
    """Check the CRC-32 that a torch file's zip container stores per record (torch.load does not: a
    flipped bit inside a tensor loads silently); a truncated container is reported here too."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError) as exc:
        raise UserError(f"{path}: truncated or damaged torch file (its zip container is unreadable: "
                        f"{one_line(exc)})") from None
    if bad is not None:
        raise UserError(f"{path}: damaged: record {bad} fails its CRC-32 check (a flipped bit or a partial "
                        "overwrite); restore the file from a copy")


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            raise UserError(f"{path}: cannot read, truncated or not a checkpoint ({one_line(exc)})") from None
        refused = re.search(r"unsupported GLOBAL ([\w.]+)", str(exc))
        if refused and _is_hostile(refused.group(1)):
            raise UserError(f"{path}: refused to load: the file carries code ({refused.group(1)})") from None
    except UNREADABLE_FILE_ERRORS as exc:
        raise UserError(f"{path}: cannot read, truncated or not a checkpoint ({one_line(exc)})") from None
    return _torch_load_with_placeholders(path)


def _torch_load_with_placeholders(path: Path) -> Any:
    """weights_only=True again, with each non-allowed global (e.g. ``argparse.Namespace`` in DINO's and timm's
    checkpoints, OmegaConf configs in Lightning's) mapped to an inert :class:`Placeholder`."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except UNREADABLE_FILE_ERRORS as exc:
        raise UserError(f"{path}: refused to load: it holds Python objects other than tensors and containers "
                        f"({one_line(exc)})") from None
    hostile = sorted(name for name in names if _is_hostile(name))
    if hostile:
        raise UserError(f"{path}: refused to load: the file carries code ({', '.join(hostile)})")
    stubs = [(type(name.rpartition(".")[2], (Placeholder,), {"__qualname__": name}), name) for name in names]
    try:
        with torch.serialization.safe_globals(stubs):
            return torch.load(path, map_location="cpu", weights_only=True)
    except UNREADABLE_FILE_ERRORS as exc:
        raise UserError(f"{path}: cannot read, truncated or not a checkpoint ({one_line(exc)})") from None


def _pickle_load(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            return safe_load(f)
    except RefusedPickle as exc:
        raise UserError(f"{path}: refused to load a pickle that carries code: {exc}") from None
    except UNREADABLE_FILE_ERRORS as exc:
        raise UserError(f"{path}: cannot read, truncated or not a checkpoint ({one_line(exc)})") from None


def _safetensors_load(path: Path) -> Any:
    from safetensors import SafetensorError
    from safetensors.torch import load_file as load_safetensors

    try:
        return load_safetensors(str(path), device="cpu")
    except (SafetensorError, json.JSONDecodeError, OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read safetensors file, truncated or damaged ({one_line(exc)})") from None
