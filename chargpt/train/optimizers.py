"""The run's optimizer: SGD with Nesterov momentum, AdamW (beta1 is the cycled momentum), or Muon for the
transformer blocks' matrices with AdamW for the rest, stepped as one (chargpt.train.muon).

A step captured in a CUDA graph needs optimizers that read their scheduled LR and momentum from device tensors:
chargpt.train.cuda_graphs builds them through build_optimizer's `classes`, and holds their steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from chargpt.device import has_native_bf16
from chargpt.train.config import OptimizerConfig
from chargpt.train.muon import MuonWithAdamW


def param_groups(
    params: list[torch.nn.Parameter], weight_decay: float, embeddings: list[torch.nn.Parameter] = (), lr_scale=1.0
) -> list[dict]:
    """Decay matrices and embeddings only: biases and LayerNorm gains have no scale to regularise. With an
    `lr_scale` other than 1, the `embeddings` among `params` form a group of their own that carries it (the
    schedule multiplies that group's LR by it)."""
    decay = [p for p in params if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in params if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if lr_scale != 1.0:
        tables = {id(p) for p in embeddings}
        groups[0]["params"] = [p for p in decay if id(p) not in tables]
        groups.append(
            {"params": [p for p in decay if id(p) in tables], "weight_decay": weight_decay, "lr_scale": lr_scale}
        )
    return groups


def embedding_tables(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding)]


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


@dataclass(frozen=True)
class OptimizerClasses:
    """The classes build_optimizer makes each optimizer of, and their kernel options."""

    sgd: type[torch.optim.SGD] = torch.optim.SGD
    adamw: type[torch.optim.AdamW] = torch.optim.AdamW
    kernel: dict | None = None  # None: one fused kernel per step on a GPU, the foreach (multi-tensor) path on a CPU


def build_optimizer(
    model: torch.nn.Module,
    cfg: OptimizerConfig,
    lr: float,
    momentum: float,
    classes: OptimizerClasses = OptimizerClasses(),
) -> torch.optim.Optimizer:
    """The optimizer of `cfg` over `model`: torch's own, or those of `classes` (chargpt.train.cuda_graphs')."""
    cuda = next(model.parameters()).device.type == "cuda"
    kernel = classes.kernel if classes.kernel is not None else {"fused": True} if cuda else {"foreach": True}
    if cfg.name == "muon":
        hidden = hidden_matrices(model)
        hidden_ids = {id(p) for p in hidden}
        rest = [p for p in model.parameters() if id(p) not in hidden_ids]
        rest = param_groups(rest, cfg.weight_decay, embedding_tables(model), cfg.embedding_lr_scale)
        return MuonWithAdamW(
            hidden,
            rest,
            lr,
            momentum,
            cfg.beta2,
            cfg.weight_decay,
            muon_ns_dtype(cfg, model),
            kernel,
            adamw_class=classes.adamw,
        )
    groups = param_groups(list(model.parameters()), cfg.weight_decay, embedding_tables(model), cfg.embedding_lr_scale)
    if cfg.name == "sgd":
        return classes.sgd(groups, lr=lr, momentum=momentum, nesterov=cfg.nesterov, **kernel)
    return classes.adamw(groups, lr=lr, betas=(momentum, cfg.beta2), **kernel)
