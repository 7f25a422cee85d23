"""Decoder-only byte-level transformer: Al-Rfou et al. 2018's T12 in GPT-2 clothing.

- pre-LayerNorm blocks, GPT-2 init (std 0.02; residual projections scaled by 1/sqrt(2 * n_layer));
- a learned positional embedding of its own added to the residual stream at the input of every layer
  (Al-Rfou et al.: timing information at every layer, since a deep stack otherwise forgets it);
- ReLU feed-forward and dropout, as in the paper;
- causal attention through F.scaled_dot_product_attention (flash / memory-efficient kernels where present);
- optionally no biases in the Linear layers, and the output head tied to the byte embedding (the seed's model);
- optionally Al-Rfou et al.'s intermediate-layer losses (`set_aux_loss_progress`): while training, every block
  but the last also predicts the next byte, through the shared final LayerNorm and head.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from chargpt.model.config import ModelConfig


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.proj.is_residual_projection = True
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        # (B, T, C) -> (B, nh, T, hs)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is None:
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
            )
        else:
            k, v = cache.append(layer, k, v)  # (B, nh, L, hs): the window's earlier positions, then these
            L = k.size(2)
            if L == T:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            elif T == 1:  # the newest position sees them all
                y = F.scaled_dot_product_attention(q, k, v)
            else:  # position i of these T is position L - T + i of the window
                mask = torch.ones(T, L, dtype=torch.bool, device=x.device).tril(L - T)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.proj(y))


class KVCache:
    """The keys and values of each layer for the positions of the current window so far, so that a new position
    costs one position's compute (sampling, compression). Preallocated for a whole window, (n_layer, B, nh, context,
    hs), on the first append (which fixes the batch, device and dtype); `length` positions of it are filled."""

    def __init__(self, n_layer: int, context: int):
        self.n_layer, self.context = n_layer, context
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.length = 0  # positions held (GPT.forward advances it once all layers have appended)

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new positions' k, v (B, nh, T, hs); return the window's so far, (B, nh, length + T, hs)."""
        if self.keys is None:
            B, nh, _, hs = k.shape
            self.keys = k.new_empty(self.n_layer, B, nh, self.context, hs)
            self.values = torch.empty_like(self.keys)
        end = self.length + k.size(2)
        self.keys[layer, :, :, self.length : end] = k
        self.values[layer, :, :, self.length : end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.up = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)
        self.down.is_residual_projection = True
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.relu(self.up(x))))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        # this layer's own positional embedding (None: the model adds one at its input only)
        self.pos_emb = nn.Embedding(cfg.context, cfg.d_model) if cfg.positions == "per_layer" else None
        self.ln_attn = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln_ff = nn.LayerNorm(cfg.d_model)
        self.ff = FeedForward(cfg)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        if self.pos_emb is not None:
            start = cache.length if cache is not None else 0
            x = x + self.pos_emb.weight[start : start + x.size(1)]  # (B, T, C) + (T, C)
        x = x + self.attn(self.ln_attn(x), cache, layer)
        return x + self.ff(self.ln_ff(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.context, cfg.d_model) if cfg.positions == "input" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)  # pre-LN leaves the residual stream unnormalised: close it here
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        # Intermediate losses (off unless the trainer sets a progress): layer l of n fades out at progress
        # l / 2n. Buffers, not saved: the trainer sets the progress from the step. Updating a device buffer
        # in place needs no host sync and never recompiles a torch.compile'd model.
        n = cfg.n_layer
        self.register_buffer("aux_ends", torch.tensor([layer / (2 * n) for layer in range(1, n)]), persistent=False)
        self.register_buffer("aux_progress", torch.zeros(()), persistent=False)
        self.aux_active = False
        self.apply(self._init_weights)
        if cfg.tie_embeddings:
            # One (vocab, C) matrix embeds bytes and scores them, with the embedding's N(0, 0.02) init (GPT-2's).
            # Tied after init so the head's init cannot overwrite it; parameters() then yields it once, so the
            # optimizer decays and steps it once, with the embeddings (not Muon's block matrices).
            self.head.weight = self.tok_emb.weight

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "is_residual_projection", False):
                # GPT-2: each residual branch adds variance; scale so the stream's stays O(1) with depth.
                std /= math.sqrt(2 * self.cfg.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def set_aux_loss_progress(self, progress: float) -> None:
        """Weight the intermediate losses for `progress` (0..1) of training, after Al-Rfou et al.: with n
        layers, layer l's loss fades linearly from weight 1 to 0 over the first l / 2n of training (so the
        lowest stops first and all are off by the half-way point)."""
        self.aux_progress.fill_(progress)
        self.aux_active = progress < (self.cfg.n_layer - 1) / (2 * self.cfg.n_layer)

    def aux_weights(self) -> torch.Tensor:
        """(n_layer - 1,) the weights of the intermediate losses now; zeros while they are off."""
        if not self.aux_active:
            return torch.zeros_like(self.aux_ends)
        return (1 - self.aux_progress / self.aux_ends).clamp(min=0)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def num_position_params(self) -> int:
        return sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Embedding) and m is not self.tok_emb)

    def new_cache(self) -> KVCache:
        """An empty window for forward(..., cache=): each call appends its bytes to it."""
        return KVCache(self.cfg.n_layer, self.cfg.context)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab) for the bytes idx (B, T), and the loss where targets (B, T) are given. With a
        `cache`, idx continues the window it holds (positions cache.length onwards), and the cache grows by T: each
        appended byte costs one position's compute."""
        start, T = (cache.length if cache is not None else 0), idx.size(1)
        if start + T > self.cfg.context:
            what = f"window of {start + T} positions" if cache is not None else f"sequence length {T}"
            raise ValueError(f"{what} exceeds the model's context {self.cfg.context}")
        aux = targets is not None and self.training and self.aux_active
        aux_losses = []
        x = self.tok_emb(idx)  # (B, T, C)
        if self.pos_emb is not None:
            x = x + self.pos_emb.weight[start : start + T]
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
            if aux and i < len(self.blocks) - 1:
                aux_losses.append(self._loss(self.head(self.ln_f(x)), targets))
        if cache is not None:
            cache.length += T
        logits = self.head(self.ln_f(x))  # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = self._loss(logits, targets)
            if aux_losses:
                # The weighted mean over layers: the objective keeps the scale of one byte's loss.
                weights = self.aux_weights()
                loss = (loss + (weights * torch.stack(aux_losses)).sum()) / (1 + weights.sum())
        return logits, loss

    @staticmethod
    def _loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # fp32 for the softmax: bf16 logits lose the last bits of BPC.
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
