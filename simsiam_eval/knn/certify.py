"""Certification: every search backend yields the same votes as exact arithmetic would.

FAISS and torch compute float32 similarities that differ in the last bits. With a bound on that error
(:func:`search_tolerance`), a query whose top classes could change under it (:func:`score_slack`,
:func:`uncertain_votes`), or whose k-th neighbour could swap with the next one and matter, is
re-ranked exactly (:func:`nearest_neighbors`: float64 similarities, ties -> lower training index;
where the k boundary is not safe within the candidates, a scan of the whole bank, shard by shard).
"""
from __future__ import annotations

import math

import torch

from simsiam_eval.knn.bank import FeatureBank, as_bank
from simsiam_eval.knn.search import TorchSearch, make_search

REFINE_ELEMENTS = 1 << 24  # float64 re-ranking block = 16M values (128 MB per float64 copy)


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


def nearest_neighbors(bank: torch.Tensor | FeatureBank, queries: torch.Tensor, k: int, search=None,
                      backend: str = "auto", candidates: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest bank rows of each query: (similarities float64, indices), best first.

    ``bank`` is a FeatureBank or L2-normalised float32 rows; ``queries`` L2-normalised float32 (CPU).
    Candidates come from ``search``
    (built from ``backend`` if not given) or from ``candidates`` (Q, m), the result of an earlier
    search, best first. A query whose k-th neighbour could tie with or lose to a row outside its
    candidates is finished by :func:`scan_bank`; the result does not depend on the backend.
    """
    bank = as_bank(bank)
    n, dim = len(bank), bank.dim
    k = min(k, n)
    tol = search_tolerance(dim)
    if candidates is None:
        m = candidate_count(k, n)
        search = search or make_search(bank, backend)
        if search.max_k is not None and m > search.max_k:
            search = TorchSearch(bank)  # e.g. the FAISS GPU k limit: carry on without a limit
        candidates = search.search(queries, m)[1]
    m = candidates.shape[1]
    out_sims = torch.empty(len(queries), k, dtype=torch.float64)
    out_idx = torch.empty(len(queries), k, dtype=torch.int64)
    unresolved = []
    rows = max(1, REFINE_ELEMENTS // (m * dim))
    for start in range(0, len(queries), rows):
        block = torch.arange(start, min(start + rows, len(queries)))
        cand = candidates[start:start + rows]
        sims = exact_similarities(queries[block], bank.rows(cand))
        top_sims, top_idx = _rank(cand, sims, k)
        out_sims[block], out_idx[block] = top_sims, top_idx
        if m < n:  # could a row outside the candidates tie with or beat the k-th neighbour?
            # Backends return candidates best first, so the last one has the lowest search score,
            # an upper bound (+ tol) on every other row's search score.
            unsafe = sims[:, -1] + 2 * tol >= top_sims[:, -1]
            unresolved.append(block[unsafe])
    pending = torch.cat(unresolved) if unresolved else torch.arange(0)
    if len(pending):
        out_sims[pending], out_idx[pending] = scan_bank(bank, queries[pending], k)
    return out_sims, out_idx


def scan_bank(bank: FeatureBank, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top k of each query over the whole bank, shard by shard: the exact top k of each shard
    (:func:`_scan_bank`), merged. Exact similarities do not depend on where a row is read, and ties go
    to the lower bank index in each shard and in the merge, so the merge is the whole bank's top k."""
    best = None
    for start, shard in bank.shards():
        sims, idx = _scan_bank(shard, queries, min(k, len(shard)))
        idx = idx + start
        if best is not None:
            sims, idx = _rank(torch.cat([best[1], idx], 1), torch.cat([best[0], sims], 1), k)
        best = sims, idx
    return best


def _distinct_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(index of the first occurrence of each distinct row, ascending; the distinct row of every row)."""
    _, group = torch.unique(x, dim=0, return_inverse=True)
    first = torch.full((int(group.max()) + 1,), len(x)).scatter_reduce_(0, group, torch.arange(len(x)), "amin")
    order = first.argsort()
    renumber = torch.empty_like(order)
    renumber[order] = torch.arange(len(order))
    return first[order], renumber[group]


def float64_error(dim: int) -> float:
    """How far any float64 dot product of two unit float32 vectors may be from the real value.

    The products are exact in float64; each of the D - 1 additions errs by at most 2^-53 of a running
    sum bounded by sum |x_i y_i| <= 1, whatever the order (a BLAS kernel's or a reduction's).
    """
    return dim * 2.0 ** -53


def _scan_bank(bank: torch.Tensor, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top k of each query over the whole bank.

    A float64 matmul scores every row; the best rows by score that hold k bank rows have exact
    similarities >= (their lowest score) - e, where e = 2 float64_error bounds |score - exact|, so every
    row of the exact top k scores >= that - 2e: only those rows are re-ranked by
    :func:`exact_similarities`. Identical rows have identical exact similarities to a query, and
    identical queries identical neighbours: each distinct (query, row) pair is computed once, so a
    collapsed representation, where thousands of rows tie, costs what its distinct rows cost.
    """
    dim = bank.shape[1]
    margin = 4 * float64_error(dim)
    rows, row_group = _distinct_rows(bank)
    distinct = bank[rows]
    group_sizes = torch.bincount(row_group, minlength=len(rows))
    group_starts = group_sizes.cumsum(0) - group_sizes
    members = row_group.argsort(stable=True)  # bank indices by distinct row, ascending within each
    firsts, query_group = _distinct_rows(queries)
    out_sims = torch.empty(len(firsts), k, dtype=torch.float64)
    out_idx = torch.empty(len(firsts), k, dtype=torch.int64)
    block = max(1, REFINE_ELEMENTS // len(distinct))
    piece = max(1, REFINE_ELEMENTS // dim)
    for start in range(0, len(firsts), block):
        block_queries = queries[firsts[start:start + block]]
        scores = torch.cat([block_queries.double() @ distinct[p:p + piece].double().T
                            for p in range(0, len(distinct), piece)], dim=1)
        best, best_rows = scores.topk(min(k, len(distinct)), dim=1)  # enough distinct rows to hold k bank rows
        held = group_sizes[best_rows].cumsum(1)
        lowest = best.gather(1, (held < k).sum(1, keepdim=True))
        for j, query in enumerate(block_queries):
            reached = (scores[j] >= lowest[j] - margin).nonzero()[:, 0]  # ascending = by first bank index
            sims = torch.cat([exact_similarities(query[None], distinct[reached[p:p + piece]][None])[0]
                              for p in range(0, len(reached), piece)])
            by_sim = sims.sort(descending=True, stable=True).indices
            sims, groups = sims[by_sim], reached[by_sim]
            boundary = sims[torch.searchsorted(group_sizes[groups].cumsum(0), k)]
            groups, sims = groups[sims >= boundary], sims[sims >= boundary]  # every row tying with the k-th
            counts = group_sizes[groups]
            offsets = torch.arange(int(counts.sum())) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
            indices = members[torch.repeat_interleave(group_starts[groups], counts) + offsets]
            top_sims, top_idx = _rank(indices[None], torch.repeat_interleave(sims, counts)[None], k)
            out_sims[start + j], out_idx[start + j] = top_sims[0], top_idx[0]
    return out_sims[query_group], out_idx[query_group]


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
