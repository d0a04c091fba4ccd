"""Weighted kNN classification on L2-normalised features (InstDisc / DINO protocol).

class score = sum over the k nearest training features (cosine similarity) of exp(sim / T) for that
neighbour's class (or 1 per neighbour in ``uniform`` mode). Several k in one pass; top-1 and top-5
(top-5 looks at the min(5, k) best classes).

Search = candidates from a fast backend (FAISS exact inner product, on the GPU when faiss-gpu and a
GPU are there; or chunked torch matmuls), then an exact float64 re-ranking of the candidates with
ties broken by the lower training index. A query whose candidate list could have been cut inside a
group of (float32-)equal similarities is searched again with more candidates, so every backend
returns the same neighbours and the same predictions. Memory stays bounded: queries and the bank are
processed in blocks, never a full N_val x N_train matrix.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from simsiam_eval.errors import UserError

PRESETS = {
    "instdisc": {"k": [200], "temperature": 0.1},       # InstDisc, MoCo colab, lightly, VISSL
    "simsiam-cifar": {"k": [200], "temperature": 0.2},  # official SimSiam CIFAR monitor (issue 10)
    "dino": {"k": [20, 10, 100, 200], "temperature": 0.07},  # DINO eval_knn; 20-NN first = headline
}
WEIGHTINGS = ("exp", "uniform")
BACKENDS = ("auto", "faiss", "torch")
FAISS_GPU_MAX_K = 2048
BLOCK_ELEMENTS = 1 << 25  # similarity block = 32M floats (128 MB)
REFINE_ELEMENTS = 1 << 24  # float64 re-ranking block = 16M values (128 MB)


@dataclass
class KnnResult:
    """Per-k metrics (percent), the class ranking per query and k, and how the search ran."""

    metrics: dict[int, dict[str, float]]
    rankings: dict[int, torch.Tensor]
    backend: str
    seconds: dict[str, float] = field(default_factory=dict)


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=1)


# ---------------------------------------------------------------- candidate search backends
def faiss_available() -> bool:
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

    def search(self, queries: torch.Tensor, m: int) -> torch.Tensor:
        n = len(self.bank)
        shard = min(n, max(m, BLOCK_ELEMENTS // 64))
        rows = max(1, BLOCK_ELEMENTS // shard)
        out = []
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
            out.append(best_idx.cpu())
        return torch.cat(out)


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

    def search(self, queries: torch.Tensor, m: int) -> torch.Tensor:
        q = queries.contiguous().numpy()
        best_sims = best_idx = None
        for start, index in self.shards:
            sims, idx = index.search(q, min(m, index.ntotal))
            sims, idx = torch.from_numpy(sims), torch.from_numpy(idx) + start
            if best_sims is not None:
                sims, idx = torch.cat([best_sims, sims], 1), torch.cat([best_idx, idx], 1)
                keep = sims.topk(min(m, sims.shape[1]), dim=1).indices
                sims, idx = sims.gather(1, keep), idx.gather(1, keep)
            best_sims, best_idx = sims, idx
        return best_idx


def make_search(bank: torch.Tensor, backend: str = "auto", device: torch.device | None = None,
                shard_rows: int | None = None):
    """A candidate-search backend over the L2-normalised bank: 'auto' prefers FAISS."""
    if backend not in BACKENDS:
        raise UserError(f"unknown kNN backend '{backend}' (choose from {', '.join(BACKENDS)})")
    if backend == "faiss" or (backend == "auto" and faiss_available()):
        if not faiss_available():
            raise UserError("kNN backend 'faiss' requested but faiss is not installed (pip install faiss-cpu)")
        use_gpu = None if device is None or device.type == "cuda" else False
        return FaissSearch(bank, use_gpu=use_gpu, shard_rows=shard_rows)
    return TorchSearch(bank, device)


# ---------------------------------------------------------------- exact re-ranking
def exact_similarities(queries: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """float64 dot products of ``queries`` (Q, D) with ``rows`` (Q, M, D), element-wise then summed.

    Each value depends only on its two vectors (not on its position), so every backend's candidate
    list yields bit-identical similarities.
    """
    return (queries.double().unsqueeze(1) * rows.double()).sum(-1)


def _rank(candidates: torch.Tensor, sims: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort candidates by similarity (descending), ties by training index (ascending); keep k."""
    by_index = candidates.sort(dim=1).indices
    candidates, sims = candidates.gather(1, by_index), sims.gather(1, by_index)
    order = sims.sort(dim=1, descending=True, stable=True).indices[:, :k]
    return sims.gather(1, order), candidates.gather(1, order)


def search_tolerance(dim: int) -> float:
    """How far a float32 inner product of unit vectors may be from the exact value (generous)."""
    return 16 * math.sqrt(dim) * 2.0 ** -24


