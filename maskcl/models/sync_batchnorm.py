"""Batch norm over the global batch of a multi-process run, on any device (CPU/gloo included).

Why not ``torch.nn.SyncBatchNorm``: it refuses CPU tensors (torch 2.14), so a gloo run could not
normalise with global statistics and would differ from a single-process run with the same
global batch. This layer does the same maths on any device:

- forward: each rank's per-channel ``(mean, M2, count)`` are all-gathered and merged with Chan's
  parallel formula (numerically stable, unlike a raw sum of squares), giving the global mean and
  biased variance; ``y = γ·(x − μ)/√(σ² + ε) + β``; the running statistics move with the global
  *unbiased* variance exactly as :class:`torch.nn.BatchNorm2d` does (momentum, or the cumulative
  average when ``momentum is None``).
- backward: ``Σ dy`` and ``Σ dy·x̂`` are all-reduced, so each rank gets the gradient of the sum of
  all ranks' losses with respect to its own rows; DistributedDataParallel's averaging then turns
  that into the gradient of the global-batch mean. ``γ``/``β`` gradients stay local (DDP sums them).

Outside training, or without a process group, it is a plain batch norm. The state-dict keys are
those of ``nn.BatchNorm*``, so checkpoints move freely between single- and multi-process runs.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


def _channel_shape(x: Tensor) -> list[int]:
    return [1, x.shape[1]] + [1] * (x.dim() - 2)


class _SyncBatchNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        momentum: float,
        eps: float,
        group,
    ) -> Tensor:
        dims = [0] + list(range(2, x.dim()))
        x32 = x.float()
        channels = x.shape[1]
        local_n = x.numel() // channels
        var, mean = torch.var_mean(x32, dim=dims, correction=0)  # [C] each, this rank's rows
        count = torch.full((1,), float(local_n), dtype=x32.dtype, device=x32.device)  # no host copy
        local = torch.cat([mean, var * local_n, count])
        world = dist.get_world_size(group)
        parts = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(parts, local, group=group)
        stats = torch.stack(parts)  # [W, 2C+1]
        means, m2s, counts = stats[:, :channels], stats[:, channels:-1], stats[:, -1:]
        n = counts.sum()  # ≥ 2: every rank holds at least one row (no check: it would sync the GPU)
        g_mean = (counts * means).sum(0) / n  # [C]
        g_m2 = (m2s + counts * (means - g_mean).pow(2)).sum(0)  # Chan et al.: Σ M2_r + n_r·(μ_r − μ)²
        g_var = g_m2 / n  # biased: what normalises
        invstd = torch.rsqrt(g_var + eps)
        if running_mean is not None and running_var is not None:
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_(g_mean.to(running_mean.dtype), alpha=momentum)
                unbiased = g_m2 / (n - 1)
                running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
        shape = _channel_shape(x)
        xhat = (x32 - g_mean.view(shape)) * invstd.view(shape)
        y = xhat
        if weight is not None:
            y = y * weight.float().view(shape)
        if bias is not None:
            y = y + bias.float().view(shape)
        ctx.save_for_backward(x, weight, g_mean, invstd)
        ctx.n = n
        ctx.group = group
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, dy: Tensor):  # type: ignore[override]
        x, weight, mean, invstd = ctx.saved_tensors
        shape = _channel_shape(x)
        dims = [0] + list(range(2, x.dim()))
        dy32 = dy.float()
        xhat = (x.float() - mean.view(shape)) * invstd.view(shape)
        sum_dy = dy32.sum(dims)  # [C]
        sum_dy_xhat = (dy32 * xhat).sum(dims)  # [C]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            # every rank reaches this point (same graph everywhere), so the collective is matched
            both = torch.cat([sum_dy, sum_dy_xhat])
            dist.all_reduce(both, group=ctx.group)
            channels = x.shape[1]
            mean_dy = (both[:channels] / ctx.n).view(shape)
            mean_dy_xhat = (both[channels:] / ctx.n).view(shape)
            scale = invstd if weight is None else invstd * weight.float()
            grad_x = ((dy32 - mean_dy - xhat * mean_dy_xhat) * scale.view(shape)).to(x.dtype)
        if weight is not None and ctx.needs_input_grad[1]:
            grad_w = sum_dy_xhat.to(weight.dtype)
        if ctx.needs_input_grad[2]:
            grad_b = sum_dy.to(ctx.bias_dtype)
        return grad_x, grad_w, grad_b, None, None, None, None, None


class SyncBatchNorm(_BatchNorm):
    """Batch norm with statistics over every rank's rows (any device, any input ``[N, C, *]``)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, process_group=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.process_group = process_group

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected an input of at least 2 dimensions [N, C, ...], got {x.dim()}D")

    def forward(self, x: Tensor) -> Tensor:
        synced = self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size(
            self.process_group) > 1
        if not synced:
            return super().forward(x)
        self._check_input_dim(x)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as nn.BatchNorm
                momentum = 1.0 / float(self.num_batches_tracked)
        use_running = self.track_running_stats
        return _SyncBatchNormFunction.apply(
            x, self.weight, self.bias,
            self.running_mean if use_running else None, self.running_var if use_running else None,
            momentum, self.eps, self.process_group,
        )


def convert_sync_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """Every ``nn.BatchNorm*`` in ``module`` replaced by :class:`SyncBatchNorm`, in place.

    The new layer takes over the old one's Parameter objects and buffers, so an optimizer built
    before or after sees the same tensors and a frozen bias (``requires_grad=False``, the BN neck)
    stays frozen. Returns ``module`` (or the replacement when ``module`` itself is a batch norm).
    """
    if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
        sync = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                             module.track_running_stats, process_group)
        if module.affine:
            sync.weight = module.weight
            sync.bias = module.bias
        if module.track_running_stats:
            sync.running_mean = module.running_mean
            sync.running_var = module.running_var
            sync.num_batches_tracked = module.num_batches_tracked
        sync.train(module.training)
        return sync
    for name, child in module.named_children():
        replaced = convert_sync_batchnorm(child, process_group)
        if replaced is not child:
            setattr(module, name, replaced)
    return module
