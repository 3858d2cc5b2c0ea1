"""Memory update, prototypes and every loss term, against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from maskcl.losses import (
    EPS,
    cross_view_instance_loss,
    cross_view_prototype_loss,
    focal_prototype_loss,
    neighbour_loss,
    prototype_probs,
)
from maskcl.memory import InstanceMemory


def test_memory_update_is_momentum_mix_then_normalise() -> None:
    memory = InstanceMemory(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), momentum=0.2)
    memory.update(torch.tensor([[0.0, 1.0]]), torch.tensor([0]))
    norm = math.sqrt(0.2**2 + 0.8**2)
    assert memory.feats[0].tolist() == pytest.approx([0.2 / norm, 0.8 / norm])
    assert memory.feats[1].tolist() == pytest.approx([0.0, 1.0])  # untouched slot


def test_memory_repeated_index_is_applied_in_order() -> None:
    memory = InstanceMemory(torch.tensor([[1.0, 0.0]]), momentum=0.5)
    memory.update(torch.tensor([[0.0, 1.0], [-1.0, 0.0]]), torch.tensor([0, 0]))
    # first: (0.5, 0.5)/√0.5 = (a, a), a = 1/√2; second: (0.5a − 0.5, 0.5a) normalised
    a = 1 / math.sqrt(2)
    x, y = 0.5 * a - 0.5, 0.5 * a
    n = math.hypot(x, y)
    assert memory.feats[0].tolist() == pytest.approx([x / n, y / n])


def test_memory_initialisation_normalises() -> None:
    memory = InstanceMemory(torch.tensor([[3.0, 4.0]]))
    assert memory.feats[0].tolist() == pytest.approx([0.6, 0.8])


def test_prototypes_are_unnormalised_member_means() -> None:
    memory = InstanceMemory(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]))
    memory.set_labels(torch.tensor([0, 0, 1]))
    protos = memory.prototypes()
    assert protos.tolist() == [pytest.approx([0.5, 0.5]), pytest.approx([0.6, 0.8])]


def test_memory_state_round_trip() -> None:
    memory = InstanceMemory(torch.randn(4, 3), momentum=0.3)
    memory.set_labels(torch.tensor([0, 1, 1, 2]))
    again = InstanceMemory.from_state_dict(memory.state_dict())
    assert torch.equal(again.feats, memory.feats) and torch.equal(again.labels, memory.labels)
    assert again.momentum == 0.3 and again.num_classes == 3


def test_focal_prototype_loss_by_hand() -> None:
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    protos = torch.tensor([[0.5, 0.5], [0.6, 0.8]])
    probs = prototype_probs(feats, protos, temp=0.5)
    # sample 0: logits (1.0, 1.2) → p0 = 1/(1+e^0.2); sample 1: logits (1.0, 1.6) → p1 = 1/(1+e^-0.6)
    p0 = 1 / (1 + math.exp(0.2))
    p1 = 1 / (1 + math.exp(-0.6))
    assert probs[0, 0].item() == pytest.approx(p0, rel=1e-5)
    assert probs[1, 1].item() == pytest.approx(p1, rel=1e-5)
    loss = focal_prototype_loss(probs, torch.tensor([0, 1]), gamma=4.0)
    expected = (-(1 - p0) ** 4 * math.log(p0 + EPS) - (1 - p1) ** 4 * math.log(p1 + EPS)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_focal_gamma_zero_is_cross_entropy() -> None:
    probs = torch.tensor([[0.25, 0.75]])
    loss = focal_prototype_loss(probs, torch.tensor([1]), gamma=0.0)
    assert loss.item() == pytest.approx(-math.log(0.75 + EPS), rel=1e-6)


def test_prototype_probs_do_not_backprop_into_memory() -> None:
    feats = torch.tensor([[1.0, 0.0]], requires_grad=True)
    protos = torch.tensor([[0.5, 0.5], [0.6, 0.8]], requires_grad=True)
    focal_prototype_loss(prototype_probs(feats, protos, 0.05), torch.tensor([0])).backward()
    assert feats.grad is not None and protos.grad is None


def test_neighbour_loss_by_hand_with_batch_mean_nll() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    idx = torch.tensor([[1, 2], [0, 2]])
    sim = torch.tensor([[0.5, -0.2], [0.9, 0.3]])  # the negative one is clamped to 0
    draws = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss = neighbour_loss(probs, idx, sim, draws=draws)
    nll0 = (-math.log(0.3 + EPS) - math.log(0.1 + EPS)) / 2  # batch mean toward each 1st neighbour
    nll1 = (-math.log(0.2 + EPS) - math.log(0.3 + EPS)) / 2
    s0 = 0.5 * 1 * nll0 + 0.0 * 1 * nll1
    s1 = 0.9 * 1 * nll0 + 0.3 * 0 * nll1
    assert loss.item() == pytest.approx((s0 + s1) / 2 / 3, rel=1e-6)


def test_neighbour_loss_bernoulli_draws_follow_weights() -> None:
    probs = torch.full((2, 3), 1 / 3)
    idx = torch.tensor([[1, 2], [0, 2]])
    nll = -math.log(1 / 3 + EPS)
    sure = neighbour_loss(probs, idx, torch.tensor([[1.0, 1.0], [1.0, 1.0]]))
    assert sure.item() == pytest.approx(2 * nll / 3, rel=1e-6)  # every draw is 1
    never = neighbour_loss(probs, idx, torch.tensor([[0.0, -0.5], [-1.0, 0.0]]))  # negatives: no crash
    assert never.item() == 0.0
    assert neighbour_loss(probs, idx[:, :0], torch.zeros(2, 0)).item() == 0.0


def test_cross_view_instance_loss_by_hand_and_stop_gradient() -> None:
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    target = torch.tensor([[1.0, 1.0], [0.0, -1.0]], requires_grad=True)
    loss = cross_view_instance_loss(g, target)
    assert loss.item() == pytest.approx(-(1 / math.sqrt(2) - 1) / 2, rel=1e-6)
    loss.backward()
    assert g.grad is not None and target.grad is None


def test_cross_view_prototype_loss_by_hand() -> None:
    g = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    protos = torch.tensor([[0.0, 2.0], [3.0, 4.0]])
    loss = cross_view_prototype_loss(g, protos, torch.tensor([1, 0]))
    assert loss.item() == pytest.approx(-(0.6 + 1.0) / 2, rel=1e-6)


def test_authors_neighbour_weights_by_hand() -> None:
    from maskcl.losses import authors_neighbour_weights

    centroids = torch.tensor([[1.0, 0.0], [0.0, 0.5], [0.6, 0.8]])
    idx = torch.tensor([[2, 1], [2, 0], [1, 0]])  # each cluster's neighbours, by decreasing cosine
    cos = torch.tensor([[0.6, 0.0], [0.8, 0.0], [0.8, 0.6]])  # true cosines of those pairs
    weights = authors_neighbour_weights(idx, cos, centroids)
    total = 1.0 + 0.25 + 1.0  # Σ_k ‖c_k‖²; the weight is the dot product ⟨c_i, c_j⟩ over it
    assert weights.tolist() == [
        pytest.approx([0.6 / total, 0.0]),
        pytest.approx([0.4 / total, 0.0]),
        pytest.approx([0.4 / total, 0.6 / total]),
    ]
