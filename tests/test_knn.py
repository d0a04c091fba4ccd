"""Weighted kNN: brute-force numpy reference, backend agreement, sklearn uniform vote, edge cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.neighbors import KNeighborsClassifier

import simsiam_eval.knn.certify as certify_module
import simsiam_eval.knn.classify as classify_module
import simsiam_eval.knn.search as search_module
from simsiam_eval.errors import UserError
from simsiam_eval.knn.certify import exact_similarities, nearest_neighbors
from simsiam_eval.knn.classify import knn_classify
from simsiam_eval.knn.search import FaissSearch, TorchSearch
from simsiam_eval.knn.vote import l2_normalize


def clustered(n: int, dim: int, classes: int, seed: int, spread: float = 1.5):
    """Features around one random centre per class (so accuracies are far from chance and from 100%)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g)
    labels = torch.randint(classes, (n,), generator=g)
    return centres[labels] + spread * torch.randn(n, dim, generator=g), labels


def numpy_knn(train, train_labels, val, k, temperature, num_classes, weighting="exp"):
    """Independent reference: full similarity matrix in float64, stable sorts (ties -> lower index)."""
    bank = train.numpy().astype(np.float64)
    queries = val.numpy().astype(np.float64)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    sims = (queries[:, None, :] * bank[None, :, :]).sum(-1)
    k = min(k, len(bank))
    neighbours = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    weights = np.exp(np.take_along_axis(sims, neighbours, 1) / temperature) if weighting == "exp" \
        else np.ones(neighbours.shape)
    scores = np.zeros((len(queries), num_classes))
    for q in range(len(queries)):
        np.add.at(scores[q], train_labels.numpy()[neighbours[q]], weights[q])
    return np.argsort(-scores, axis=1, kind="stable")