def nearest_neighbors(bank: torch.Tensor, queries: torch.Tensor, k: int, search=None,
                      backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest bank rows of each query: (similarities float64, indices), best first.

    ``bank`` and ``queries`` must be L2-normalised float32 (CPU). Candidates come from ``search``
    (built from ``backend`` if not given); the result does not depend on the backend.
    """
    n, dim = bank.shape
    k = min(k, n)
    search = search or make_search(bank, backend)
    tol = search_tolerance(dim)
    out_sims = torch.empty(len(queries), k, dtype=torch.float64)
    out_idx = torch.empty(len(queries), k, dtype=torch.int64)
    pending = torch.arange(len(queries))
    m = min(n, k + max(16, k // 4))
    while len(pending):
        if search.max_k is not None and m > search.max_k:
            search = TorchSearch(bank)  # e.g. the FAISS GPU k limit: carry on without a limit
        candidates = search.search(queries[pending], m)
        unresolved = []
        rows = max(1, REFINE_ELEMENTS // (m * dim))
        for start in range(0, len(pending), rows):
            block = pending[start:start + rows]
            cand = candidates[start:start + rows]
            sims = exact_similarities(queries[block], bank[cand])
            top_sims, top_idx = _rank(cand, sims, k)
            out_sims[block], out_idx[block] = top_sims, top_idx
            if m < n:  # could a row outside the candidates tie with or beat the k-th neighbour?
                # Backends return candidates best first, so the last one has the lowest search score,
                # an upper bound (+ tol) on every other row's search score.
                unsafe = sims[:, -1] + 2 * tol >= top_sims[:, -1]
                unresolved.append(block[unsafe])
        pending = torch.cat(unresolved) if unresolved else pending[:0]
        m = min(n, 4 * m)
    return out_sims, out_idx


# ---------------------------------------------------------------- voting and metrics
def knn_vote(sims: torch.Tensor, labels: torch.Tensor, num_classes: int, temperature: float,
             weighting: str = "exp") -> torch.Tensor:
    """Class scores (Q, C) float64 from neighbour similarities and labels (Q, k), best neighbour first."""
    if weighting == "exp":
        weights = (sims.double() / temperature).exp()
    elif weighting == "uniform":
        weights = torch.ones_like(sims, dtype=torch.float64)
    else:
        raise UserError(f"unknown kNN weighting '{weighting}' (choose from {', '.join(WEIGHTINGS)})")
    scores = torch.zeros(len(sims), num_classes, dtype=torch.float64)
    return scores.scatter_add_(1, labels.long(), weights)


def rank_classes(scores: torch.Tensor) -> torch.Tensor:
    """Classes by descending score; equal scores: lower class index first."""
    return scores.sort(dim=1, descending=True, stable=True).indices


def topk_accuracy(ranking: torch.Tensor, targets: torch.Tensor, k: int) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (percent); top-5 counts the min(5, k, classes) best classes."""
    top5 = min(5, k, ranking.shape[1])
    hits = ranking[:, :top5] == targets.unsqueeze(1)
    return 100.0 * hits[:, 0].sum().item() / len(hits), 100.0 * hits.any(dim=1).sum().item() / len(hits)


def _check_inputs(train_features, train_labels, val_features, val_labels, ks) -> None:
    if len(train_features) == 0:
        raise UserError("kNN: the training (memory bank) split is empty")
    if len(val_features) == 0:
        raise UserError("kNN: the validation (query) split is empty")
    if train_features.ndim != 2 or val_features.ndim != 2 or train_features.shape[1] != val_features.shape[1]:
        raise UserError(f"kNN: feature shapes do not match (train {tuple(train_features.shape)}, "
                        f"val {tuple(val_features.shape)})")
    if len(train_labels) != len(train_features) or len(val_labels) != len(val_features):
        raise UserError("kNN: one label per feature row is needed")
    if not ks or any(int(k) < 1 for k in ks):
        raise UserError(f"kNN: k must be a positive integer, got {list(ks)}")


def knn_classify(train_features: torch.Tensor, train_labels: torch.Tensor, val_features: torch.Tensor,
                 val_labels: torch.Tensor, ks: Sequence[int] = (200,), temperature: float = 0.1,
                 weighting: str = "exp", backend: str = "auto", num_classes: int | None = None,
                 device: torch.device | None = None, shard_rows: int | None = None) -> KnnResult:
    """Weighted kNN accuracy of ``val`` against the ``train`` memory bank, for every k in one search."""
    _check_inputs(train_features, train_labels, val_features, val_labels, ks)
    if temperature <= 0:
        raise UserError(f"kNN: the temperature must be > 0, got {temperature}")
    ks = [int(k) for k in ks]
    train_labels, val_labels = train_labels.long().cpu(), val_labels.long().cpu()
    if num_classes is None:
        num_classes = int(max(train_labels.max(), val_labels.max())) + 1
    started = time.perf_counter()
    bank, queries = l2_normalize(train_features.cpu()), l2_normalize(val_features.cpu())
    search = make_search(bank, backend, device, shard_rows)
    built = time.perf_counter()
    sims, idx = nearest_neighbors(bank, queries, max(ks), search)
    searched = time.perf_counter()
    neighbour_labels = train_labels[idx]
    metrics, rankings = {}, {}
    for k in ks:
        kk = min(k, len(bank))
        ranking = rank_classes(knn_vote(sims[:, :kk], neighbour_labels[:, :kk], num_classes, temperature, weighting))
        top1, top5 = topk_accuracy(ranking, val_labels, kk)
        metrics[k], rankings[k] = {"top1": top1, "top5": top5}, ranking
    seconds = {"index": built - started, "search": searched - built, "vote": time.perf_counter() - searched}
    return KnnResult(metrics, rankings, search.name, seconds)


def flat_metrics(result: KnnResult, prefix: str = "") -> dict[str, float]:
    """``{top1, top5}`` of the first k, plus ``top1_k{k}``/``top5_k{k}`` for every k."""
    ks = list(result.metrics)
    flat = {f"{prefix}top1": result.metrics[ks[0]]["top1"], f"{prefix}top5": result.metrics[ks[0]]["top5"]}
    if len(ks) > 1:
        for k in ks:
            flat[f"{prefix}top1_k{k}"] = result.metrics[k]["top1"]
            flat[f"{prefix}top5_k{k}"] = result.metrics[k]["top5"]
    return flat
