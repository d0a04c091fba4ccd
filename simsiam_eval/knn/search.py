"""Candidate neighbour search: FAISS exact inner product (GPU when faiss-gpu and a GPU are there; sharded
banks; the GPU k limit) or chunked torch matmuls. Both return float32 similarities, best first; their
last bits differ, which ``certify.py`` makes harmless. Memory stays bounded: queries and the bank are
processed in blocks, never a full N_val x N_train matrix.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from simsiam_eval.errors import UserError
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


class TorchSearch:
    """Top-m inner products by blocked matmuls (GPU if the bank lives there); no k limit."""

    name = "torch"
    max_k = None

    def __init__(self, bank: torch.Tensor, device: torch.device | None = None) -> None:
        self.device = device or torch.device("cpu")
        self.bank = bank.to(self.device)

    def search(self, queries: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 similarities and indices of the m best rows per query, best first (on the CPU)."""
        n = len(self.bank)
        shard = min(n, max(m, BLOCK_ELEMENTS // 64))
        rows = max(1, BLOCK_ELEMENTS // shard)
        out_sims, out_idx = [], []
        for start in range(0, len(queries), rows):
            q = queries[start:start + rows].to(self.device)
            best_sims = best_idx = None
            for s0 in range(0, n, shard):
                sims = q @ self.bank[s0:s0 + shard].T
                top = sims.topk(min(m, sims.shape[1]), dim=1)
                sims, idx = top.values, top.indices + s0
                if best_sims is not None:
                    sims, idx = torch.cat([best_sims, sims], 1), torch.cat([best_idx, idx], 1)
                    keep = sims.topk(min(m, sims.shape[1]), dim=1).indices
                    sims, idx = sims.gather(1, keep), idx.gather(1, keep)
                best_sims, best_idx = sims, idx
            out_sims.append(best_sims.cpu())
            out_idx.append(best_idx.cpu())
        return torch.cat(out_sims), torch.cat(out_idx)


class FaissSearch:
    """Exact inner-product search with FAISS flat indexes, one per bank shard (GPU when possible)."""

    name = "faiss"

    def __init__(self, bank: torch.Tensor, use_gpu: bool | None = None, shard_rows: int | None = None) -> None:
        import faiss

        self.faiss = faiss
        use_gpu = _faiss_gpu_usable() if use_gpu is None else use_gpu
        self.name = "faiss-gpu" if use_gpu else "faiss-cpu"
        self.max_k = FAISS_GPU_MAX_K if use_gpu else None
        self.resources = faiss.StandardGpuResources() if use_gpu else None
        shard_rows = shard_rows or len(bank)
        self.shards = []
        array = bank.contiguous().numpy()
        for start in range(0, len(array), shard_rows):
            index = faiss.IndexFlatIP(array.shape[1])
            if use_gpu:
                index = faiss.index_cpu_to_gpu(self.resources, torch.cuda.current_device(), index)
            index.add(array[start:start + shard_rows])
            self.shards.append((start, index))

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
        best_sims = best_idx = None
        for start, index in self.shards:
            with self._blas_blocks():
                sims, idx = index.search(q, min(m, index.ntotal))
            sims, idx = torch.from_numpy(sims), torch.from_numpy(idx) + start
            if best_sims is not None:
                sims, idx = torch.cat([best_sims, sims], 1), torch.cat([best_idx, idx], 1)
                keep = sims.topk(min(m, sims.shape[1]), dim=1).indices
                sims, idx = sims.gather(1, keep), idx.gather(1, keep)
            best_sims, best_idx = sims, idx
        return best_sims, best_idx


def make_search(bank: torch.Tensor, backend: str = "auto", device: torch.device | None = None,
                shard_rows: int | None = None) -> TorchSearch | FaissSearch:
    """A candidate-search backend over the L2-normalised bank: 'auto' prefers FAISS."""
    if backend not in BACKENDS:
        raise UserError(f"unknown kNN backend '{backend}' (choose from {', '.join(BACKENDS)})")
    if backend == "faiss" or (backend == "auto" and faiss_available()):
        if not faiss_available():
            raise UserError("kNN backend 'faiss' requested but faiss is not installed (pip install faiss-cpu)")
        use_gpu = None if device is None or device.type == "cuda" else False
        return FaissSearch(bank, use_gpu=use_gpu, shard_rows=shard_rows)
    return TorchSearch(bank, device)
