"""The collapse monitor, and the paper's Figure 2 in miniature: without stop-gradient SimSiam collapses."""
import json
import math

import pytest
import torch
import torch.nn as nn

from pretrain.collapse import collapse_std, collapse_threshold, collapsed_floor, healthy_std
from simsiam_eval.cli import main
from simsiam_eval.data.shapes import ShapesSettings, write_shapes_dataset


def test_healthy_output_reads_one_over_sqrt_dim():
    torch.manual_seed(0)
    z = torch.randn(4096, 256)
    assert collapse_std(z).item() == pytest.approx(healthy_std(256), rel=0.02)


@pytest.mark.parametrize("batch", [16, 64, 512])
def test_floor_of_a_batch_collapsed_but_for_one_outlier(batch):
    torch.manual_seed(batch)
    dim = 32
    x = torch.ones(batch, dim) * 3.0
    x[5] += 100 * torch.randn(dim)  # one outlier (large, so BN eps is negligible); the rest coincide
    z = nn.BatchNorm1d(dim, affine=False).train()(x)
    assert collapse_std(z).item() * math.sqrt(dim) == pytest.approx(collapsed_floor(batch), rel=1e-3)
    assert collapse_std(z).item() < collapse_threshold(dim, batch, 0.5) < healthy_std(dim)


@pytest.fixture(scope="module")
def shapes_300(tmp_path_factory):
    return write_shapes_dataset(tmp_path_factory.mktemp("collapse") / "shapes",
                                ShapesSettings(train_per_class=50, val_per_class=2, image_size=32), detection=False)


def train_and_read(shapes, output_dir, stop_gradient, capsys):
    # 300 images, batch 64: 4 steps an epoch, 80 steps; lr = 0.8 x 64/256 = 0.2.
    code = main(["pretrain", "pretrain/shapes_cpu", f"output_dir={output_dir}", f"data.train=shapes:{shapes}@train",
                 "knn.every_n_epochs=0", "epochs=20", "batch_size=64", "data.image_size=16", "model.width=8",
                 "model.dim=64", "model.pred_dim=16", "optim.base_lr=0.8", "workers=0", "keep_last=1",
                 "progress=false", "tensorboard=false", f"loss.stop_gradient={stop_gradient}"])
    assert code == 0
    lines = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return lines[-1], capsys.readouterr().out


@pytest.mark.slow
def test_without_stop_gradient_training_collapses(shapes_300, tmp_path, capsys):
    dim, batch = 64, 64
    collapsed, collapsed_log = train_and_read(shapes_300, tmp_path / "no_sg", "false", capsys)
    healthy, healthy_log = train_and_read(shapes_300, tmp_path / "default", "true", capsys)
    ref = healthy_std(dim)
    print(f"collapse std x sqrt(dim): default {healthy['collapse_std'] / ref:.3f}, no stop-gradient "
          f"{collapsed['collapse_std'] / ref:.3f} (collapsed floor at batch {batch}: {collapsed_floor(batch):.3f}); "
          f"loss {healthy['loss']:.3f} vs {collapsed['loss']:.3f}")
    assert healthy["collapse_std"] > 0.85 * ref
    assert collapsed["collapse_std"] < collapse_threshold(dim, batch, 0.5)  # near the floor, not near 1/sqrt(d)
    assert collapsed["loss"] < -0.85  # heading for the trivial minimum -1
    assert "COLLAPSED" in collapsed_log and "COLLAPSED" not in healthy_log


def test_epoch_record_holds_the_mean_and_median_of_its_batches_std(shapes_300, tmp_path, monkeypatch):
    """The epoch's collapse_std is the mean and collapse_std_median the median of the per-batch values
    (recorded here by wrapping the monitor's function; 300 images, batch 24: 12 batches)."""
    import pretrain.train

    seen = []

    def recording(z):
        value = collapse_std(z)
        seen.append(value.item())
        return value

    monkeypatch.setattr(pretrain.train, "collapse_std", recording)
    assert main(["pretrain", "pretrain/shapes_cpu", f"output_dir={tmp_path}", f"data.train=shapes:{shapes_300}@train",
                 "knn.every_n_epochs=0", "epochs=1", "batch_size=24", "data.image_size=16", "model.width=8",
                 "model.dim=64", "model.pred_dim=16", "workers=0", "progress=false", "tensorboard=false"]) == 0
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert len(seen) == 300 // 24
    assert record["collapse_std"] == pytest.approx(sum(seen) / len(seen), rel=1e-6)
    middle = sorted(seen)[len(seen) // 2 - 1:len(seen) // 2 + 1]  # 12 values: the mean of the middle two
    assert record["collapse_std_median"] == pytest.approx(sum(middle) / 2, rel=1e-6)
