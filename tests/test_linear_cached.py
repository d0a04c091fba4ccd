"""The cached linear probe streams its batches from the feature cache: the same batches as the views held
whole in float32, every image once an epoch, memory-mapped pages handed back, and a warm (memory-mapped
float16) cache trains the same classifier as a cold run."""
from __future__ import annotations

import numpy as np
import torch

import simsiam_eval.features as features_module
from simsiam_eval.linear.cached import CachedViews, sequential_batches
from simsiam_eval.linear.evaluate import run_linear
from simsiam_eval.mapped import MappedTensor
from test_linear import CPU, probe_config


def coded_views(n: int, views: int, dim: int = 6) -> list[torch.Tensor]:
    """View v of image i is the row (i, v, noise...): a batch row says which image and view it is."""
    g = torch.Generator().manual_seed(1)
    return [torch.cat([torch.arange(n).float()[:, None], torch.full((n, 1), float(v)),
                       torch.randn(n, dim - 2, generator=g)], 1).half() for v in range(views)]


def mapped_copy(tensor: torch.Tensor, path) -> torch.Tensor:
    torch.save({"features": tensor}, path)
    return torch.load(path, mmap=True, weights_only=True)["features"]


def in_memory_batches(views, labels, batch, seed, epoch, subset=None):
    """The batches with the views stacked whole in float32: rows [view of image, image] of a permutation."""
    stacked = torch.stack([v.float() for v in views])
    images = torch.arange(len(labels)) if subset is None else torch.as_tensor(subset)
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(images), generator=generator)
    view = torch.randint(len(views), (len(images),), generator=generator)
    for start in range(0, len(images), batch):
        idx = order[start:start + batch]
        yield stacked[view[idx], images[idx]], labels[images[idx]]


def test_streamed_batches_equal_the_views_held_whole(tmp_path):
    views, labels = coded_views(203, 3), torch.randint(10, (203,))
    mapped = [mapped_copy(v, tmp_path / f"view{i}.pt") for i, v in enumerate(views)]
    subset = np.sort(np.random.default_rng(0).choice(203, 70, replace=False))
    for source, chosen in ((views, None), (mapped, None), (mapped, subset)):
        streamed = CachedViews(source, labels, 32, seed=5, device=torch.device("cpu"), subset=chosen)
        for epoch in (0, 3):
            got, want = list(streamed.batches(epoch)), list(in_memory_batches(views, labels, 32, 5, epoch, chosen))
            assert len(got) == len(want)
            for (x, y), (x_ref, y_ref) in zip(got, want):
                assert x.dtype == torch.float32 and torch.equal(x, x_ref) and torch.equal(y, y_ref)


def test_each_epoch_sees_every_image_once_in_a_drawn_view():
    views, labels = coded_views(500, 4), torch.arange(500)
    streamed = CachedViews(views, labels, 64, seed=0, device=torch.device("cpu"))
    orders = []
    for epoch in range(3):
        rows = torch.cat([x for x, _ in streamed.batches(epoch)])
        image, view = rows[:, 0].long(), rows[:, 1].long()
        assert sorted(image.tolist()) == list(range(500))
        assert torch.equal(torch.cat([y for _, y in streamed.batches(epoch)]), image)  # labels follow rows
        assert set(view.tolist()) == {0, 1, 2, 3}
        assert torch.equal(rows[:, 2:], torch.stack(views)[view, image][:, 2:].float())
        orders.append(image)
    assert not torch.equal(orders[0], orders[1]) and not torch.equal(orders[1], orders[2])


def file_pages_mib() -> float:
    """Resident pages of this process mapped from files (RssFile): memory-mapped data read and kept."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("RssFile:")) / 1024


def test_read_pages_of_a_mapped_cache_leave_the_resident_set(tmp_path):
    features = torch.randn(16384, 2048).half()  # 64 MiB
    mapped = mapped_copy(features, tmp_path / "big.pt")
    pages = MappedTensor(mapped)
    assert pages.mapped and not MappedTensor(features).mapped
    before = file_pages_mib()
    assert torch.equal(mapped.float().half(), features)  # every page read
    grown = file_pages_mib()
    pages.release()
    released = file_pages_mib()
    assert grown - before > 48 and grown - released > 48
    assert torch.equal(mapped, features)  # still readable, from the page cache
    MappedTensor(features).release()  # anonymous memory: nothing is advised, nothing lost
    assert torch.equal(mapped, features)


def test_sequential_batches_cover_the_rows_in_order(tmp_path):
    features, labels = torch.randn(70, 5).half(), torch.arange(70)
    mapped = mapped_copy(features, tmp_path / "val.pt")
    batches = list(sequential_batches(mapped, labels, 32, torch.device("cpu")))
    assert [len(y) for _, y in batches] == [32, 32, 6]
    assert torch.equal(torch.cat([x for x, _ in batches]), features.float())
    assert torch.equal(torch.cat([y for _, y in batches]), labels)


def test_a_warm_float16_cache_trains_the_classifier_of_a_cold_run(shapes_root, tmp_path, monkeypatch):
    options = dict(mode="cached", epochs=3, views=2, cache_dtype="float16", cache_dir=str(tmp_path / "cache"))
    cold = run_linear(probe_config(shapes_root, tmp_path / "cold", **options), CPU)
    monkeypatch.setattr(features_module, "extract_features", None)  # the warm run reads (maps) the cache only
    warm = run_linear(probe_config(shapes_root, tmp_path / "warm", **options), CPU)
    state = [torch.load(tmp_path / name / "run" / "linear_state.pth", weights_only=True)["fc"]
             for name in ("cold", "warm")]
    assert all(torch.equal(state[0][k], state[1][k]) for k in state[0])
    assert warm["metrics"] == cold["metrics"]


def test_rows_of_a_mapped_file_are_read_without_mapping_them(tmp_path):
    features = torch.randn(16384, 2048).half()  # 64 MiB
    mapped = mapped_copy(features, tmp_path / "big.pt")
    source = MappedTensor(mapped)
    indices = torch.randint(16384, (400,), generator=torch.Generator().manual_seed(0))
    before = file_pages_mib()
    rows = source.rows(indices)
    assert torch.equal(rows, features[indices])
    assert file_pages_mib() - before < 8  # mapped reads would map >= 400 x 64 KiB (fault-around), here ~1.5 MB a row
    numpy_mapped = torch.from_numpy(np.memmap(tmp_path / "raw.f16", dtype=np.float16, mode="w+", shape=(300, 7)))
    numpy_mapped[:] = features[:300, :7]
    assert torch.equal(MappedTensor(numpy_mapped).rows(indices[indices < 300]), features[:300, :7][indices[indices < 300]])
    labels = torch.arange(16384) * 3
    assert torch.equal(MappedTensor(labels).rows(indices), labels[indices])  # in memory: plain indexing