def same_predictions(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same top-1 class and the same set of top-r classes for every query."""
    return torch.equal(a[:, 0], b[:, 0]) and torch.equal(a.sort(dim=1).values, b.sort(dim=1).values)


def accuracies(ranking, targets, k):
    top5 = min(5, k, ranking.shape[1])
    hits = ranking[:, :top5] == targets[:, None]
    return 100.0 * hits[:, 0].mean(), 100.0 * hits.any(axis=1).mean()


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_matches_bruteforce_numpy(backend):
    train, train_labels = clustered(600, 24, 7, seed=1)
    val, val_labels = clustered(130, 24, 7, seed=2)
    # exact ties: duplicated bank rows with other labels, so a k boundary falls inside a tie group
    train[300:340] = train[200:240]
    train_labels[300:340] = (train_labels[200:240] + 1) % 7
    val[:10] = train[200:210]
    ks = [1, 5, 20, 200, 1000]
    for temperature in (0.07, 0.1, 0.5):
        result = knn_classify(train, train_labels, val, val_labels, ks=ks, temperature=temperature, backend=backend)
        for k in ks:
            expected = numpy_knn(train, train_labels, val, k, temperature, 7)
            assert same_predictions(result.rankings[k], torch.from_numpy(expected[:, :min(5, k)])), (k, temperature)
            top1, top5 = accuracies(expected, val_labels.numpy(), min(k, len(train)))
            assert result.metrics[k]["top1"] == pytest.approx(top1, abs=1e-9)
            assert result.metrics[k]["top5"] == pytest.approx(top5, abs=1e-9)
    print(f"\nbrute-force agreement ({backend}): k {ks}, T 0.07/0.1/0.5, top-1 k=20 {result.metrics[20]['top1']:.2f}%")


def test_faiss_and_torch_backends_agree_exactly(monkeypatch):
    train, train_labels = clustered(3000, 32, 11, seed=3)
    val, val_labels = clustered(257, 32, 11, seed=4)
    train[1000:1500] = train[0]  # a tie group larger than the candidate margin: forces re-searching
    val[:5] = train[0]
    bank, queries = l2_normalize(train), l2_normalize(val)
    reference = nearest_neighbors(bank, queries, 200, TorchSearch(bank))
    monkeypatch.setattr(search_module, "BLOCK_ELEMENTS", 1 << 12)  # tiny blocks: chunked queries and bank
    monkeypatch.setattr(certify_module, "REFINE_ELEMENTS", 1 << 14)
    monkeypatch.setattr(classify_module, "REFINE_ELEMENTS", 1 << 14)
    for search in (TorchSearch(bank), FaissSearch(bank, use_gpu=False), FaissSearch(bank, use_gpu=False, shard_rows=700)):
        sims, idx = nearest_neighbors(bank, queries, 200, search)
        assert torch.equal(idx, reference[1]) and torch.equal(sims, reference[0]), search.name
    a = knn_classify(train, train_labels, val, val_labels, ks=[10, 200], backend="faiss")
    b = knn_classify(train, train_labels, val, val_labels, ks=[10, 200], backend="torch")
    assert a.metrics == b.metrics and all(same_predictions(a.rankings[k], b.rankings[k]) for k in (10, 200))
    assert idx[:5, :200].min() == 0 and (idx[:5] >= 1000).sum() > 0  # the tie group is ranked by index


def test_faiss_gpu_k_limit_falls_back_without_limit(monkeypatch):
    train, _ = clustered(400, 8, 3, seed=5)
    val, _ = clustered(20, 8, 3, seed=6)
    bank, queries = l2_normalize(train), l2_normalize(val)
    limited = FaissSearch(bank, use_gpu=False)
    limited.max_k = 50  # what a GPU index imposes (2048 there)
    assert all(torch.equal(a, b) for a, b in zip(nearest_neighbors(bank, queries, 300, limited),
                                                  nearest_neighbors(bank, queries, 300, TorchSearch(bank))))


def near_ties(seed: int, dim: int = 256):
    """A bank of 300 rows that differ from one vector by a few float32 ulps (their similarities to a
    query differ at the 1e-8 level, below float32 resolution) among 700 random rows, 20 queries near
    that vector, labels from 5 classes."""
    g = torch.Generator().manual_seed(seed)
    base = F.normalize(torch.randn(1, dim, generator=g), dim=1)
    nudged = base + torch.randint(-2, 3, (300, dim), generator=g).float() * 2.0 ** -26
    bank = torch.cat([nudged, torch.randn(700, dim, generator=g)])
    queries = base + 0.01 * torch.randn(20, dim, generator=g)
    return bank, torch.randint(5, (1000,), generator=g), queries


def test_exact_similarities_are_float64_dot_products():
    bank, _, queries = near_ties(seed=0)
    rows = bank[torch.arange(40).view(1, 40).expand(20, 40) * 7]  # (Q, M, D) candidate rows
    expected = np.einsum("qd,qmd->qm", queries.double().numpy(), rows.double().numpy())
    assert np.abs(exact_similarities(queries, rows).numpy() - expected).max() <= 1e-12


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_near_ties_follow_the_exact_float64_order(backend):
    """Neighbours and votes as float64 arithmetic on the float32 features orders them (DINO's function
    run in float64), even where the k-th and (k+1)-th similarities differ by less than float32 resolution."""
    features, labels, raw_queries = near_ties(seed=1)
    bank, queries = F.normalize(features, dim=1), F.normalize(raw_queries, dim=1)  # as eval_knn normalises
    exact = queries.double().numpy() @ bank.double().numpy().T
    order = np.argsort(-exact, axis=1, kind="stable")
    search = FaissSearch(bank, use_gpu=False) if backend == "faiss" else TorchSearch(bank)
    result = knn_classify(features, labels, raw_queries, labels[:20], ks=[10, 100, 250], temperature=0.07,
                          backend=backend)
    for k in (10, 100, 250):
        assert np.array_equal(nearest_neighbors(bank, queries, k, search)[1].numpy(), order[:, :k]), k
        weights = np.exp(np.take_along_axis(exact, order[:, :k], 1) / 0.07)
        scores = np.zeros((20, 5))
        for q in range(20):
            np.add.at(scores[q], labels.numpy()[order[q, :k]], weights[q])
        expected = torch.from_numpy(np.argsort(-scores, axis=1, kind="stable")[:, :5])
        assert same_predictions(result.rankings[k], expected), k


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_exp_vote_equals_sklearn_with_exp_weights(backend):
    """DINO eval_knn's settings (k 10/20/100/200, T 0.07, 10 classes) against scikit-learn's brute-force
    cosine kNN weighted by exp(sim / T): the CI guard of tools/parity/dino_knn.py's rows."""
    features, labels = clustered(3300, 64, 10, seed=11, spread=3.0)
    train, train_labels, val, val_labels = features[:3000], labels[:3000], features[3000:], labels[3000:]
    ks = [10, 20, 100, 200]
    ours = knn_classify(train, train_labels, val, val_labels, ks=ks, temperature=0.07, backend=backend)
    for k in ks:
        sk = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute",
                                  weights=lambda distances: np.exp((1.0 - distances) / 0.07))
        proba = sk.fit(train.double().numpy(), train_labels.numpy()).predict_proba(val.double().numpy())
        ranking = torch.from_numpy(np.argsort(-proba, axis=1, kind="stable")[:, :5])
        assert same_predictions(ours.rankings[k], ranking), k
        hits = ranking == val_labels[:, None]
        assert ours.metrics[k]["top1"] == pytest.approx(100.0 * hits[:, 0].double().mean().item(), abs=1e-9)
        assert ours.metrics[k]["top5"] == pytest.approx(100.0 * hits.any(dim=1).double().mean().item(), abs=1e-9)
    assert 20 < ours.metrics[20]["top1"] < 95  # far from chance and from perfect: the ranking matters


