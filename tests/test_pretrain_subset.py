"""``data.fraction``: pretraining on a fixed class-balanced share of the training images."""
from __future__ import annotations

import collections

import pytest
import torch

from pretrain.defaults import PRETRAIN_DEFAULTS
from pretrain.train import build_loader
from simsiam_eval.config import load_config
from simsiam_eval.distributed import DistInfo
from simsiam_eval.errors import UserError

INFO = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def loader_for(shapes_root, fraction):
    cfg = load_config("pretrain/shapes_cpu", PRETRAIN_DEFAULTS,
                      [f"data.train=shapes:{shapes_root}@train", f"data.fraction={fraction}", "batch_size=4",
                       "workers=0"])
    return build_loader(cfg, INFO)[0]


def test_a_fraction_keeps_that_share_of_every_class(shapes_root):
    full = loader_for(shapes_root, 1.0).dataset.dataset  # inside the WithIndex wrapper
    half = loader_for(shapes_root, 0.5).dataset.dataset
    per_class = collections.Counter(full.targets)
    kept = collections.Counter(full.targets[i] for i in half.indices)
    assert kept == {c: (n + 1) // 2 for c, n in per_class.items()}  # halves rounded up, counted by hand
    assert half.indices == loader_for(shapes_root, 0.5).dataset.dataset.indices  # fixed: the same images each run


def test_a_fraction_outside_the_range_is_refused(shapes_root):
    with pytest.raises(UserError, match=r"data.fraction must be in \(0, 1\], got 1.5"):
        loader_for(shapes_root, 1.5)
