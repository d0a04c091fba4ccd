"""Mechanics of the paper's Sec. 4.6, 5 and 6 variants: asymmetric 2x, k-step alternation, expectation over
augmentations, momentum-encoder target. Each is checked against the step written out by hand here."""
from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from pretrain.loss import paired_views_loss
from pretrain.model import build_model
from pretrain.targets import (AlternationTargets, ExpectationTargets, MomentumEncoderTargets, OnlineTargets,
                              batch_blocks)
from pretrain.train import build_loader, train_one_epoch
from tests.pretrain_loop import CPU, tiny_config
from tests.test_pretrain import pretrain

LR = 0.05
# The loop-versus-oracle tests run in float64: in float32, targets from a no-grad forward (another conv
# kernel) already differ by ~1e-6 and three steps of a BatchNorm-heavy toy net amplify that to ~1e-3.


def batches(count: int, views: int = 2, size: int = 6, seed: int = 1) -> list:
    g = torch.Generator().manual_seed(seed)
    return [([torch.randn(size, 3, 32, 32, generator=g, dtype=torch.float64) for _ in range(views)], torch.arange(i * size, (i + 1) * size))
            for i in range(count)]


def run_loop(cfg, model, data, targets) -> None:
    """The real loop with plain SGD (lr LR, no momentum or decay), so the oracle's step is w -= LR * grad."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    train_one_epoch(model, data, optimizer, torch.amp.GradScaler("cuda", enabled=False), cfg, CPU, 0, LR, None,
                    targets)


def neg_cos(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return -(F.normalize(p, dim=1) * F.normalize(t.detach(), dim=1)).sum(dim=1).mean()


def sgd_step(model) -> None:
    with torch.no_grad():
        for w in model.parameters():
            if w.grad is not None:
                w -= LR * w.grad
                w.grad = None


def assert_same_parameters(actual, expected, initial) -> None:
    for (name, a), (_, e), (_, i) in zip(actual.named_parameters(), expected.named_parameters(),
                                         initial.named_parameters()):
        moved = (e - i).abs().max().item()
        assert torch.allclose(a, e, atol=1e-7 + 1e-5 * moved, rtol=0), name


def differs(a, b) -> bool:
    return any(not torch.allclose(x, y, atol=1e-5) for x, y in zip(a.parameters(), b.parameters()))


# --- asymmetric 2x: two pairs of views per image ------------------------------------------------------------

def test_paired_views_loss_is_the_mean_over_pairs_by_hand():
    g = np.random.default_rng(0)
    a = g.normal(size=(8, 5, 7))  # p1..p4, z1..z4
    t = [torch.from_numpy(x) for x in a]
    cos = lambda u, v: (u * v).sum(1) / np.linalg.norm(u, axis=1) / np.linalg.norm(v, axis=1)  # noqa: E731
    asym_2x = 0.5 * (-cos(a[0], a[5]).mean() - cos(a[2], a[7]).mean())
    sym_2x = 0.5 * (0.5 * (-cos(a[0], a[5]).mean() - cos(a[1], a[4]).mean())
                    + 0.5 * (-cos(a[2], a[7]).mean() - cos(a[3], a[6]).mean()))
    assert paired_views_loss(t[:4], t[4:], symmetric=False).item() == pytest.approx(asym_2x, abs=1e-12)
    assert paired_views_loss(t[:4], t[4:]).item() == pytest.approx(sym_2x, abs=1e-12)
    assert paired_views_loss(t[:2], [t[4], t[5]], symmetric=False).item() == pytest.approx(-cos(a[0], a[5]).mean())
    with pytest.raises(ValueError, match="pairs"):
        paired_views_loss(t[:3], t[4:7])


def test_two_pairs_per_image_reach_the_model(shapes_root):
    cfg = tiny_config(f"data.train=shapes:{shapes_root}@train", "data.image_size=32", "batch_size=4", "workers=0",
                      "loss.pairs=2", "loss.symmetric=false")
    loader, _ = build_loader(cfg, CPU)
    views, indices = next(iter(loader))
    assert len(views) == 4 and indices.tolist() != [] and indices.max() < len(loader.dataset)
    assert all(not torch.equal(views[0], v) for v in views[1:])  # four independent augmentations
    model = build_model(cfg.model)
    calls = []
    model.encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    run_loop(cfg, model, [(views, indices)], OnlineTargets())
    assert calls == [4] * 4  # one step: the encoder saw each of the four views as its own batch


# --- multi-step alternation -------------------------------------------------------------------------------

@pytest.mark.parametrize("steps", [3, 0])
def test_alternation_trains_on_targets_computed_before_the_k_steps(steps):
    cfg = tiny_config("target.kind=alternation", f"target.steps={steps}")
    torch.manual_seed(0)
    initial = build_model(cfg.model).double()
    data = batches(3)
    ours = copy.deepcopy(initial)
    run_loop(cfg, ours, data, AlternationTargets(steps))

    oracle = copy.deepcopy(initial).train()
    with torch.no_grad():  # eta for all three steps, by the encoder as it is before them
        cached = [[oracle.encoder(x) for x in views] for views, _ in data]
    for ((x1, x2), _), (t1, t2) in zip(data, cached):
        p1, p2 = oracle.predictor(oracle.encoder(x1)), oracle.predictor(oracle.encoder(x2))
        (0.5 * neg_cos(p1, t2) + 0.5 * neg_cos(p2, t1)).backward()
        sgd_step(oracle)
    assert_same_parameters(ours, oracle, initial)

    simsiam = copy.deepcopy(initial)  # targets refreshed every step: another result
    run_loop(cfg, simsiam, data, OnlineTargets())
    assert differs(simsiam, ours)


def test_batch_blocks():
    assert list(batch_blocks(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(batch_blocks(range(4), 0)) == [[0, 1, 2, 3]]
    assert list(batch_blocks(range(2), 1)) == [[0], [1]]


# --- expectation over augmentations -----------------------------------------------------------------------

def test_moving_average_follows_its_formula():
    eta = ExpectationTargets(num_images=5, dim=3, momentum=0.8, device=torch.device("cpu"))
    first = eta.update(torch.tensor([1, 3]), torch.tensor([[1., 2., 3.], [4., 5., 6.]]))
    assert first.tolist() == [[1., 2., 3.], [4., 5., 6.]]  # first visit: eta = F(T'(x))
    second = eta.update(torch.tensor([3, 4]), torch.tensor([[10., 10., 10.], [7., 8., 9.]]))
    # image 3: 0.8 * [4, 5, 6] + 0.2 * [10, 10, 10]; image 4: first visit
    assert torch.allclose(second, torch.tensor([[5.2, 6.0, 6.8], [7., 8., 9.]]))
    assert eta.eta[0].tolist() == [0., 0., 0.] and eta.seen.tolist() == [False, True, False, True, True]
    assert eta.eta[3].tolist() == pytest.approx([5.2, 6.0, 6.8])
    # two views: their mean is the visit's sample
    targets = eta.targets([torch.tensor([[0., 0., 0.]]), torch.tensor([[2., 4., 6.]])], [], torch.tensor([1]), 0)
    assert len(targets) == 2 and all(torch.allclose(t, torch.tensor([[1., 2., 3.]])) for t in targets)  # 0.8 a + 0.2 a
    with pytest.raises(Exception, match="average_momentum"):
        ExpectationTargets(2, 3, momentum=1.0, device=torch.device("cpu"))


def _expectation_worker(rank: int, init_file: str, visits, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    eta = ExpectationTargets(num_images=6, dim=2, momentum=0.8, device=torch.device("cpu"), dtype=torch.float64)
    returned = [eta.targets([z[rank]], [], indices[rank], 0)[0] for indices, z in visits]
    results[rank] = (eta.eta.clone(), eta.seen.clone(), returned)
    dist.destroy_process_group()


def test_two_processes_share_one_moving_average(tmp_path):
    """Each process sees other images; after every visit both hold the average over all of them, by hand."""
    visits = [(torch.tensor([[0, 1], [2, 3]]), torch.tensor([[[1., 0.], [0., 1.]], [[2., 2.], [3., 3.]]],
                                                            dtype=torch.float64)),
              (torch.tensor([[2, 5], [1, 4]]), torch.tensor([[[8., 8.], [5., 5.]], [[4., 6.], [7., 7.]]],
                                                            dtype=torch.float64))]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_expectation_worker, args=(str(tmp_path / "init"), visits, results), nprocs=2)
        got = [results[0], results[1]]
    # by hand: first visits take z; image 2 (rank 0's 2nd visit) 0.8 [2, 2] + 0.2 [8, 8] = [3.2, 3.2];
    # image 1 (rank 1's 2nd visit) 0.8 [0, 1] + 0.2 [4, 6] = [0.8, 2.0]
    expected = torch.tensor([[1., 0.], [0.8, 2.], [3.2, 3.2], [3., 3.], [7., 7.], [5., 5.]], dtype=torch.float64)
    for rank in (0, 1):
        eta, seen, returned = got[rank]
        assert torch.allclose(eta, expected, atol=1e-12) and seen.all(), rank
        assert torch.equal(returned[0], visits[0][1][rank])  # first visits: the targets are z
        assert torch.allclose(returned[1], expected[visits[1][0][rank]], atol=1e-12)  # this process's own rows


def test_expectation_step_trains_towards_the_per_image_average():
    cfg = tiny_config("target.kind=expectation", "model.predictor=false")
    torch.manual_seed(0)
    initial = build_model(cfg.model).double()
    data = batches(1, size=4)
    (x1, x2), indices = data[0]
    eta = ExpectationTargets(num_images=10, dim=cfg.model.dim, momentum=0.8, device=torch.device("cpu"),
                             dtype=torch.float64)
    eta.update(indices, torch.ones(4, cfg.model.dim, dtype=torch.float64))  # an earlier visit left eta = 1 for these images
    ours = copy.deepcopy(initial)
    run_loop(cfg, ours, data, eta)

    oracle = copy.deepcopy(initial).train()
    z1, z2 = oracle.encoder(x1), oracle.encoder(x2)
    expected_eta = 0.8 * torch.ones(4, cfg.model.dim, dtype=torch.float64) + 0.2 * (z1.detach() + z2.detach()) / 2
    (0.5 * neg_cos(z1, expected_eta) + 0.5 * neg_cos(z2, expected_eta)).backward()
    sgd_step(oracle)
    assert torch.allclose(eta.eta[indices], expected_eta, atol=1e-12)
    assert_same_parameters(ours, oracle, initial)
    assert differs(ours, initial)


def test_the_loader_gives_image_indices(shapes_root):
    cfg = tiny_config(f"data.train=shapes:{shapes_root}@train", "data.image_size=32", "batch_size=4", "workers=0")
    loader, _ = build_loader(cfg, CPU)
    seen = torch.cat([indices for _, indices in loader]).tolist()
    assert len(set(seen)) == len(seen) == len(loader) * 4 and max(seen) < len(loader.dataset)
    assert [loader.dataset[i][1] for i in (0, 7)] == [0, 7]


# --- momentum encoder -------------------------------------------------------------------------------------

def test_momentum_schedule_by_hand():
    target = MomentumEncoderTargets(torch.nn.Linear(2, 2), base_momentum=0.99, total_steps=4)
    assert [target.momentum(s) for s in (0, 2, 4)] == pytest.approx([0.99, 0.995, 1.0])


def test_momentum_encoder_gets_no_gradient_and_follows_its_formula():
    cfg = tiny_config("target.kind=momentum_encoder")
    torch.manual_seed(0)
    initial = build_model(cfg.model).double()
    data = batches(2)
    ours = copy.deepcopy(initial)
    target = MomentumEncoderTargets(ours.encoder, base_momentum=0.9, total_steps=2)
    run_loop(cfg, ours, data, target)
    assert all(not p.requires_grad and p.grad is None for p in target.encoder.parameters())

    oracle, ema = copy.deepcopy(initial).train(), copy.deepcopy(initial.encoder).train()
    for step, ((x1, x2), _) in enumerate(data):
        with torch.no_grad():
            t1, t2 = ema(x1), ema(x2)
        p1, p2 = oracle.predictor(oracle.encoder(x1)), oracle.predictor(oracle.encoder(x2))
        (0.5 * neg_cos(p1, t2) + 0.5 * neg_cos(p2, t1)).backward()
        sgd_step(oracle)
        tau = (0.9, 0.95)[step]  # 1 - (1 - 0.9) (cos(pi step / 2) + 1) / 2
        with torch.no_grad():
            for xi, theta in zip(ema.parameters(), oracle.encoder.parameters()):
                xi.copy_(tau * xi + (1 - tau) * theta)
    assert_same_parameters(ours, oracle, initial)
    assert_same_parameters(target.encoder, ema, initial.encoder)
    assert differs(target.encoder, ours.encoder) and differs(target.encoder, initial.encoder)


# --- through the command: resume, refusals ----------------------------------------------------------------

@pytest.mark.parametrize("kind", ["expectation", "momentum_encoder"])
def test_resume_restores_the_target_state(shapes_root, tmp_path, kind):
    extra = [f"target.kind={kind}", "model.predictor=false" if kind == "expectation" else "model.predictor=true"]
    assert pretrain(shapes_root, tmp_path / "straight", "epochs=2", *extra) == 0
    (tmp_path / "resumed").mkdir()  # killed after epoch 1 (the momentum schedule spans all planned steps)
    shutil.copy(tmp_path / "straight/checkpoint_0000.pth.tar", tmp_path / "resumed")
    assert pretrain(shapes_root, tmp_path / "resumed", "epochs=2", *extra) == 0
    straight = torch.load(tmp_path / "straight/checkpoint_0001.pth.tar", weights_only=True)
    resumed = torch.load(tmp_path / "resumed/checkpoint_0001.pth.tar", weights_only=True)
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    flat = lambda state: torch.cat([t.flatten().float() for t in state.values()])  # noqa: E731
    saved = straight["targets"] if kind == "expectation" else straight["targets"]["encoder"]
    assert torch.equal(flat(saved), flat(resumed["targets"] if kind == "expectation" else resumed["targets"]["encoder"]))
    assert flat(saved).abs().sum() > 0


def test_resume_with_another_target_kind_and_bad_keys_are_refused(shapes_root, tmp_path, capsys):
    assert pretrain(shapes_root, tmp_path, "epochs=1") == 0
    assert pretrain(shapes_root, tmp_path, "epochs=2", "target.kind=momentum_encoder") != 0
    assert "target.kind=online" in capsys.readouterr().err
    for bad, message in [("target.kind=byol", "target.kind must be one of"), ("loss.pairs=0", "loss.pairs"),
                         ("target.steps=-1", "target.steps")]:
        kind = [] if bad.startswith("target.kind") else ["target.kind=alternation"]
        assert pretrain(shapes_root, tmp_path / "new", "epochs=1", *kind, bad) != 0
        assert message in capsys.readouterr().err
    assert pretrain(shapes_root, tmp_path / "nosg", "epochs=1", "target.kind=momentum_encoder",
                    "loss.stop_gradient=false") != 0
    assert "stop_gradient" in capsys.readouterr().err
