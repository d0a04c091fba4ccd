"""Weighted kNN classification on L2-normalised features (InstDisc / DINO protocol).

class score = sum over the k nearest training features (cosine similarity) of exp(sim / T) for that
neighbour's class (or 1 per neighbour in ``uniform`` mode). Several k in one pass; top-1 and top-5
(top-5 looks at the min(5, k) best classes). Memory stays bounded: queries and the bank are processed
in blocks, never a full N_val x N_train matrix.

Search backends: FAISS exact inner product (on the GPU when faiss-gpu and a GPU are there; sharded
banks; the GPU k limit handled) and chunked torch matmuls. Their float32 similarities differ in the
last bits, so the vote is *certified*: with a bound on the float32 error, a query whose top classes
could change under that error (or whose k-th neighbour could swap with the next one and matter) is
re-ranked exactly (float64 similarities, ties -> lower training index, more candidates until the
k boundary is safe). Every backend therefore returns the same top classes for every query.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from simsiam_eval.errors import UserError

PRESETS = {
    "instdisc": {"k": [200], "temperature": 0.1},       # InstDisc, MoCo colab, lightly, VISSL
    "simsiam-cifar": {"k": [200], "temperature": 0.2},  # official SimSiam CIFAR monitor (issue 10)
    # DINO eval_knn: 20-NN first = headline; Resize(256, bicubic) + CenterCrop(224) before the features
    "dino": {"k": [20, 10, 100, 200], "temperature": 0.07, "interpolation": "bicubic"},
}
WEIGHTINGS = ("exp", "uniform")
BACKENDS = ("auto", "faiss", "torch")
FAISS_GPU_MAX_K = 2048
BLOCK_ELEMENTS = 1 << 25  # similarity block = 32M floats (128 MB)
FAISS_QUERY_BLOCK = 4096  # queries per FAISS sgemm block (its default)
REFINE_ELEMENTS = 1 << 24  # float64 re-ranking block = 16M values (128 MB per float64 copy)


@dataclass
class KnnResult:
    """Per-k metrics (percent), the top classes per query and k, and how the search ran."""

    metrics: dict[int, dict[str, float]]
    rankings: dict[int, torch.Tensor]  # (Q, min(5, k, classes)): the top-1 class, then the rest of the top-5
    backend: str
    num_classes: int
    reranked: int  # queries re-ranked exactly because float32 error could have changed their vote
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
    """Dot products of float32 ``queries`` (Q, D) with ``rows`` (Q, M, D), computed in float64.

    The products of two float32 numbers are exact in float64, and their float64 sum is off by at most
    D 2^-53 sum|x_i y_i| (~6e-14 for D = 512), far below float32 resolution: neighbours closer than
    float32 can tell apart are ordered as exact arithmetic orders them (as DINO's eval_knn run in
    float64 does). Each value depends only on its two vectors (not on its position in a list), so
    every backend's candidate list yields bit-identical similarities.
    """
    return (queries.double().unsqueeze(1) * rows.double()).sum(-1)


def _rank(candidates: torch.Tensor, sims: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort candidates by similarity (descending), ties by training index (ascending); keep k."""
    by_index = candidates.sort(dim=1).indices
    candidates, sims = candidates.gather(1, by_index), sims.gather(1, by_index)
    order = sims.sort(dim=1, descending=True, stable=True).indices[:, :k]
    return sims.gather(1, order), candidates.gather(1, order)


def search_tolerance(dim: int) -> float:
    """How far a float32 inner product of two unit vectors may be from the exact value.

    4 sqrt(D) u (u = 2^-24): the random-walk estimate of blocked summation with a wide margin; the
    largest error measured for FAISS and torch (D = 512, 20k x 2k) was 30x smaller.
    """
    return 4 * math.sqrt(dim) * 2.0 ** -24