def test_vote_worked_out_by_hand():
    """Unit vectors at 0, 60, 90 and 180 degrees from the query: similarities 1, 0.5, 0, -1."""
    angles = torch.tensor([0.0, 60.0, 90.0, 180.0]).deg2rad()
    bank = torch.stack([angles.cos(), angles.sin()], dim=1)
    labels = torch.tensor([0, 1, 1, 0])
    query, target = torch.tensor([[1.0, 0.0]]), torch.tensor([1])
    # k 3, T 0.5: class 0 gets e^2 = 7.39, class 1 gets e^1 + e^0 = 3.72: the nearer neighbour wins
    sharp = knn_classify(bank, labels, query, target, ks=[3], temperature=0.5)
    assert sharp.rankings[3].tolist() == [[0, 1]] and sharp.metrics[3] == {"top1": 0.0, "top5": 100.0}
    # k 3, T 10: class 0 gets e^0.1 = 1.105, class 1 gets e^0.05 + e^0 = 2.051: the majority wins
    flat = knn_classify(bank, labels, query, target, ks=[3], temperature=10.0)
    assert flat.rankings[3].tolist() == [[1, 0]] and flat.metrics[3]["top1"] == 100.0
    # k 4 adds class 0's e^-2 / 0.5 -> e^-4 = 0.018: 7.407 vs 3.718, still class 0
    assert knn_classify(bank, labels, query, target, ks=[4], temperature=0.5).rankings[4][0, 0] == 0


@pytest.mark.parametrize("k", [1, 7, 50])
def test_uniform_vote_equals_sklearn_cosine(k):
    train, train_labels = clustered(500, 16, 5, seed=7, spread=2.5)
    val, val_labels = clustered(90, 16, 5, seed=8, spread=2.5)
    ours = knn_classify(train, train_labels, val, val_labels, ks=[k], weighting="uniform")
    sk = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute", weights="uniform")
    predicted = sk.fit(train.numpy(), train_labels.numpy()).predict(val.numpy())
    assert (ours.rankings[k][:, 0].numpy() == predicted).all()
    assert ours.metrics[k]["top1"] == pytest.approx(100.0 * (predicted == val_labels.numpy()).mean())


def test_few_queries_and_classes_from_labels():
    train, train_labels = clustered(300, 8, 1500, seed=9)  # more classes than images: none hard-coded
    val, val_labels = train[:3] + 0.01, train_labels[:3]
    result = knn_classify(train, train_labels, val, val_labels, ks=[1, 200], temperature=0.07)
    assert result.num_classes == int(max(train_labels.max(), val_labels.max())) + 1
    assert result.metrics[1] == {"top1": 100.0, "top5": 100.0}  # top-5 of k=1 looks at one class
    single = knn_classify(train, train_labels, val[:1], val_labels[:1], ks=[5])
    assert single.metrics[5]["top1"] == 100.0


def test_top5_uses_min_of_5_and_k():
    train = torch.eye(6)
    labels = torch.arange(6)
    val = torch.tensor([[1.0, 0.9, 0.8, 0.7, 0.0, 0.0]])
    target = torch.tensor([3])  # fourth-nearest neighbour's class
    result = knn_classify(train, labels, val, target, ks=[2, 4], temperature=0.1)
    assert result.metrics[2]["top5"] == 0.0 and result.metrics[4]["top5"] == 100.0


