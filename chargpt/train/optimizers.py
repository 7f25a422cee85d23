"""The run's optimizer: SGD with Nesterov momentum, AdamW (beta1 is the cycled momentum), or Muon for the
transformer blocks' matrices with AdamW for the rest, stepped as one (chargpt.train.muon). On a GPU, SGD and
AdamW run torch's fused kernels (one launch per step); on a CPU, their multi-tensor (foreach) path.
"""

from __future__ import annotations

import torch

from chargpt.device import has_native_bf16
from chargpt.train.config import OptimizerConfig
from chargpt.train.muon import MuonWithAdamW


def param_groups(params: list[torch.nn.Parameter], weight_decay: float) -> list[dict]:
    """Decay matrices and embeddings only: biases and LayerNorm gains have no scale to regularise."""
    params = [p for p in params if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


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
    hidden = hidden_matrices(model) if cfg.name == "muon" else []  # Muon's; the rest go to AdamW
    hidden_ids = {id(p) for p in hidden}
    groups = param_groups([p for p in model.parameters() if id(p) not in hidden_ids], cfg.weight_decay)
    if cfg.name == "muon":
        ns_dtype = muon_ns_dtype(cfg, model)
        return MuonWithAdamW(hidden, groups, lr, momentum, cfg.beta2, cfg.weight_decay, ns_dtype, kernel)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=cfg.nesterov, **kernel)
    return torch.optim.AdamW(groups, lr=lr, betas=(momentum, cfg.beta2), **kernel)
