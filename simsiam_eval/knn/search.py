"""Candidate neighbour search: FAISS exact inner product (GPU when faiss-gpu and a GPU are there; the
GPU k limit) or chunked torch matmuls, over the bank's shards (``bank.py``). Both return float32
similarities, best first; their last bits differ, which ``certify.py`` makes harmless. Memory stays
bounded: queries and the bank are processed in blocks, never a full N_val x N_train matrix.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from simsiam_eval.errors import UserError
from simsiam_eval.knn.bank import FeatureBank, as_bank
from simsiam_eval.knn.defaults import BACKENDS

FAISS_GPU_MAX_K = 2048
BLOCK_ELEMENTS = 1 << 25  # similarity block = 32M floats (128 MB)
FAISS_QUERY_BLOCK = 4096  # queries per FAISS sgemm block (its default)


def faiss_available() -> bool:
    """Whether the ``faiss`` module (CPU or GPU build) can be imported."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _faiss_gpu_usable() -> bool:
    import faiss

    return torch.cuda.is_available() and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _merge_best(best: tuple[torch.Tensor, torch.Tensor] | None, sims: torch.Tensor, idx: torch.Tensor,
                m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The m best of an earlier (sims, idx) and new ones, best first."""
    if best is not None:
        sims, idx = torch.cat([best[0], sims], 1), torch.cat([best[1], idx], 1)
        keep = sims.topk(min(m, sims.shape[1]), dim=1).indices
        sims, idx = sims.gather(1, keep), idx.gather(1, keep)
    return sims, idx


class TorchSearch:
    """Top-m inner products by blocked matmuls (GPU if the device says so); no k limit."""

    name = "torch"
    max_k = None

    def __init__(self, bank: torch.Tensor | FeatureBank, device: torch.device | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        """``dtype``: of the matmuls (``reduced.py`` uses bfloat16 / float16); scores come back float32."""
        self.device = device or torch.device("cpu")
        self.bank, self.dtype = as_bank(bank), dtype
        # a bank held whole is moved and converted once, a larger one shard by shard at every search
        self._resident = [(0, next(self.bank.shards())[1].to(self.device, dtype))] if self.bank.resident else None

    def _shards(self) -> Iterator[tuple[int, torch.Tensor]]:
        if self._resident is not None:
            return iter(self._resident)
        return ((start, shard.to(self.device, self.dtype)) for start, shard in self.bank.shards())

    def search(self, queries: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 similarities and indices of the m best rows per query, best first (on the CPU)."""
        piece = max(m, BLOCK_ELEMENTS // 64)  # bank rows per matmul
        rows = max(1, BLOCK_ELEMENTS // min(piece, len(self.bank)))  # queries per matmul
        best: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(range(0, len(queries), rows))
        for start, shard in self._shards():
            for block, q0 in enumerate(range(0, len(queries), rows)):
                q = queries[q0:q0 + rows].to(self.device, self.dtype)
                for s0 in range(0, len(shard), piece):
                    sims = q @ shard[s0:s0 + piece].T
                    top = sims.topk(min(m, sims.shape[1]), dim=1)
                    best[block] = _merge_best(best[block], top.values.float(), top.indices + start + s0, m)
        return torch.cat([b[0] for b in best]).cpu(), torch.cat([b[1] for b in best]).cpu()


class FaissSearch:
    """Exact inner-product search with a FAISS flat index per bank shard (GPU when possible)."""

    name = "faiss"

    def __init__(self, bank: torch.Tensor | FeatureBank, use_gpu: bool | None = None,
                 shard_rows: int | None = None) -> None:
        import faiss

        self.faiss = faiss
        use_gpu = _faiss_gpu_usable() if use_gpu is None else use_gpu
        self.name = "faiss-gpu" if use_gpu else "faiss-cpu"
        self.max_k = FAISS_GPU_MAX_K if use_gpu else None
        self.resources = faiss.StandardGpuResources() if use_gpu else None
        self.bank = as_bank(bank)
        self.shard_rows = shard_rows

    def _indexes(self) -> Iterator[tuple[int, object]]:
        """(first row, flat index) of each shard (``shard_rows`` splits further), built as needed."""
        for start, shard in self.bank.shards():
            step = self.shard_rows or len(shard)
            for s0 in range(0, len(shard), step):
                array = shard[s0:s0 + step].contiguous().numpy()
                index = self.faiss.IndexFlatIP(array.shape[1])
                if self.resources is not None:
                    index = self.faiss.index_cpu_to_gpu(self.resources, torch.cuda.current_device(), index)
                index.add(array)
                yield start + s0, index

    @contextmanager
    def _blas_blocks(self):
        """FAISS's CPU BLAS blocks set to 4096 queries x 8192 rows (128 MB) for the search, then restored.

        Its defaults (4096 x 1024) make many small sgemm calls; 8192 rows was ~25% faster here.
        """
        cvar = self.faiss.cvar
        saved = cvar.distance_compute_blas_query_bs, cvar.distance_compute_blas_database_bs
        cvar.distance_compute_blas_query_bs = FAISS_QUERY_BLOCK
        cvar.distance_compute_blas_database_bs = BLOCK_ELEMENTS // FAISS_QUERY_BLOCK
        try:
            yield
        finally:
            cvar.distance_compute_blas_query_bs, cvar.distance_compute_blas_database_bs = saved

    def search(self, queries: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 similarities and indices of the m best rows per query, best first."""
        q = queries.contiguous().numpy()
        best = None
        for start, index in self._indexes():
            with self._blas_blocks():
                sims, idx = index.search(q, min(m, index.ntotal))
            best = _merge_best(best, torch.from_numpy(sims), torch.from_numpy(idx) + start, m)
        return best


def make_search(bank: torch.Tensor | FeatureBank, backend: str = "auto", device: torch.device | None = None,
                shard_rows: int | None = None) -> TorchSearch | FaissSearch:
    """A candidate-search backend over the bank (a FeatureBank, or L2-normalised rows): 'auto' prefers FAISS."""
    if backend not in BACKENDS:
        raise UserError(f"unknown kNN backend '{backend}' (choose from {', '.join(BACKENDS)})")
    if backend == "faiss" or (backend == "auto" and faiss_available()):
        if not faiss_available():
            raise UserError("kNN backend 'faiss' requested but faiss is not installed (pip install faiss-cpu)")
        use_gpu = None if device is None or device.type == "cuda" else False
        return FaissSearch(bank, use_gpu=use_gpu, shard_rows=shard_rows)
    return TorchSearch(bank, device)
