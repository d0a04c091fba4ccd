"""A memory bank streamed shard by shard from a float16 memory-mapped file gives the neighbours and votes
of the whole bank in memory, and never normalises more than a shard at once."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import simsiam_eval.knn.bank as bank_module
import simsiam_eval.knn.certify as certify_module
import simsiam_eval.knn.classify as classify_module
from simsiam_eval.knn.bank import FeatureBank
from simsiam_eval.knn.certify import nearest_neighbors, scan_bank
from simsiam_eval.knn.classify import knn_classify
from simsiam_eval.knn.search import FaissSearch, TorchSearch
from simsiam_eval.knn.vote import l2_normalize


def float16_file(path, features: torch.Tensor) -> torch.Tensor:
    """``features`` written as a raw float16 file and mapped back (read-only), as the ImageNet bank is."""
    features.numpy().astype(np.float16).tofile(path)
    return torch.from_numpy(np.memmap(path, dtype=np.float16, mode="r+", shape=tuple(features.shape)))


def bank_with_ties(n: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clustered rows, a block of one repeated row (exact ties across shard borders) and a zero block."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(6, (n,), generator=g)
    features = torch.randn(6, dim, generator=g)[labels] + 2.0 * torch.randn(n, dim, generator=g)
    features[n // 4:n // 4 + 300] = features[0]
    features[n // 2:n // 2 + 200] = 0
    return features, labels


@pytest.fixture(scope="module")
def mapped(tmp_path_factory):
    features, labels = bank_with_ties(2000, 48, seed=11)
    path = tmp_path_factory.mktemp("bank") / "bank.f16"
    queries = torch.cat([features[:5].clone(), torch.randn(120, 48, generator=torch.Generator().manual_seed(12))])
    return float16_file(path, features), labels, queries


def test_shards_and_gathers_give_the_rows_of_the_whole_bank_bit_for_bit(mapped):
    features, _, _ = mapped
    whole = l2_normalize(features.float())
    streamed = FeatureBank(features, shard_rows=97)
    assert not streamed.resident and FeatureBank(features).resident
    assert torch.equal(torch.cat([shard for _, shard in streamed.shards()]), whole)
    assert [start for start, _ in streamed.shards()][:3] == [0, 97, 194]
    picks = torch.tensor([[5, 1999, 97], [96, 0, 500]])
    assert torch.equal(streamed.rows(picks), whole[picks])


@pytest.mark.parametrize("search_kind", ["torch", "faiss", "faiss-split"])
def test_streamed_bank_finds_the_neighbours_of_the_whole_bank(mapped, search_kind):
    features, _, raw_queries = mapped
    whole, queries = l2_normalize(features.float()), l2_normalize(raw_queries)
    expected = np.argsort(-(queries.double().numpy() @ whole.double().numpy().T), axis=1, kind="stable")
    streamed = FeatureBank(features, shard_rows=333)
    search = {"torch": lambda: TorchSearch(streamed), "faiss": lambda: FaissSearch(streamed, use_gpu=False),
              "faiss-split": lambda: FaissSearch(streamed, use_gpu=False, shard_rows=100)}[search_kind]()
    for k in (1, 20, 350):  # 350: the k boundary inside the 300 tied copies, whose search scores tie too
        sims, idx = nearest_neighbors(streamed, queries, k, search)
        assert np.array_equal(idx.numpy(), expected[:, :k]), k
        reference = nearest_neighbors(whole, queries, k, TorchSearch(whole))
        assert torch.equal(sims, reference[0]) and torch.equal(idx, reference[1]), k


def test_whole_bank_scan_by_shards_equals_one_scan(mapped):
    features, _, raw_queries = mapped
    whole, queries = l2_normalize(features.float()), l2_normalize(raw_queries[:40])
    for k in (7, 250, 600):
        one = scan_bank(FeatureBank(whole, normalized=True), queries, k)
        for rows in (150, 1999):
            by_shards = scan_bank(FeatureBank(features, shard_rows=rows), queries, k)
            assert torch.equal(by_shards[0], one[0]) and torch.equal(by_shards[1], one[1]), (k, rows)


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_knn_on_a_mapped_float16_bank_equals_the_bank_in_memory(mapped, backend, monkeypatch):
    features, labels, raw_queries = mapped
    query_labels = torch.cat([labels[:5], torch.randint(6, (120,), generator=torch.Generator().manual_seed(13))])
    in_memory = knn_classify(features.float(), labels, raw_queries, query_labels, ks=[10, 200], backend=backend)
    largest = []
    normalize = bank_module.l2_normalize

    def recording(rows):
        largest.append(len(rows))
        return normalize(rows)

    monkeypatch.setattr(bank_module, "l2_normalize", recording)
    for module in (certify_module, classify_module):  # re-ranking blocks of one query: gathers of 250 rows
        monkeypatch.setattr(module, "REFINE_ELEMENTS", 250 * 48)
    streamed = knn_classify(features, labels, raw_queries, query_labels, ks=[10, 200], backend=backend,
                            bank_shard_rows=250)
    assert streamed.metrics == in_memory.metrics
    assert all(torch.equal(streamed.rankings[k], in_memory.rankings[k]) for k in (10, 200))
    assert largest and max(largest) <= 250  # a shard, or one query's re-ranking candidates
    assert sum(largest) >= len(features)  # every row was read


def test_a_pass_over_a_mapped_bank_hands_its_pages_back(tmp_path):
    from test_linear_cached import file_pages_mib

    rows = torch.randn(16384, 2048)  # 64 MiB as float16 on disk
    bank = FeatureBank(float16_file(tmp_path / "big.f16", rows), shard_rows=2048)
    del rows
    before = file_pages_mib()
    peak = before
    for _, shard in bank.shards():
        peak = max(peak, file_pages_mib())
    bank.rows(torch.arange(0, 16384, 7))
    assert file_pages_mib() - before < 16 and peak - before < 40  # without release: +64 MiB of mapped pages
