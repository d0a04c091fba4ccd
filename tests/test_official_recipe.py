"""CI stand-ins for tools/parity/simsiam_pretrain.py (no official checkout here): the presets against
main_simsiam.py's argument defaults and appendix D, and the real training loop against a written-out
statement of one official step.

main_simsiam.py's step, as its code and the paper state it: the builder returns (p1, p2, z1.detach(),
z2.detach()); the criterion is nn.CosineSimilarity(dim=1) and loss = -(D(p1, z2).mean() + D(p2, z1).mean())
x 0.5; then torch's SGD with momentum m and weight decay wd on every parameter with a gradient:
d = g + wd w; buf = d on the first step, else m buf + d; w <- w - lr buf. Each epoch sets
lr = init_lr x 0.5 (1 + cos(pi e / E)), except --fix-pred-lr's predictor group, which keeps init_lr.
"""
import copy

import pytest
import torch
import torch.nn as nn

from pretrain.defaults import PRETRAIN_DEFAULTS
from pretrain.model import build_model
from pretrain.train import seed_everything
from pretrain_loop import CPU, run_real_loop, tiny_config
from simsiam_eval.config import load_config

BATCH, EPOCHS, MOMENTUM = 8, 4, 0.9
# lr of a 4-epoch cosine schedule from 0.1: 0.05 (1 + cos(pi e / 4)), e = 0..3
COSINE_4 = [0.1, 0.08535533905932738, 0.05, 0.014644660940672624]


def test_imagenet_preset_is_the_official_default_run():
    """main_simsiam.py's argument defaults: resnet50, 100 epochs, batch 512, lr 0.05, momentum 0.9, wd 1e-4,
    dim 2048, pred_dim 512; --fix-pred-lr is the setting its README recommends."""
    cfg = load_config("pretrain/imagenet_r50", PRETRAIN_DEFAULTS)
    assert (cfg.model.arch, cfg.model.stem, cfg.model.proj_layers, cfg.model.dim, cfg.model.pred_dim) == (
        "resnet50", "imagenet", 3, 2048, 512)
    assert (cfg.epochs, cfg.batch_size) == (100, 512)
    assert (cfg.optim.base_lr, cfg.optim.momentum, cfg.optim.weight_decay) == (0.05, 0.9, 1e-4)
    assert (cfg.optim.fix_pred_lr, cfg.optim.warmup_epochs) == (True, 0)


def test_cifar_preset_is_appendix_d():
    """Appendix D: CIFAR ResNet-18, 2-layer projector, dim 2048, base lr 0.03, wd 5e-4, momentum 0.9,
    batch 512, 800 epochs, no blur."""
    cfg = load_config("pretrain/cifar10_r18", PRETRAIN_DEFAULTS)
    assert (cfg.model.arch, cfg.model.stem, cfg.model.width, cfg.model.proj_layers, cfg.model.dim) == (
        "resnet18", "cifar", 64, 2, 2048)
    assert (cfg.epochs, cfg.batch_size, cfg.data.image_size, cfg.data.blur) == (800, 512, 32, False)
    assert (cfg.optim.base_lr, cfg.optim.momentum, cfg.optim.weight_decay) == (0.03, 0.9, 5e-4)


def official_step(net: nn.Module, x1, x2, lrs: dict, buffers: dict, weight_decay: float) -> float:
    """One step of main_simsiam.train, written out (see the module docstring); returns the loss."""
    z1, z2 = net.encoder(x1), net.encoder(x2)
    p1, p2 = net.predictor(z1), net.predictor(z2)
    cosine = nn.CosineSimilarity(dim=1)
    loss = -(cosine(p1, z2.detach()).mean() + cosine(p2, z1.detach()).mean()) * 0.5
    net.zero_grad(set_to_none=True)
    loss.backward()
    with torch.no_grad():
        for name, w in net.named_parameters():
            if w.grad is None:
                continue
            d = w.grad + weight_decay * w
            buffers[name] = d.clone() if name not in buffers else MOMENTUM * buffers[name] + d
            w -= lrs[name] * buffers[name]
    return loss.item()


@pytest.mark.parametrize("fix_pred_lr", [True, False])
@pytest.mark.parametrize("preset", ["imagenet", "cifar"])
def test_real_loop_equals_the_official_step_written_out(preset, fix_pred_lr):
    """Guards the loss, parameter and buffer rows of tools/parity/simsiam_pretrain.py."""
    model = ["model.stem=imagenet", "model.width=64", "model.proj_layers=3"] if preset == "imagenet" else \
        ["model.proj_layers=2"]
    weight_decay = 1e-4 if preset == "imagenet" else 5e-4
    cfg = tiny_config(*model, f"batch_size={BATCH}", f"epochs={EPOCHS}", "optim.base_lr=3.2",  # init lr 0.1
                      f"optim.weight_decay={weight_decay}", f"optim.fix_pred_lr={fix_pred_lr}")
    g = torch.Generator().manual_seed(1)
    views = [(torch.randn(BATCH, 3, 32, 32, generator=g), torch.randn(BATCH, 3, 32, 32, generator=g))
             for _ in range(EPOCHS)]
    labels = torch.zeros(BATCH, dtype=torch.long)

    seed_everything(cfg.seed)
    net = build_model(cfg.model)  # the same initial weights as the loop's model
    initial = copy.deepcopy(net.state_dict())
    buffers, expected_losses = {}, []
    for epoch, (x1, x2) in enumerate(views):
        lrs = {n: 0.1 if fix_pred_lr and n.startswith("predictor.") else COSINE_4[epoch]
               for n, _ in net.named_parameters()}
        expected_losses.append(official_step(net.train(), x1.clone(), x2.clone(), lrs, buffers, weight_decay))

    state, _, losses = run_real_loop(cfg, CPU, [[([x1.clone(), x2.clone()], labels)] for x1, x2 in views])
    assert losses == pytest.approx(expected_losses, abs=1e-6)
    expected = net.state_dict()
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        # fp32 sums in another order (this CPU's conv backward kernels) leave up to ~1e-5 on conv1 after
        # 4 steps: the tolerance is 0.1% of how far the tensor moved (a dropped term moves it by far more)
        moved_here = (value.double() - initial[key].double()).abs().max().item()
        assert torch.allclose(state[key].double(), value.double(), atol=1e-6 + 1e-3 * moved_here, rtol=0), key
    moved = max((expected[k].double() - initial[k].double()).abs().max().item() for k in expected)
    assert moved > 1e-2  # the steps did move the weights (the comparison is not trivially true)
