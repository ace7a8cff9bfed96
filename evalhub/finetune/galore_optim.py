"""GaLore's projected AdamW (Zhao et al., 2024, "GaLore: Memory-Efficient LLM Training by Gradient
Low-Rank Projection"), written here because galore-torch is an optional GPU extra.

For a 2-D gradient G (m x n) and rank r, every `update_interval` steps an SVD G = U S V^T picks a
projector: P = V[:, :r]^T (r x n) when m >= n, else P = U[:, :r] (m x r). Adam's moments are kept
for the projected gradient (m x r, or r x n), the normalised update is projected back to m x n and
multiplied by `scale`. Parameters in a group with rank None get ordinary AdamW.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, overload

import torch


def _right_side(shape: torch.Size) -> bool:
    return shape[0] >= shape[1]


def compute_projector(grad: torch.Tensor, rank: int) -> torch.Tensor:
    """The top-r singular vectors on the gradient's smaller side."""
    u, _, vh = torch.linalg.svd(grad.float(), full_matrices=False)
    if _right_side(grad.shape):
        return vh[:rank, :].contiguous()
    return u[:, :rank].contiguous()


def project(grad: torch.Tensor, projector: torch.Tensor) -> torch.Tensor:
    if _right_side(grad.shape):
        return grad.float() @ projector.t()
    return projector.t() @ grad.float()


def project_back(
    low_rank: torch.Tensor, projector: torch.Tensor, shape: torch.Size
) -> torch.Tensor:
    if _right_side(shape):
        return low_rank @ projector
    return projector @ low_rank


class GaLoreAdamW(torch.optim.Optimizer):
    """AdamW with decoupled weight decay; groups with an integer `rank` use projected moments."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        rank: int | None = None,
        update_interval: int = 200,
        scale: float = 0.25,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "rank": rank,
            "update_interval": update_interval,
            "scale": scale,
        }
        super().__init__(params, defaults)

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                self._update(parameter, group, beta1, beta2)
        return loss

    def _update(
        self, parameter: torch.Tensor, group: dict[str, Any], beta1: float, beta2: float
    ) -> None:
        state = self.state[parameter]
        grad = parameter.grad
        assert grad is not None
        step = int(state.get("step", 0)) + 1
        state["step"] = step
        rank = group["rank"]
        low_rank = rank is not None and grad.dim() == 2 and rank < min(grad.shape)
        if low_rank:
            if "projector" not in state or (step - 1) % group["update_interval"] == 0:
                state["projector"] = compute_projector(grad, rank)
            grad = project(grad, state["projector"])
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(grad, dtype=torch.float32)
            state["exp_avg_sq"] = torch.zeros_like(grad, dtype=torch.float32)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        grad = grad.float()
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias1 = 1 - beta1**step
        bias2 = 1 - beta2**step
        update = (exp_avg / bias1) / ((exp_avg_sq / bias2).sqrt_().add_(group["eps"]))
        if low_rank:
            update = project_back(update, state["projector"], parameter.shape) * group["scale"]
        if group["weight_decay"]:
            parameter.mul_(1 - group["lr"] * group["weight_decay"])
        parameter.add_(update.to(parameter.dtype), alpha=-group["lr"])
