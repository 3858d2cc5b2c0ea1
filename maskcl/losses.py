"""The MaskCL loss terms, as the authors' ``hm.py`` computes them (paper.md §2.5).

Per memory M with prototypes ``c_k`` (mean of member slots, see :mod:`maskcl.memory`):
``p = softmax_k(⟨f, c_k⟩ / τ)`` over *all* pseudo-classes, clusters and singletons alike.

- :func:`focal_prototype_loss`: ``mean_i −(1 − p_{i,y_i})^γ · log(p_{i,y_i} + 1e-6)`` (γ = 4).
- :func:`neighbour_loss`: cluster-level neighbour term with Bernoulli-sampled weights and the
  authors' batch-mean NLL quirk (below).
- :func:`sharded_neighbour_loss`: one process's share of the neighbour term when the global batch
  is split over processes (the mean of the shares is :func:`neighbour_loss` of the whole batch).
- :func:`cross_view_instance_loss` / :func:`cross_view_prototype_loss`: the RGB projection ``g``
  regresses the (stop-gradient) mask feature and the mask-memory prototype of its cluster.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-6  # the authors' guard inside log(p + 1e-6)


def prototype_probs(feats: Tensor, protos: Tensor, temp: float) -> Tensor:
    """``p [B, C] = softmax(feats [B,D] · protos [C,D]ᵀ / τ)``; gradient flows into ``feats`` only."""
    logits = feats.float() @ protos.detach().float().t() / temp
    return logits.softmax(dim=1)


def focal_prototype_loss(probs: Tensor, targets: Tensor, gamma: float = 4.0) -> Tensor:
    """``mean_i −(1 − p_t)^γ log(p_t + 1e-6)``; ``probs [B, C]``, ``targets [B]``.

    The focal factor is part of the graph (the authors' code differentiates through it too).
    """
    p_t = probs.gather(1, targets.view(-1, 1)).squeeze(1)  # [B]
    return (-(1.0 - p_t).pow(gamma) * torch.log(p_t + EPS)).mean()


def neighbour_loss(
    probs: Tensor,
    nbr_idx: Tensor,
    nbr_sim: Tensor,
    draws: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Cluster-neighbour term of the authors' ``calculate_knn_loss`` (paper.md §2.4–2.5).

    ``probs [B, C]`` as in :func:`prototype_probs`; ``nbr_idx [B, K]`` the K nearest *other*
    clusters of each sample's cluster and ``nbr_sim [B, K]`` their centroid similarities ``w``.
    With ``δ ~ Bernoulli(w)`` and ``NLL_j = mean_b −log(p[b, nbr_idx[b, j]] + 1e-6)``:

        L = (1 / (K + 1)) · mean_i Σ_j w_ij · δ_ij · NLL_j

    Quirk kept on purpose: ``NLL_j`` is the *batch mean* (``F.nll_loss``), so each sample's weight
    multiplies the whole batch's NLL toward the j-th neighbours, not its own. Negative
    similarities are clamped to 0 before the Bernoulli draw (the authors' ``torch.bernoulli``
    would fail on them); the clamped weight also scales the term, so such a neighbour contributes
    nothing. ``draws`` (``[B, K]`` of 0/1) replaces the random draw, for tests.
    """
    k = nbr_idx.shape[1]
    if k == 0:
        return probs.new_zeros(())
    weights = nbr_sim.detach().float().clamp(0.0, 1.0)  # [B, K]
    if draws is None:
        draws = torch.bernoulli(weights, generator=generator)
    nll = -torch.log(probs.gather(1, nbr_idx.long()) + EPS).mean(dim=0)  # [K] batch-mean NLL_j
    return (weights * draws * nll.unsqueeze(0)).sum(dim=1).mean() / (k + 1)


def sharded_neighbour_loss(
    probs: Tensor,
    nbr_idx: Tensor,
    batch_nbr_sim: Tensor,
    draws: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """This process's share of :func:`neighbour_loss` when the global batch is split over processes.

    :func:`neighbour_loss` is not a plain batch mean: ``L = (1/(K+1)) Σ_j W̄_j · NLL_j`` with
    ``W̄_j = mean_i w_ij δ_ij`` over the batch (no gradient) and ``NLL_j`` the batch-mean NLL.
    Here ``batch_nbr_sim [B, K]`` holds the weights of the WHOLE global batch, so the Bernoulli
    draws ``δ [B, K]`` (taken from the same RNG stream on every process) equal a single process's
    draws and ``W̄_j`` is the global one; ``probs [b, C]`` and ``nbr_idx [b, K]`` are this
    process's rows. The share ``(1/(K+1)) Σ_j W̄_j · NLL_j^local`` averaged over processes (as
    DistributedDataParallel averages gradients) is exactly the global-batch loss, since the global
    ``NLL_j`` is the mean of the processes' equal-sized local means.
    """
    k = nbr_idx.shape[1]
    if k == 0:
        return probs.new_zeros(())
    weights = batch_nbr_sim.detach().float().clamp(0.0, 1.0)  # [B, K], the global batch
    if draws is None:
        draws = torch.bernoulli(weights, generator=generator)
    w_bar = (weights * draws).mean(dim=0)  # [K] global mean of w·δ
    nll = -torch.log(probs.gather(1, nbr_idx.long()) + EPS).mean(dim=0)  # [K] this process's NLL_j
    return (w_bar * nll).sum() / (k + 1)


def cross_view_instance_loss(g: Tensor, target: Tensor) -> Tensor:
    """``−mean_i cos(g_i, sg(target_i))``: RGB projection ``g [B,D]`` toward the mask feature."""
    return -F.cosine_similarity(g.float(), target.detach().float(), dim=1).mean()


def cross_view_prototype_loss(g: Tensor, protos: Tensor, targets: Tensor) -> Tensor:
    """``−mean_i cos(g_i, sg(c_{y_i}))``: ``g [B,D]`` toward its cluster's mask prototype ``[C,D]``."""
    return -F.cosine_similarity(g.float(), protos.detach().float()[targets], dim=1).mean()


def authors_neighbour_weights(idx: Tensor, cos: Tensor, centroids: Tensor) -> Tensor:
    """The neighbour weights the authors' code actually feeds to the Bernoulli draw.

    Their ``cosinematrix`` divides ``A·Aᵀ`` by ``normᵀ·norm`` with ``norm`` of shape ``[C, 1]``,
    a ``[1, 1]`` product: ``Σ_k ‖c_k‖²`` instead of ``‖c_i‖·‖c_j‖``. The neighbour *order* is
    unchanged (one global scale), but the weights become ``⟨c_i, c_j⟩ / Σ_k ‖c_k‖²`` — about
    ``cos / C`` — so with hundreds of clusters the draws are almost always 0 and the neighbour
    term nearly vanishes. ``idx``/``cos [C, K]`` from ``cluster_neighbours``; ``centroids [C, D]``
    the unnormalised member means.
    """
    norms = centroids.detach().float().norm(dim=1)  # [C]
    return cos.float() * norms.unsqueeze(1) * norms[idx] / norms.pow(2).sum()
