"""The run's optimizer: SGD with Nesterov momentum, AdamW (beta1 is the cycled momentum), or Muon for the
transformer blocks' matrices with AdamW for the rest, stepped as one (chargpt.train.muon). On a GPU, SGD and
AdamW run torch's fused kernels (one launch per step); on a CPU, their multi-tensor (foreach) path.
"""

from __future__ import annotations

import torch

from chargpt.device import has_native_bf16
from chargpt.train.config import OptimizerConfig
from chargpt.train.muon import MuonWithAdamW


def param_groups(
    params: list[torch.nn.Parameter], weight_decay: float, lr_scales: dict[int, float] | None = None
) -> list[dict]:
    """Decay matrices and embeddings only: biases and LayerNorm gains have no scale to regularise. A parameter with
    an LR scale other than 1 (`lr_scales`, by id) goes to a group of its own, one per scale and decay, that carries
    it as `lr_scale` (the schedule multiplies that group's LR by it); without any, two groups, decay and no decay."""
    lr_scales = lr_scales or {}
    groups = {
        (True, 1.0): {"params": [], "weight_decay": weight_decay},
        (False, 1.0): {"params": [], "weight_decay": 0.0},
    }
    for p in params:
        if not p.requires_grad:
            continue
        decays, scale = p.dim() >= 2, lr_scales.get(id(p), 1.0)
        new_group = {"params": [], "weight_decay": weight_decay if decays else 0.0, "lr_scale": scale}
        groups.setdefault((decays, scale), new_group)["params"].append(p)
    return list(groups.values())


def embedding_tables(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding)]


def lr_scales(model: torch.nn.Module, cfg: OptimizerConfig) -> dict[int, float]:
    """{id(parameter): its LR as a multiple of the schedule's} for the parameters whose multiple is not 1: the
    embedding tables (a tied head with them), an untied head, and the scalars."""
    scales = {id(p): cfg.scalar_lr_scale for p in model.parameters() if p.dim() < 2}
    tables = embedding_tables(model)
    scales |= {id(p): cfg.embedding_lr_scale for p in tables}
    head = getattr(model, "head", None)
    if head is not None and all(head.weight is not p for p in tables):
        scales[id(head.weight)] = cfg.head_lr_scale
    return {key: scale for key, scale in scales.items() if scale != 1.0}


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


def build_optimizer(
    model: torch.nn.Module,
    cfg: OptimizerConfig,
    lr: float,
    momentum: float,
) -> torch.optim.Optimizer:
    """The optimizer of `cfg` over `model`, at `lr` and `momentum` until the scheduler sets them."""
    cuda = next(model.parameters()).device.type == "cuda"
    kernel = {"fused": True} if cuda else {"foreach": True}
    if cfg.name == "muon":
        hidden = hidden_matrices(model)
        hidden_ids = {id(p) for p in hidden}
        rest = [p for p in model.parameters() if id(p) not in hidden_ids]
        rest = param_groups(rest, cfg.weight_decay, lr_scales(model, cfg))
        return MuonWithAdamW(
            hidden,
            rest,
            lr,
            momentum,
            cfg.beta2,
            cfg.weight_decay,
            muon_ns_dtype(cfg, model),
            kernel,
            (cfg.muon_momentum_warmup_start, cfg.muon_momentum_warmup_steps)
            if cfg.muon_momentum_warmup_steps
            else None,
        )
    groups = param_groups(list(model.parameters()), cfg.weight_decay, lr_scales(model, cfg))
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=cfg.nesterov, **kernel)
    return torch.optim.AdamW(groups, lr=lr, betas=(momentum, cfg.beta2), **kernel)
