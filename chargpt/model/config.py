"""The model section of params.yaml: the transformer's shape, and the options of the modern recipe (each off by
default, so that the runs that predate them train bit for bit as before)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from chargpt.settings import PositiveFloat, PositiveInt, Section


class ModelConfig(Section):
    n_layer: PositiveInt = 12
    d_model: PositiveInt = 512
    n_head: PositiveInt = 8
    d_ff: PositiveInt = 2048
    context: PositiveInt = 512
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.1
    # per_layer: Al-Rfou et al.'s learned positional embedding of each layer's own, added at every layer's input;
    # input: one, added to the byte embedding only (GPT-2's); rope: rotary embeddings of queries and keys (no table).
    positions: Literal["per_layer", "input", "rope"] = "per_layer"
    vocab_size: Literal[256] = 256  # bytes, no remapping
    bias: bool = True  # biases in the Linear layers (LayerNorm keeps its own); the seed's model has none
    # The output head shares the byte embedding's matrix (Press & Wolf 2017), as the seed's model does.
    tie_embeddings: bool = False
    value_residual: bool = False  # every layer's values mix in the first layer's, by a learned weight
    embedding_skip: bool = False  # every block's input mixes in the embedding, by a learned weight
    rope_base: PositiveFloat = 10000.0
    # How attention is computed: the same function, rounded differently. fused: torch's pick among
    # scaled_dot_product_attention's fused kernels (flash / memory-efficient); math: its reference path (matmuls and a
    # softmax, differentiated by autograd; on a CPU it computes bf16 inputs in fp32); auto: on a CPU under bf16
    # autocast the reference path kept in bf16, the fastest there (docs/results.md), fused elsewhere.
    attention_kernel: Literal["fused", "math", "auto"] = "fused"

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelConfig:
        if self.d_model % self.n_head:
            raise ValueError(f"n_head: {self.n_head} must divide d_model ({self.d_model})")
        if self.positions == "rope" and (self.d_model // self.n_head) % 2:
            raise ValueError(
                f"positions: rope needs an even head size; d_model / n_head is {self.d_model // self.n_head}"
            )
        return self
