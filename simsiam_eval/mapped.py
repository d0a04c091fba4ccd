"""Tensors memory-mapped from a file, read without growing the process's resident memory.

A tensor memory-mapped from a file (a feature cache entry read by ``torch.load(mmap=True)``, an
``np.memmap``) costs no memory until it is read; every page read then stays in the process's resident
set (RSS) until the kernel needs it back, and a random row costs more than its own bytes: the kernel
maps whole page-cache folios around each fault (here ~1.5 MB per 4 KB row of a 5 GB cache file).
:class:`MappedTensor` reads such a tensor two ways that keep RSS flat:

- ``rows(indices)`` gathers rows with ``pread`` from the file behind the mapping (the page cache
  serves them; nothing is mapped into the process);
- ``release()`` tells the kernel (``madvise`` ``MADV_DONTNEED``) that pages read through the mapping
  (sequential blocks) are not needed: they leave the RSS and stay in the page cache.

Only file-backed memory is ever advised (on anonymous memory that call would discard data); an
ordinary tensor, or any system but Linux, is indexed as usual and never advised.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import sys
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class _Mapping:
    start: int
    end: int
    offset: int  # file offset of ``start``
    path: str


def _file_mapping(address: int) -> _Mapping | None:
    """The file-backed mapping that holds ``address``, from /proc/self/maps, or None."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                start, end = (int(bound, 16) for bound in fields[0].split("-"))
                if start <= address < end:
                    path = fields[5].strip() if len(fields) > 5 else ""
                    return _Mapping(start, end, int(fields[2], 16), path) if path.startswith("/") else None
    except OSError:
        return None
    return None


class MappedTensor:
    """``tensor`` (N, ...) read by rows and blocks; if it is mapped from a file, without keeping its pages.

    The tensor must be used read-only: a private mapping's written pages would revert to the file."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor
        self.span: tuple[int, int] | None = None
        self.file_offset: int | None = None
        self.path: str | None = None
        if not sys.platform.startswith("linux") or tensor.device.type != "cpu" or tensor.numel() == 0:
            return
        storage = tensor.untyped_storage()
        first, last = storage.data_ptr(), storage.data_ptr() + storage.nbytes()
        mapping = _file_mapping(first)
        if mapping is None:
            return
        page = mmap.PAGESIZE
        start = -(-max(first, mapping.start) // page) * page  # whole pages inside the storage and the mapping
        end = min(last, mapping.end) // page * page
        if end > start:
            self.span = (start, end - start)
        data = tensor.data_ptr()
        if (tensor.is_contiguous() and data + tensor.numel() * tensor.element_size() <= mapping.end
                and not mapping.path.endswith("(deleted)") and os.path.isfile(mapping.path)):
            self.path, self.file_offset = mapping.path, mapping.offset + data - mapping.start

    @property
    def mapped(self) -> bool:
        return self.span is not None

    def rows(self, indices: torch.Tensor) -> torch.Tensor:
        """``tensor[indices]`` (indices into dim 0); read from the file with pread when mapped (through the
        mapping, then released, when the file cannot be opened by name)."""
        if self.file_offset is None:
            rows = self.tensor[indices]
            self.release()
            return rows
        out = torch.empty((len(indices), *self.tensor.shape[1:]), dtype=self.tensor.dtype)
        row_bytes = self.tensor[0].numel() * self.tensor.element_size()
        buffer = memoryview(out.view(torch.uint8).numpy()).cast("B")
        order = np.argsort(indices.numpy(), kind="stable")  # ascending file offsets
        offsets = (self.file_offset + indices.numpy()[order].astype(np.int64) * row_bytes).tolist()
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for position, offset in zip((order * row_bytes).tolist(), offsets):
                if os.preadv(fd, [buffer[position:position + row_bytes]], offset) != row_bytes:
                    raise OSError(f"{self.path}: short read at byte {offset}")
        finally:
            os.close(fd)
        return out

    def release(self) -> None:
        """Drop the tensor's pages from this process's resident set (the data stays readable)."""
        if self.span is None:
            return
        start, length = self.span
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(length), mmap.MADV_DONTNEED) != 0:
            self.span = None  # the kernel refused: stop trying, the data is unaffected
