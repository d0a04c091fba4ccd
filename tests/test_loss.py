import numpy as np
import pytest
import torch

from pretrain.loss import simsiam_loss


def numpy_cos(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture
def tensors():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(5, 7, generator=g, dtype=torch.float64) for _ in range(4)]


def test_symmetric_loss_equals_formula(tensors):
    p1, p2, z1, z2 = tensors
    a = [t.numpy() for t in tensors]
    expected = -0.5 * numpy_cos(a[0], a[3]).mean() - 0.5 * numpy_cos(a[1], a[2]).mean()
    assert simsiam_loss(p1, p2, z1, z2).item() == pytest.approx(expected, abs=1e-12)
    assert simsiam_loss(p1, p2, z1, z2, symmetric=False).item() == pytest.approx(-numpy_cos(a[0], a[3]).mean())


def test_cross_entropy_similarity_equals_formula(tensors):
    p1, p2, z1, z2 = tensors

    def ce(p, z):
        p, z = p.numpy(), z.numpy()
        softmax_z = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        log_softmax_p = p - np.log(np.exp(p).sum(1, keepdims=True))
        return -(softmax_z * log_softmax_p).sum(1).mean()

    expected = 0.5 * ce(p1, z2) + 0.5 * ce(p2, z1)
    assert simsiam_loss(p1, p2, z1, z2, similarity="cross_entropy").item() == pytest.approx(expected, abs=1e-12)


def test_minimum_is_minus_one():
    z = torch.randn(8, 16)
    assert simsiam_loss(2 * z, 3 * z, z, z).item() == pytest.approx(-1.0, abs=1e-6)


def test_stop_gradient_blocks_the_target_branch():
    encoder = torch.nn.Linear(6, 4)
    predictor = torch.nn.Linear(4, 4)
    x1, x2 = torch.randn(3, 6), torch.randn(3, 6)
    z1, z2 = encoder(x1), encoder(x2)
    z1.retain_grad()
    z2.retain_grad()
    p1, p2 = predictor(z1), predictor(z2)
    simsiam_loss(p1, p2, z1, z2).backward()
    # Gradients reach z only through p = h(z): equal to the chain rule through the predictor alone.
    z1_leaf, z2_leaf = z1.detach().clone().requires_grad_(), z2.detach().clone().requires_grad_()
    simsiam_loss(predictor(z1_leaf), predictor(z2_leaf), z1_leaf.detach(), z2_leaf.detach()).backward()
    assert torch.allclose(z1.grad, z1_leaf.grad) and torch.allclose(z2.grad, z2_leaf.grad)
    # Without the stop-gradient the target branch adds its own gradient.
    z1_free, z2_free = z1.detach().clone().requires_grad_(), z2.detach().clone().requires_grad_()
    simsiam_loss(predictor(z1_free), predictor(z2_free), z1_free, z2_free, stop_gradient=False).backward()
    assert not torch.allclose(z1_free.grad, z1_leaf.grad)


def test_no_gradient_flows_into_a_stopped_target():
    p = torch.randn(4, 8, requires_grad=True)
    z = torch.randn(4, 8, requires_grad=True)
    simsiam_loss(p, p, z, z).backward()
    assert z.grad is None and p.grad is not None and p.grad.abs().sum() > 0
