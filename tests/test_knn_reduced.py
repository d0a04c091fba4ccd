"""Reduced-precision candidate search: its error bound holds against float64, and kNN predicts exactly
what numpy's float64 brute force predicts, also where bfloat16 cannot tell the neighbours apart."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from simsiam_eval.knn.bank import FeatureBank
from simsiam_eval.knn.classify import knn_classify
from simsiam_eval.knn.reduced import ReducedPrecisionSearch, reduced_precision_bound, rounding_residuals
from simsiam_eval.knn.search import TorchSearch

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
@pytest.mark.parametrize("dim", [64, 512])
def test_error_bound_holds_and_is_not_vacuous(precision, dim):
    """Every pair's exact (float64) inner product lies below the bound on its reduced-precision score,
    over random, sparse and spiky unit vectors; the bound's margin is about the largest actual error."""
    g = torch.Generator().manual_seed(dim)
    x = torch.randn(600, dim, generator=g)
    x[:200] *= (torch.rand(200, dim, generator=g) < 0.05)  # sparse rows: large components
    x[200:300, 0] += 30.0  # one dominant component
    x = F.normalize(x[x.norm(dim=1) > 0], dim=1)
    dtype = DTYPES[precision]
    reduced = x.to(dtype) @ x.to(dtype).T
    exact = x.double().numpy() @ x.double().numpy().T
    residual, norm = rounding_residuals(x, dtype)
    bound = reduced_precision_bound(reduced, residual[:, None], norm[:, None], float(residual.max()),
                                    float(norm.max()), dim, dtype).numpy()
    scores = reduced.double().numpy()
    worst, margin = np.abs(exact - scores).max(), (bound - scores).max()
    print(f"\n{precision} D={dim}: worst error {worst:.2e}, largest margin of the bound {margin:.2e}")
    assert (exact <= bound).all()
    assert margin <= 4 * worst  # the bound is about what happens, not orders of magnitude away


def same_predictions(ours: torch.Tensor, expected: np.ndarray) -> bool:
    """Same top-1 class and the same set of top-5 classes (what the certified vote guarantees)."""
    ours = ours.numpy()
    return np.array_equal(ours[:, 0], expected[:, 0]) and np.array_equal(np.sort(ours, 1), np.sort(expected, 1))


def numpy_predictions(train, train_labels, val, k, temperature, classes):
    bank = train.double().numpy()
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    queries = val.double().numpy()
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    sims = queries @ bank.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    scores = np.zeros((len(val), classes))
    for q in range(len(val)):
        np.add.at(scores[q], train_labels.numpy()[order[q]], np.exp(sims[q, order[q]] / temperature))
    return np.argsort(-scores, axis=1, kind="stable")[:, :5], order


def near_copies(seed: int, copies: int = 2000, dim: int = 128):
    """``copies`` rows within ~1e-3 of one vector (bfloat16 resolution is 4e-3: it ranks them at random),
    600 random rows, 40 queries near that vector, 7 classes."""
    g = torch.Generator().manual_seed(seed)
    base = F.normalize(torch.randn(1, dim, generator=g), dim=1)
    bank = torch.cat([base + 3e-3 * torch.randn(copies, dim, generator=g) / dim ** 0.5 * 8,
                      torch.randn(600, dim, generator=g)])
    queries = base + 0.02 * torch.randn(40, dim, generator=g) / dim ** 0.5 * 8
    return bank, torch.randint(7, (len(bank),), generator=g), queries, torch.randint(7, (40,), generator=g)


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_near_copies_are_searched_again_and_predict_like_float64(precision):
    bank_rows, labels, queries, query_labels = near_copies(seed=1)
    bank, q = FeatureBank(bank_rows), F.normalize(queries, dim=1)
    search = ReducedPrecisionSearch(bank, TorchSearch(bank), precision)
    search.search(q, 66)
    assert search.searched_again > 0  # the reduced matmul could not rank the copies
    for k in (10, 50, 200):
        expected, _ = numpy_predictions(bank_rows, labels, queries, k, 0.1, 7)
        result = knn_classify(bank_rows, labels, queries, query_labels, ks=[k], temperature=0.1, backend="torch",
                              search_precision=precision)
        assert same_predictions(result.rankings[k], expected), k


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_bfloat16_candidates_predict_like_the_float32_search(backend):
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(10, (5000,), generator=g)
    features = torch.randn(10, 96, generator=g)[labels] + 2.5 * torch.randn(5000, 96, generator=g)
    train, val = features[:4000], features[4000:]
    ks = [1, 20, 200]
    fp32 = knn_classify(train, labels[:4000], val, labels[4000:], ks=ks, backend=backend)
    bf16 = knn_classify(train, labels[:4000], val, labels[4000:], ks=ks, backend=backend,
                        search_precision="bfloat16")
    assert bf16.backend.startswith("torch-bfloat16+")
    for k in ks:
        expected, _ = numpy_predictions(train, labels[:4000], val, k, 0.1, 10)
        assert same_predictions(bf16.rankings[k], expected[:, :bf16.rankings[k].shape[1]]), k
        assert same_predictions(bf16.rankings[k], fp32.rankings[k].numpy()) and bf16.metrics[k] == fp32.metrics[k], k
