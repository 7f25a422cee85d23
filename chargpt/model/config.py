"""The model section of params.yaml: the transformer's shape."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from chargpt.settings import PositiveInt, Section


class ModelConfig(Section):
    n_layer: PositiveInt = 12
    d_model: PositiveInt = 512
    n_head: PositiveInt = 8
    d_ff: PositiveInt = 2048
    context: PositiveInt = 512
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.1
    # per_layer: Al-Rfou et al.'s learned positional embedding of each layer's own, added at every layer's input;
    # input: one, added to the byte embedding only (GPT-2's).
    positions: Literal["per_layer", "input"] = "per_layer"
    vocab_size: Literal[256] = 256  # bytes, no remapping
    bias: bool = True  # biases in the Linear layers (LayerNorm keeps its own); the seed's model has none
    # The output head shares the byte embedding's matrix (Press & Wolf 2017), as the seed's model does.
    tie_embeddings: bool = False

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelConfig:
        if self.d_model % self.n_head:
            raise ValueError(f"n_head: {self.n_head} must divide d_model ({self.d_model})")
        return self
