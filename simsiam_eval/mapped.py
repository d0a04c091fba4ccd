"""Pages of a memory-mapped tensor handed back to the page cache once read.

A tensor memory-mapped from a file (a feature cache entry read by ``torch.load(mmap=True)``, an
``np.memmap``) costs no memory until it is read; every page read stays in the process's resident set
(RSS) until the kernel needs it back. A pass over an ImageNet-size cache (1.28M x 2048 float16: 5.2 GB a
view) would grow RSS by the whole file. :class:`MappedPages` tells the kernel (``madvise``
``MADV_DONTNEED``) that the pages read so far are not needed: they leave the RSS, stay in the page cache,
and a later read maps them again. Only file-backed memory is ever advised (on anonymous memory that
call would discard data); anywhere else (not Linux, an ordinary tensor) it does nothing.
"""
from __future__ import annotations

import ctypes
import mmap
import sys

import torch


def _file_mapping(address: int) -> tuple[int, int] | None:
    """(start, end) of the file-backed mapping that holds ``address``, from /proc/self/maps, or None."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                start, end = (int(bound, 16) for bound in fields[0].split("-"))
                if start <= address < end:
                    path = fields[5].strip() if len(fields) > 5 else ""
                    return (start, end) if path.startswith("/") else None
    except OSError:
        return None
    return None


class MappedPages:
    """The memory under ``tensor`` if it is mapped from a file (else nothing), released on demand.

    The tensor must be used read-only: a private mapping's written pages would revert to the file."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.span: tuple[int, int] | None = None
        if not sys.platform.startswith("linux") or tensor.device.type != "cpu" or tensor.numel() == 0:
            return
        storage = tensor.untyped_storage()
        first, last = storage.data_ptr(), storage.data_ptr() + storage.nbytes()
        mapping = _file_mapping(first)
        if mapping is None:
            return
        page = mmap.PAGESIZE
        start = -(-max(first, mapping[0]) // page) * page  # whole pages inside both the storage and the mapping
        end = min(last, mapping[1]) // page * page
        if end > start:
            self.span = (start, end - start)

    @property
    def mapped(self) -> bool:
        return self.span is not None

    def release(self) -> None:
        """Drop the tensor's pages from this process's resident set (the data stays readable)."""
        if self.span is None:
            return
        start, length = self.span
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(length), mmap.MADV_DONTNEED) != 0:
            self.span = None  # the kernel refused: stop trying, the data is unaffected
