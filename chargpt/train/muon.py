"""Muon for the hidden layers' matrices, AdamW for the rest, as one optimizer under one LR scheduler.

torch.optim.Muon runs its Newton-Schulz orthogonalisation in bf16: right on a GPU, but a CPU without native
bf16 matmul emulates bf16 far slower than fp32 (docs/results.md has the measured cost). `Muon(ns_dtype=
torch.float32)` runs the same update with the iteration in fp32; with bf16 it is torch's own step.
"""

from __future__ import annotations

import math

import torch


def newton_schulz(
    matrix: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float, dtype: torch.dtype
) -> torch.Tensor:
    """The quintic Newton-Schulz iteration of torch.optim.Muon (Keller Jordan's coefficients), in `dtype`:
    an approximate U V^T of the matrix's SVD, its singular values pushed towards 1."""
    a, b, c = coefficients
    x = matrix.to(dtype)
    tall = matrix.size(0) > matrix.size(1)
    x = x.T if tall else x  # iterate on the wide orientation: the Gram matrix is the small side
    x = x / x.norm().clamp(min=eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def lr_ratio(adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """torch.optim.Muon's per-matrix LR scale: "original" (Keller Jordan) or "match_rms_adamw" (Moonshot)."""
    rows, cols = shape[:2]
    return 0.2 * math.sqrt(max(rows, cols)) if adjust_lr_fn == "match_rms_adamw" else math.sqrt(max(1, rows / cols))


def muon_update(
    param: torch.Tensor, grad: torch.Tensor, momentum_buffer: torch.Tensor, group: dict, ns_dtype: torch.dtype
) -> None:
    """One Muon step of one matrix, as torch.optim.Muon does it, with the orthogonalisation in `ns_dtype`."""
    lr, momentum = group["lr"], group["momentum"]
    momentum_buffer.lerp_(grad, 1 - momentum)
    update = grad.lerp(momentum_buffer, momentum) if group["nesterov"] else momentum_buffer
    update = newton_schulz(update, group["ns_coefficients"], group["ns_steps"], group["eps"], ns_dtype)
    param.mul_(1 - lr * group["weight_decay"])  # decoupled weight decay
    param.add_(update, alpha=-lr * lr_ratio(group["adjust_lr_fn"], param.shape))


class Muon(torch.optim.Muon):
    """torch.optim.Muon, with the dtype of its Newton-Schulz iteration as a choice (torch's: bf16)."""

    def __init__(self, params, ns_dtype: torch.dtype = torch.bfloat16, **kwargs):
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        if self.ns_dtype == torch.bfloat16:
            return super().step(closure)
        if closure is not None:
            raise ValueError("Muon.step takes no closure")
        self.own_step()
        return None

    @torch.no_grad()
    def own_step(self) -> None:
        """torch's step through muon_update, in ns_dtype (tests compare it with torch's in bf16)."""
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    state = self.state[param]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(param.grad)
                    muon_update(param, param.grad, state["momentum_buffer"], group, self.ns_dtype)


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon for the hidden layers' weight matrices, AdamW for the rest (embeddings, output head, biases,
    LayerNorm gains), stepped as one optimizer so that one LR scheduler drives both.

    The parent and the two children share the same param-group dicts, so a scheduler's LR reaches both.
    Muon runs with Moonshot's RMS matching (`adjust_lr_fn="match_rms_adamw"`): its update has AdamW's RMS, so
    one LR (and one LR range test) serves both. OneCycleLR cycles every group's beta1; Muon's (Nesterov)
    momentum is set from it before each step.
    """

    def __init__(
        self,
        hidden_matrices: list[torch.nn.Parameter],
        rest: list[dict],
        lr: float,
        momentum: float,
        beta2: float,
        weight_decay: float,
        ns_dtype: torch.dtype,
        adamw_kernel: dict,
    ):
        self.muon = Muon(
            [{"params": hidden_matrices, "weight_decay": weight_decay}],
            ns_dtype=ns_dtype,
            lr=lr,
            momentum=momentum,
            nesterov=True,
            adjust_lr_fn="match_rms_adamw",
        )
        self.adamw = torch.optim.AdamW(rest, lr=lr, betas=(momentum, beta2), **adamw_kernel)
        # The shared defaults: every group gets "betas" (Muon's too), so OneCycleLR cycles beta1 everywhere.
        super().__init__(self.muon.param_groups + self.adamw.param_groups, {"lr": lr, "betas": (momentum, beta2)})

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("MuonWithAdamW.step takes no closure")
        for group in self.muon.param_groups:
            group["momentum"] = group["betas"][0]
        self.muon.step()
        self.adamw.step()

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        if set(state_dict) != {"muon", "adamw"}:
            raise ValueError(
                f"not a MuonWithAdamW state (keys {sorted(state_dict)}); was the run trained with "
                f"another optimizer.name?"
            )
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        self.param_groups = self.muon.param_groups + self.adamw.param_groups  # loading made new group dicts
