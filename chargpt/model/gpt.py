"""Decoder-only byte-level transformer: Al-Rfou et al. 2018's T12 in GPT-2 clothing.

- pre-LayerNorm blocks, GPT-2 init (std 0.02; residual projections scaled by 1/sqrt(2 * n_layer));
- a learned positional embedding of its own added to the residual stream at the input of every layer
  (Al-Rfou et al.: timing information at every layer, since a deep stack otherwise forgets it);
- ReLU feed-forward and dropout, as in the paper;
- causal attention through F.scaled_dot_product_attention (flash / memory-efficient kernels where present, or
  its reference path: `attention_kernel`);
- optionally no biases in the Linear layers, and the output head tied to the byte embedding (the seed's model);
- optionally Al-Rfou et al.'s intermediate-layer losses (`aux_weights`, weighted by the trainer's schedule): every
  block but the last also predicts the next byte, through the shared final LayerNorm and head.

The modern recipe's options that the quickstart uses (ModelConfig; each off by default, and then nothing of it is
built) are small pieces the blocks compose: Rotary (positions: rope), the value residual and the embedding skip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from chargpt.model.config import ModelConfig


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs) -> torch.Tensor:
    """F.scaled_dot_product_attention through torch's reference kernel (an explicit score matrix and softmax, which
    autograd differentiates) rather than a fused one. For bf16 inputs on a CPU it computes in fp32: it casts q, k and
    v up and the output back down."""
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v, **kwargs)


def reduced_math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs) -> torch.Tensor:
    """The reference kernel in the inputs' precision: its matmuls and softmax in bf16, as a fused kernel keeps them,
    with no casts up and down. torch decides this when it records the forward (a global switch, restored at once);
    the backward then replays the same bf16 ops."""
    allowed = torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed()  # the switch covers the CPU too
    torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(True)
    try:
        return math_attention(q, k, v, **kwargs)
    finally:
        torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(allowed)


def auto_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs) -> torch.Tensor:
    """The reference kernel in bf16 where it measured fastest (a CPU under bf16 autocast: docs/results.md, "bf16
    attention"), the fused kernels elsewhere."""
    cpu_bf16 = (
        q.device.type == "cpu"
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
    )
    return (reduced_math_attention if cpu_bf16 else F.scaled_dot_product_attention)(q, k, v, **kwargs)


def dropout(p: float) -> nn.Module:
    """Dropout, or nothing where p is 0: even a no-op dropout is a call per layer for every byte the KV cache steps."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


ATTENTION_KERNELS = {"fused": F.scaled_dot_product_attention, "math": math_attention, "auto": auto_attention}


class Rotary(nn.Module):
    """Rotary position embedding (Su et al. 2021): each head's query and key feature pairs turn by an angle that
    grows with the position, so that their dot product depends on the distance between positions. Nothing to learn;
    the angles are buffers, never saved."""

    def __init__(self, head_size: int, context: int, base: float):
        super().__init__()
        # on the CPU even where the model is built on the meta device (a model file's shape check): computed there,
        # they would import torch._dynamo, a second of every command that loads a model
        cpu = torch.device("cpu")
        inv_freq = base ** (-torch.arange(0, head_size, 2, dtype=torch.float32, device=cpu) / head_size)  # (hs/2,)
        angles = torch.outer(torch.arange(context, dtype=torch.float32, device=cpu), inv_freq)  # (context, hs/2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """x (B, heads, T, hs) at positions start.. start + T - 1, rotated."""
        T = x.size(2)
        cos, sin = self.cos[start : start + T].to(x.dtype), self.sin[start : start + T].to(x.dtype)  # (T, hs/2)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


@dataclass
class Shared:
    """What one forward pass gives every block beside the residual stream: the position of its first byte, the
    model's input stream (the embedding skip reads it) and, with the value residual, the first layer's values (its
    attention writes them)."""

    start: int  # the cache's length before this pass; 0 without a cache
    embedded: torch.Tensor  # (B, T, C)
    first_values: torch.Tensor | None = None  # (B, nh, T, hs)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.proj.is_residual_projection = True
        self.resid_dropout = dropout(cfg.dropout)
        head_size = cfg.d_model // cfg.n_head
        self.rotary = Rotary(head_size, cfg.context, cfg.rope_base) if cfg.positions == "rope" else None
        # Value residual (Zhou et al. 2024): a later layer's values move towards the first layer's by this weight.
        self.value_mix = nn.Parameter(torch.tensor(0.5)) if cfg.value_residual and layer > 0 else None
        self.shares_values = cfg.value_residual and layer == 0
        self.attend = ATTENTION_KERNELS[cfg.attention_kernel]

    def forward(self, x: torch.Tensor, cache: KVCache | None, shared: Shared) -> torch.Tensor:
        """The attention's output (B, T, C)."""
        B, T, C = x.shape
        nh = self.n_head
        # (B, T, 3C) -> (B, 3 nh, T, hs): q's heads, k's, v's
        qkv = self.qkv(x).view(B, T, 3 * nh, C // nh).transpose(1, 2)
        qk, v = qkv.split((2 * nh, nh), dim=1)
        if self.rotary is not None:  # q and k turn in one pass: a byte at a time, every op counts
            qk = self.rotary(qk, shared.start)
        q, k = qk.split(nh, dim=1)
        if self.value_mix is not None:
            v = v + self.value_mix * (shared.first_values - v)
        elif self.shares_values:
            shared.first_values = v
        if cache is None:
            y = self.attend(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        else:
            k, v = cache.append(self.layer, k, v)  # (B, nh, L, hs): the window's earlier positions, then these
            L = k.size(2)
            if L == T:
                y = self.attend(q, k, v, is_causal=True)
            elif T == 1:  # the newest position sees them all
                y = self.attend(q, k, v)
            else:  # position i of these T is position L - T + i of the window
                mask = torch.ones(T, L, dtype=torch.bool, device=x.device).tril(L - T)
                y = self.attend(q, k, v, attn_mask=mask)
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
        self._layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.length = 0  # positions held (GPT.forward advances it once all layers have appended)

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new positions' k, v (B, nh, T, hs); return the window's so far, (B, nh, length + T, hs)."""
        if self.keys is None:
            B, nh, _, hs = k.shape
            self.keys = k.new_empty(self.n_layer, B, nh, self.context, hs)
            self.values = torch.empty_like(self.keys)
            self._layers = [(self.keys[i], self.values[i]) for i in range(self.n_layer)]  # views: an op fewer a use
        keys, values = self._layers[layer]
        end = self.length + k.size(2)
        keys[:, :, self.length : end] = k
        values[:, :, self.length : end] = v
        return keys[:, :, :end], values[:, :, :end]


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.up = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)
        self.down.is_residual_projection = True
        self.dropout = dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.relu(self.up(x))))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        # this layer's own positional embedding (None: the model adds one at its input only, or uses rope)
        self.pos_emb = nn.Embedding(cfg.context, cfg.d_model) if cfg.positions == "per_layer" else None
        self.ln_attn = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg, layer)
        self.ln_ff = nn.LayerNorm(cfg.d_model)
        self.ff = FeedForward(cfg)
        # Embedding skip (modded-nanogpt): the block's input gains this share of the embedding; 0 at the start.
        self.embedding_skip = nn.Parameter(torch.zeros(())) if cfg.embedding_skip and layer > 0 else None

    def forward(self, x: torch.Tensor, cache: KVCache | None, shared: Shared) -> torch.Tensor:
        """The residual stream after this block (B, T, C)."""
        if self.pos_emb is not None:
            x = x + self.pos_emb.weight[shared.start : shared.start + x.size(1)]  # (B, T, C) + (T, C)
        if self.embedding_skip is not None:
            x = x + self.embedding_skip * shared.embedded
        x = x + self.attn(self.ln_attn(x), cache, shared)
        return x + self.ff(self.ln_ff(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.context, cfg.d_model) if cfg.positions == "input" else None
        self.drop = dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, layer) for layer in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)  # pre-LN leaves the residual stream unnormalised: close it here
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
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

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def num_position_params(self) -> int:
        return sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Embedding) and m is not self.tok_emb)

    def new_cache(self) -> KVCache:
        """An empty window for forward(..., cache=): each call appends its bytes to it."""
        return KVCache(self.cfg.n_layer, self.cfg.context)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
        aux_weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab) for the bytes idx (B, T), and the loss where targets (B, T) are given. With a
        `cache`, idx continues the window it holds (positions cache.length onwards), and the cache grows by T: each
        appended byte costs one position's compute. aux_weights (n_layer - 1,): the loss is the weighted mean of the
        last layer's and the intermediate layers' (weight 1 for the last)."""
        start, T = (cache.length if cache is not None else 0), idx.size(1)
        if start + T > self.cfg.context:
            what = f"window of {start + T} positions" if cache is not None else f"sequence length {T}"
            raise ValueError(f"{what} exceeds the model's context {self.cfg.context}")
        aux = targets is not None and aux_weights is not None
        aux_losses = []
        x = self._embed(idx, start)  # (B, T, C)
        shared = Shared(start, embedded=x)
        for block in self.blocks:
            x = block(x, cache, shared)
            if aux and block.layer < len(self.blocks) - 1:
                aux_losses.append(self._loss(self._logits(x), targets))
        if cache is not None:
            cache.length += T
        logits = self._logits(x)  # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = self._loss(logits, targets)
            if aux_losses:
                # The weighted mean over layers: the objective keeps the scale of one byte's loss.
                loss = (loss + (aux_weights * torch.stack(aux_losses)).sum()) / (1 + aux_weights.sum())
        return logits, loss

    def _embed(self, idx: torch.Tensor, start: int) -> torch.Tensor:
        """The blocks' input (B, T, C): the bytes' embeddings, and the positions from `start` where the model adds
        them at its input only."""
        x = self.tok_emb(idx)  # (B, T, C)
        if self.pos_emb is not None:
            x = x + self.pos_emb.weight[start : start + idx.size(1)]
        return self.drop(x)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.ln_f(x))  # (B, T, vocab)

    @staticmethod
    def _loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # fp32 for the softmax: bf16 logits lose the last bits of BPC.
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
