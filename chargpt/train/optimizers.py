"""The run's optimizer: SGD with Nesterov momentum, AdamW (beta1 is the cycled momentum), or Muon for the
transformer blocks' matrices with AdamW for the rest, stepped as one (chargpt.train.muon).

For a step captured in a CUDA graph (chargpt.train.cuda_graphs) each optimizer must read its scheduled LR and
momentum from device tensors rather than Python floats, which a graph would freeze at their capture-time
values: AdamW does with `capturable=True`; torch's SGD cannot take a tensor momentum, so `SGD` below adds that
path; Muon's own step has one (chargpt.train.muon).
"""

from __future__ import annotations

import torch

from chargpt.device import has_native_bf16
from chargpt.train.config import OptimizerConfig
from chargpt.train.muon import MuonWithAdamW


def param_groups(params: list[torch.nn.Parameter], weight_decay: float) -> list[dict]:
    # Decay matrices and embeddings only: biases and LayerNorm gains have no scale to regularise.
    decay = [p for p in params if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in params if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def hidden_matrices(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The weights Muon orthogonalises: 2-D weights of the Linear layers inside the transformer blocks
    (not the embeddings, nor the output head, which Muon's authors leave to AdamW)."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise TypeError(f"optimizer muon needs a model with transformer blocks (GPT), got {type(model).__name__}")
    return [m.weight for m in blocks.modules() if isinstance(m, torch.nn.Linear)]


def muon_ns_dtype(cfg: OptimizerConfig, model: torch.nn.Module) -> torch.dtype:
    if cfg.muon_ns_dtype != "auto":
        return torch.bfloat16 if cfg.muon_ns_dtype == "bf16" else torch.float32
    return torch.bfloat16 if has_native_bf16(next(model.parameters()).device) else torch.float32


def _has_tensor_hyperparameters(optimizer: torch.optim.Optimizer, momentum_key: str) -> bool:
    def momentum(g):
        return g[momentum_key][0] if momentum_key == "betas" else g[momentum_key]

    return any(
        isinstance(g["lr"], torch.Tensor) or isinstance(momentum(g), torch.Tensor) for g in optimizer.param_groups
    )


def _tensor_step_groups(optimizer: torch.optim.Optimizer, closure, unsupported: tuple[str, ...]):
    """The groups of a tensor-hyperparameter step, each with its parameters that have gradients."""
    name = type(optimizer).__name__
    if closure is not None:
        raise ValueError(f"{name}.step with tensor hyperparameters takes no closure")
    for group in optimizer.param_groups:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            continue
        if any(group[key] for key in unsupported):
            raise ValueError(f"{name} with tensor hyperparameters supports none of {', '.join(unsupported)}")
        yield group, params


class SGD(torch.optim.SGD):
    """torch.optim.SGD, plus a step for LR and momentum held as 0-dim tensors (what a CUDA graph replays).

    With float hyperparameters it is torch's step. With tensors it computes the same update as torch's
    (L2 weight decay added to the gradient, momentum buffer m*buf + grad, Nesterov grad + m*buf) with
    foreach ops that take a tensor scalar; torch's own passes the momentum as a Python number."""

    @torch.no_grad()
    def step(self, closure=None):
        if not _has_tensor_hyperparameters(self, "momentum"):
            return super().step(closure)
        for group, params in _tensor_step_groups(self, closure, unsupported=("dampening", "maximize")):
            lr, momentum = group["lr"], group["momentum"]
            grads = [p.grad for p in params]
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            # torch starts the buffer as a copy of the first gradient; m * 0 + grad is that, exactly.
            for p in params:
                if self.state[p].get("momentum_buffer") is None:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p)
            bufs = [self.state[p]["momentum_buffer"] for p in params]
            torch._foreach_mul_(bufs, momentum)
            torch._foreach_add_(bufs, grads)
            update = torch._foreach_add(grads, torch._foreach_mul(bufs, momentum)) if group["nesterov"] else bufs
            torch._foreach_add_(params, torch._foreach_mul(update, -lr))
        return None


class AdamW(torch.optim.AdamW):
    """torch.optim.AdamW, plus a step for LR and beta1 held as 0-dim tensors that a CUDA graph can capture.

    With float hyperparameters it is torch's step. With tensors it computes the same update (decoupled weight decay,
    bias-corrected moments, per-parameter step counts on the device) with ops that take tensors, reading none of
    them on the host (a test checks that): a step through torch's capturable path with tensor betas failed to
    capture on an H100 (docs/gpu.md), cause not isolated."""

    @torch.no_grad()
    def step(self, closure=None):
        if not _has_tensor_hyperparameters(self, "betas"):
            return super().step(closure)
        for group, params in _tensor_step_groups(self, closure, unsupported=("amsgrad", "maximize")):
            lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                elif state["step"].device != p.device:  # restored from a run whose counts lived on the host
                    state["step"] = state["step"].to(device=p.device, dtype=torch.float32)
            grads = [p.grad for p in params]
            steps = [self.state[p]["step"] for p in params]
            exp_avgs = [self.state[p]["exp_avg"] for p in params]
            exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
            torch._foreach_add_(steps, 1.0)
            if wd:
                torch._foreach_mul_(params, 1 - lr * wd)
            torch._foreach_mul_(exp_avgs, beta1)  # exp_avg.lerp_(grad, 1 - beta1), as products
            torch._foreach_add_(exp_avgs, torch._foreach_mul(grads, 1 - beta1))
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
            # Every parameter of a group steps together: one step count serves the bias corrections.
            count = steps[0]
            step_size = lr / (1 - torch.pow(beta1, count))
            denom = torch._foreach_sqrt(exp_avg_sqs)
            torch._foreach_div_(denom, torch.sqrt(1 - torch.pow(beta2, count)))
            torch._foreach_add_(denom, eps)
            update = torch._foreach_div(exp_avgs, denom)
            torch._foreach_mul_(update, step_size)
            torch._foreach_sub_(params, update)
        return None


def build_optimizer(
    model: torch.nn.Module, cfg: OptimizerConfig, lr: float, momentum: float, capturable: bool = False
) -> torch.optim.Optimizer:
    """The optimizer of `cfg` over `model`. capturable: every step can be captured in a CUDA graph (AdamW's
    multi-tensor capturable kernels instead of its fused one, which reads beta1 on the host)."""
    cuda = next(model.parameters()).device.type == "cuda"
    # One fused kernel per step on a GPU; on a CPU the foreach (multi-tensor) path. Capturable: the classes above
    # take over the step while the hyperparameters are tensors (inside a CUDA graph's step).
    kernel = {"foreach": True} if capturable or not cuda else {"fused": True}
    if cfg.name == "muon":
        hidden = hidden_matrices(model)
        hidden_ids = {id(p) for p in hidden}
        rest = param_groups([p for p in model.parameters() if id(p) not in hidden_ids], cfg.weight_decay)
        return MuonWithAdamW(
            hidden,
            rest,
            lr,
            momentum,
            cfg.beta2,
            cfg.weight_decay,
            muon_ns_dtype(cfg, model),
            kernel,
            adamw_class=AdamW,
        )
    groups = param_groups(list(model.parameters()), cfg.weight_decay)
    if cfg.name == "sgd":
        return SGD(groups, lr=lr, momentum=momentum, nesterov=cfg.nesterov, **kernel)
    return AdamW(groups, lr=lr, betas=(momentum, cfg.beta2), **kernel)
