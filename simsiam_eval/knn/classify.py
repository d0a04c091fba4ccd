"""``knn_classify``: search the candidates, vote, certify the vote (re-rank exactly where needed), score.

Several k in one search; the result holds per-k top-1/top-5 and the top classes of every query.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from simsiam_eval.errors import UserError
from simsiam_eval.knn.bank import FeatureBank
from simsiam_eval.knn.reduced import ReducedPrecisionSearch
from simsiam_eval.knn.certify import (REFINE_ELEMENTS, candidate_count, nearest_neighbors, score_slack,
                                      search_tolerance, uncertain_votes)
from simsiam_eval.knn.search import TorchSearch, make_search
from simsiam_eval.knn.vote import knn_vote, l2_normalize, top_classes, topk_accuracy


@dataclass
class KnnResult:
    """Per-k metrics (percent), the top classes per query and k, and how the search ran."""

    metrics: dict[int, dict[str, float]]
    rankings: dict[int, torch.Tensor]  # (Q, min(5, k, classes)): the top-1 class, then the rest of the top-5
    backend: str
    num_classes: int
    reranked: int  # queries re-ranked exactly because float32 error could have changed their vote
    searched_again: int = 0  # queries the reduced-precision search handed to the float32 search
    seconds: dict[str, float] = field(default_factory=dict)


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
                 device: torch.device | None = None, shard_rows: int | None = None,
                 bank_shard_rows: int | None = None, search_precision: str = "float32") -> KnnResult:
    """Weighted kNN accuracy of ``val`` against the ``train`` memory bank, for every k in one search.

    ``train_features`` may be float16 and memory-mapped (:class:`FeatureBank` normalises it shard by
    shard, ``bank_shard_rows`` rows at a time; default: whole if it fits in 2 GiB of float32);
    ``shard_rows`` splits FAISS indexes further. ``search_precision`` bfloat16 / float16 picks the
    candidates by a reduced-precision matmul (``reduced.py``): the same predictions, faster where the
    hardware has the instructions."""
    _check_inputs(train_features, train_labels, val_features, val_labels, ks)
    if temperature <= 0:
        raise UserError(f"kNN: the temperature must be > 0, got {temperature}")
    ks = [int(k) for k in ks]
    train_labels, val_labels = train_labels.long().cpu(), val_labels.long().cpu()
    if num_classes is None:
        num_classes = int(max(train_labels.max(), val_labels.max())) + 1
    started = time.perf_counter()
    bank, queries = FeatureBank(train_features.cpu(), bank_shard_rows), l2_normalize(val_features.cpu())
    search = make_search(bank, backend, device, shard_rows)
    built = time.perf_counter()
    n, kmax = len(bank), min(max(ks), len(bank))
    m = candidate_count(kmax, n)  # > kmax unless the bank is that small: the outsiders check the k boundary
    if search.max_k is not None and m > search.max_k:
        search = TorchSearch(bank, device)
    if search_precision != "float32":
        search = ReducedPrecisionSearch(bank, search, search_precision, device)
    sims, idx = search.search(queries, m)
    neighbour_labels = train_labels[idx]
    searched = time.perf_counter()
    tol = search_tolerance(bank.dim)
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
    return KnnResult(metrics, rankings, search.name, num_classes, int(uncertain.sum()),
                     search.searched_again if isinstance(search, ReducedPrecisionSearch) else 0, seconds)


def flat_metrics(result: KnnResult, prefix: str = "") -> dict[str, float]:
    """``{top1, top5}`` of the first k, plus ``top1_k{k}``/``top5_k{k}`` for every k."""
    ks = list(result.metrics)
    flat = {f"{prefix}top1": result.metrics[ks[0]]["top1"], f"{prefix}top5": result.metrics[ks[0]]["top5"]}
    if len(ks) > 1:
        for k in ks:
            flat[f"{prefix}top1_k{k}"] = result.metrics[k]["top1"]
            flat[f"{prefix}top5_k{k}"] = result.metrics[k]["top5"]
    return flat
