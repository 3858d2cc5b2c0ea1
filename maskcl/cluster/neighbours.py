"""Cluster-level neighbours (the "higher level" of the hierarchy) and their curriculum.

Each pseudo-label's centroid is the mean of its members' slots in a memory (the authors use
the fusion memory); clusters are compared by the cosine of their centroids, and each cluster
gets its ``k`` most similar *other* clusters. Singletons are pseudo-labels too, so C can be
close to N: the C×C similarity is never materialised, only blocks of it.
"""

from __future__ import annotations

from typing import Any


def curriculum_k(allknn: int, epoch: int, epochs: int) -> int:
    """Neighbour clusters used at 0-based ``epoch``: ``floor(allknn · epoch / epochs)``.

    Integer arithmetic. The authors write ``int(allknn / epochs * epoch)`` in floating point,
    which equals this for epochs = 60 and every allknn < 84 (all published settings), but
    rounds down a few exact integers elsewhere (e.g. allknn 2, epoch 49, epochs 98 gives 0).
    """
    if epochs <= 0:
        raise ValueError(f"curriculum_k: epochs={epochs} must be > 0")
    return max(0, allknn * epoch // epochs)


def cluster_neighbours(memory: Any, labels: Any, k: int, block: int = 4096) -> tuple[Any, Any]:
    """Nearest other clusters by centroid cosine.

    Args:
        memory: [N, D] float tensor (any device), one slot per sample.
        labels: [N] integer labels in 0..C−1 (every value used), tensor or array.
        k: neighbours per cluster; clamped to C − 1.
        block: rows of the [block, C] similarity computed at once.

    Returns:
        ``(idx [C, k] long, sim [C, k] float)`` on ``memory.device``, sorted by decreasing
        similarity, the cluster itself excluded.
    """
    import torch

    labels_t = torch.as_tensor(labels, device=memory.device).long()
    n_clusters = int(labels_t.max().item()) + 1
    k = max(0, min(k, n_clusters - 1))
    feats = memory.float()
    sums = torch.zeros(n_clusters, feats.shape[1], device=feats.device, dtype=feats.dtype)
    sums.index_add_(0, labels_t, feats)
    counts = torch.bincount(labels_t, minlength=n_clusters).clamp(min=1).to(feats.dtype)
    centroids = torch.nn.functional.normalize(sums / counts[:, None], dim=1)  # [C, D]
    idx_out = torch.empty(n_clusters, k, dtype=torch.long, device=feats.device)
    sim_out = torch.empty(n_clusters, k, dtype=feats.dtype, device=feats.device)
    if k == 0:
        return idx_out, sim_out
    with torch.no_grad():
        for a in range(0, n_clusters, block):
            b = min(n_clusters, a + block)
            s = centroids[a:b] @ centroids.T  # [b, C]
            s[torch.arange(b - a, device=s.device), torch.arange(a, b, device=s.device)] = float("-inf")
            vals, ids = torch.topk(s, k, dim=1, largest=True, sorted=True)
            idx_out[a:b] = ids
            sim_out[a:b] = vals
    return idx_out, sim_out