def candidate_count(k: int, n: int) -> int:
    """Rows to fetch per query for k neighbours: a margin for the exact re-ranking."""
    return min(n, k + max(16, k // 4))


def nearest_neighbors(bank: torch.Tensor, queries: torch.Tensor, k: int, search=None, backend: str = "auto",
                      candidates: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest bank rows of each query: (similarities float64, indices), best first.

    ``bank`` and ``queries`` must be L2-normalised float32 (CPU). Candidates come from ``search``
    (built from ``backend`` if not given), or for the first round from ``candidates`` (Q, m), the
    result of an earlier search, best first; the result does not depend on the backend.
    """
    n, dim = bank.shape
    k = min(k, n)
    search = search or make_search(bank, backend)
    tol = search_tolerance(dim)
    out_sims = torch.empty(len(queries), k, dtype=torch.float64)
    out_idx = torch.empty(len(queries), k, dtype=torch.int64)
    pending = torch.arange(len(queries))
    m = candidates.shape[1] if candidates is not None else candidate_count(k, n)
    while len(pending):
        if candidates is None:
            if search.max_k is not None and m > search.max_k:
                search = TorchSearch(bank)  # e.g. the FAISS GPU k limit: carry on without a limit
            candidates = search.search(queries[pending], m)[1]
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
        m, candidates = min(n, 4 * m), None
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


def top_classes(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Classes by descending score (equal scores: lower class index first) and their scores."""
    ordered = scores.sort(dim=1, descending=True, stable=True)
    return ordered.indices, ordered.values


def score_slack(scores: torch.Tensor, sims: torch.Tensor, labels: torch.Tensor, k: int, n: int, tol: float,
                temperature: float, weighting: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """How far each class score (Q, C) could fall and rise if every similarity moved by up to ``tol``.

    ``sims``/``labels`` (Q, m) are the candidates, best first, of which the first k voted. Every kept
    weight moves by a factor within exp(+-2 tol / T). Near the k boundary, s of the L "leavers" (kept,
    within 2 tol of the best outsider) may swap with s of the E "enterers" (outsiders within 2 tol of
    the k-th), s <= min(L, E). A class with L_c leavers and E_c enterers loses
    left_c - entered_c <= min(L_c, E - E_c) weights (a leaver replaced by one of its own class
    changes nothing); each swapped weight lies in [w_lo, w] = exp([s_k - 3 tol, s_k + 3 tol] / T),
    so the loss is at most min(L_c, E - E_c) w + min(L_c, E_c) (w - w_lo); gains likewise. Returns
    (fall, rise) (Q, C) and the queries whose swap band runs past the m candidates (nothing can be
    said about those).
    """
    relative = math.expm1(2 * tol / temperature) if weighting == "exp" else 0.0
    fall, rise = scores * relative, scores * relative
    beyond = torch.zeros(len(sims), dtype=torch.bool)
    if k < n:
        sims = sims.double()
        worst_in, best_out = sims[:, k - 1:k], sims[:, k:k + 1]
        leave = sims[:, :k] <= best_out + 2 * tol
        enter = sims[:, k:] >= worst_in - 2 * tol
        leavers = torch.zeros_like(scores).scatter_add_(1, labels[:, :k], leave.double())
        enterers = torch.zeros_like(scores).scatter_add_(1, labels[:, k:], enter.double())
        if weighting == "exp":
            weight = ((worst_in + 3 * tol) / temperature).exp()
            spread = weight * -math.expm1(-6 * tol / temperature)  # w - w_lo
        else:
            weight, spread = torch.ones_like(worst_in), torch.zeros_like(worst_in)
        same = torch.minimum(leavers, enterers) * spread
        fall += torch.minimum(leavers, enterers.sum(1, keepdim=True) - enterers) * weight + same
        rise += torch.minimum(enterers, leavers.sum(1, keepdim=True) - leavers) * weight + same
        beyond = enter[:, -1] & (sims.shape[1] < n)
    return fall, rise, beyond


def uncertain_votes(order: torch.Tensor, ordered_scores: torch.Tensor, fall: torch.Tensor, rise: torch.Tensor,
                    r: int) -> torch.Tensor:
    """Queries whose top-1 class or top-r class set could change if each score moved within its slack.

    ``order``/``ordered_scores`` (Q, C) are the classes by descending score. Kept classes must stay
    above every class left out: min(score - fall) over the kept > max(score + rise) over the rest.
    Exactly equal scores that cannot move are certain: every backend breaks them by class index.
    """
    if order.shape[1] < 2:
        return torch.zeros(len(order), dtype=torch.bool)
    ordered_fall, ordered_rise = fall.gather(1, order), rise.gather(1, order)
    low, high = ordered_scores - ordered_fall, ordered_scores + ordered_rise
    uncertain = torch.zeros(len(order), dtype=torch.bool)
    for kept in sorted({1, r}):
        if kept >= order.shape[1]:
            continue
        floor, ceiling = low[:, :kept].amin(dim=1, keepdim=True), high[:, kept:].amax(dim=1, keepdim=True)
        touching = (((low[:, :kept] == floor) & (ordered_fall[:, :kept] > 0)).any(dim=1)
                    | ((high[:, kept:] == ceiling) & (ordered_rise[:, kept:] > 0)).any(dim=1))
        uncertain |= (floor < ceiling).squeeze(1) | ((floor == ceiling).squeeze(1) & touching)
    return uncertain


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
    n, kmax = len(bank), min(max(ks), len(bank))
    m = candidate_count(kmax, n)  # > kmax unless the bank is that small: the outsiders check the k boundary
    if search.max_k is not None and m > search.max_k:
        search = TorchSearch(bank, device)
    sims, idx = search.search(queries, m)
    neighbour_labels = train_labels[idx]
    searched = time.perf_counter()
    tol = search_tolerance(bank.shape[1])
    rankings = {k: torch.empty(len(queries), min(5, k, n, num_classes), dtype=torch.long) for k in ks}
    uncertain = torch.zeros(len(queries), dtype=torch.bool)
    rows = max(1, REFINE_ELEMENTS // max(num_classes, m))
    for start in range(0, len(queries), rows):
        block = slice(start, start + rows)
        for k in ks:
            kk = min(k, n)
            r = rankings[k].shape[1]
            scores = knn_vote(sims[block, :kk], neighbour_labels[block, :kk], num_classes, temperature, weighting)
            order, ordered_scores = top_classes(scores)
            rankings[k][block] = order[:, :r]
            fall, rise, beyond = score_slack(scores, sims[block], neighbour_labels[block], kk, n, tol,
                                             temperature, weighting)
            uncertain[block] |= beyond | uncertain_votes(order, ordered_scores, fall, rise, r)
    if uncertain.any():  # exact re-ranking of the queries a float32 error could flip
        exact_sims, exact_idx = nearest_neighbors(bank, queries[uncertain], kmax, search, candidates=idx[uncertain])
        for k in ks:
            kk = min(k, n)
            scores = knn_vote(exact_sims[:, :kk], train_labels[exact_idx[:, :kk]], num_classes, temperature, weighting)
            rankings[k][uncertain] = top_classes(scores)[0][:, :rankings[k].shape[1]]
    metrics = {}
    for k in ks:
        top1, top5 = topk_accuracy(rankings[k], val_labels, min(k, n))
        metrics[k] = {"top1": top1, "top5": top5}
    seconds = {"index": built - started, "search": searched - built, "vote": time.perf_counter() - searched}
    return KnnResult(metrics, rankings, search.name, num_classes, int(uncertain.sum()), seconds)


def flat_metrics(result: KnnResult, prefix: str = "") -> dict[str, float]:
    """``{top1, top5}`` of the first k, plus ``top1_k{k}``/``top5_k{k}`` for every k."""
    ks = list(result.metrics)
    flat = {f"{prefix}top1": result.metrics[ks[0]]["top1"], f"{prefix}top5": result.metrics[ks[0]]["top5"]}
    if len(ks) > 1:
        for k in ks:
            flat[f"{prefix}top1_k{k}"] = result.metrics[k]["top1"]
            flat[f"{prefix}top5_k{k}"] = result.metrics[k]["top5"]
    return flat