@pytest.mark.parametrize("bad", ["empty_train", "empty_val", "dims", "k", "temperature"])
def test_bad_inputs_are_user_errors(bad):
    train, labels = torch.randn(10, 4), torch.zeros(10, dtype=torch.long)
    val, val_labels = torch.randn(3, 4), torch.zeros(3, dtype=torch.long)
    kwargs = {"ks": [5], "temperature": 0.1}
    if bad == "empty_train":
        train, labels = train[:0], labels[:0]
    elif bad == "empty_val":
        val, val_labels = val[:0], val_labels[:0]
    elif bad == "dims":
        val = torch.randn(3, 5)
    elif bad == "k":
        kwargs["ks"] = [0]
    else:
        kwargs["temperature"] = 0.0
    with pytest.raises(UserError) as info:
        knn_classify(train, labels, val, val_labels, **kwargs)
    assert "\n" not in str(info.value)


def test_preset_sets_k_and_temperature_unless_given_on_the_command_line():
    from simsiam_eval.cli import build_parser
    from simsiam_eval.commands._evaluation import evaluation_config
    from simsiam_eval.knn.defaults import KNN_DEFAULTS
    from simsiam_eval.knn.evaluate import apply_preset

    def resolve(*argv):
        args = build_parser().parse_args(["knn", *argv])
        return apply_preset(*evaluation_config(args, KNN_DEFAULTS))

    dino = resolve("--preset", "dino")
    assert (dino.k, dino.temperature, dino.interpolation) == ([20, 10, 100, 200], 0.07, "bicubic")
    mixed = resolve("--preset", "simsiam-cifar", "--k", "5", "50")
    assert (mixed.k, mixed.temperature, mixed.interpolation) == ([5, 50], 0.2, "bilinear")
    assert resolve("--preset", "dino", "temperature=0.5").temperature == 0.5
    with pytest.raises(UserError, match="unknown config key 'tempreature'"):
        resolve("tempreature=0.5")


def collapsed_features(n: int, seed: int, dim: int = 16):
    """A partly collapsed representation: half the rows all-zero (dead ReLU features), 30% one shared
    vector, the rest distinct; labels from 10 classes."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n, dim, generator=g).relu()
    kind = torch.randint(10, (n,), generator=g)
    features[kind < 5] = 0
    features[(kind >= 5) & (kind < 8)] = torch.linspace(0.1, 1.0, dim)
    return features, torch.randint(10, (n,), generator=g)


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_collapsed_features_rank_like_numpy_and_compute_each_distinct_pair_once(backend, monkeypatch):
    """Thousands of exactly tied neighbours (the stall of a partly collapsed run): the same neighbours,
    similarities and votes as numpy's float64 brute force, with each distinct (query, row) pair
    re-ranked at most once."""
    train, train_labels = collapsed_features(3000, seed=7)
    val, val_labels = collapsed_features(300, seed=8)
    bank, queries = l2_normalize(train), l2_normalize(val)
    pairs = []
    counting = certify_module.exact_similarities

    def counted(q, rows):
        pairs.append(rows.shape[0] * rows.shape[1])
        return counting(q, rows)

    monkeypatch.setattr(certify_module, "exact_similarities", counted)
    search = FaissSearch(bank, use_gpu=False) if backend == "faiss" else TorchSearch(bank)
    sims, idx = nearest_neighbors(bank, queries, 200, search)
    exact = queries.double().numpy() @ bank.double().numpy().T
    order = np.argsort(-exact, axis=1, kind="stable")[:, :200]
    assert np.array_equal(idx.numpy(), order)
    assert torch.equal(sims, counting(queries, bank[idx]))  # bit for bit what the first round computes
    distinct_rows, distinct_queries = len(torch.unique(bank, dim=0)), len(torch.unique(queries, dim=0))
    first_round = len(queries) * certify_module.candidate_count(200, len(bank))
    assert sum(pairs) <= first_round + distinct_rows * distinct_queries < len(queries) * len(bank) / 4
    result = knn_classify(train, train_labels, val, val_labels, ks=[20, 200], temperature=0.1, backend=backend)
    for k in (20, 200):  # numpy's vote (numpy_knn would divide the zero rows by their zero norm)
        scores = np.zeros((len(val), 10))
        for q in range(len(val)):
            np.add.at(scores[q], train_labels.numpy()[order[q, :k]], np.exp(exact[q, order[q, :k]] / 0.1))
        expected = np.argsort(-scores, axis=1, kind="stable")[:, :5]
        assert same_predictions(result.rankings[k], torch.from_numpy(expected)), k
