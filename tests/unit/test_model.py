import math

import pytest
import torch

from chargpt.model.config import ModelConfig
from chargpt.model.gpt import GPT

TINY = ModelConfig(n_layer=2, d_model=32, n_head=4, d_ff=64, context=16, dropout=0.0)


def t12_param_count(L=12, d=512, ff=2048, T=512, V=256) -> int:
    per_layer = (3 * d * d + 3 * d) + (d * d + d) + (d * ff + ff) + (ff * d + d) + 2 * (2 * d) + T * d
    return V * d + L * per_layer + 2 * d + d * V


def test_t12_parameter_count():
    n = GPT(ModelConfig()).num_params()
    assert n == t12_param_count() == 41_237_504
    assert 40e6 < n < 45e6  # "about 44M" in Al-Rfou et al.; see README for the difference


def test_forward_shapes_and_initial_loss():
    torch.manual_seed(0)
    model = GPT(TINY)
    idx = torch.randint(0, 256, (3, 16))
    logits, loss = model(idx)
    assert logits.shape == (3, 16, 256) and loss is None
    _, loss = model(idx, idx)
    assert abs(loss.item() - math.log(256)) < 0.1  # near-uniform predictions at init
    with pytest.raises(ValueError, match="exceeds the model's context 16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_causal_masking_future_bytes_never_change_earlier_logits():
    torch.manual_seed(0)
    model = GPT(TINY).eval()
    idx = torch.randint(0, 256, (2, 16))
    changed = idx.clone()
    changed[:, 9:] = torch.randint(0, 256, (2, 7))
    a, _ = model(idx)
    b, _ = model(changed)
    assert torch.allclose(a[:, :9], b[:, :9], atol=1e-6)
    assert not torch.allclose(a[:, 9:], b[:, 9:])


def test_gpt2_init_and_per_layer_positional_embeddings():
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=8, d_model=256, n_head=4, d_ff=1024, context=64, dropout=0.0)
    model = GPT(cfg)
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.blocks[0].ff.down.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert model.blocks[0].attn.qkv.bias.abs().sum() == 0
    positional = [b.pos_emb.weight for b in model.blocks]
    assert len(positional) == 8 and not torch.equal(positional[0], positional[1])


# Al-Rfou et al.'s schedule for 4 layers: intermediate layer l (1..3) fades 1 -> 0 over the first l/8 of training.
AUX_WEIGHTS = [  # progress, weights of layers 1, 2, 3
    (0.0, [1.0, 1.0, 1.0]),
    (1 / 16, [0.5, 0.75, 5 / 6]),
    (1 / 8, [0.0, 0.5, 2 / 3]),
    (1 / 4, [0.0, 0.0, 1 / 3]),
    (3 / 8, [0.0, 0.0, 0.0]),
    (0.9, [0.0, 0.0, 0.0]),
]


def test_aux_loss_weights_follow_al_rfou_schedule():
    from chargpt.train.run import aux_loss_weights

    for progress, weights in AUX_WEIGHTS:
        got = aux_loss_weights(progress, 4)
        assert (got.tolist() if got is not None else [0.0] * 3) == pytest.approx(weights), f"progress {progress}"
        assert (got is not None) == any(w > 0 for w in weights)  # all off: none, so the forward computes none


def test_aux_loss_is_the_weighted_mean_of_every_layers_prediction_where_weights_are_given():
    from chargpt.model.gpt import Shared

    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=3, d_model=32, n_head=4, d_ff=64, context=16, dropout=0.0))
    idx, targets = torch.randint(0, 256, (2, 16)), torch.randint(0, 256, (2, 16))
    _, main = model(idx, targets)

    # By hand: each block's output through the shared final LayerNorm and head.
    x, per_layer = model.tok_emb(idx), []
    shared = Shared(0, embedded=x)
    for block in model.blocks:
        x = block(x, None, shared)
        per_layer.append(torch.nn.functional.cross_entropy(model.head(model.ln_f(x)).view(-1, 256), targets.view(-1)))
    assert per_layer[-1].item() == pytest.approx(main.item(), rel=1e-6)

    _, loss = model(idx, targets, aux_weights=torch.tensor([0.5, 0.75]))  # the schedule's at 1/12 of 3 layers
    expected = (main + 0.5 * per_layer[0] + 0.75 * per_layer[1]) / 2.25
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6) and loss.item() != pytest.approx(main.item())
    loss.backward()
    assert model.blocks[0].ff.down.weight.grad.abs().sum() > 0
    model.eval()
    assert model(idx, targets)[1].item() == pytest.approx(main.item(), rel=1e-6)  # none given: the final layer only


def test_positions_at_the_input_only_is_gpt2s_layout():
    per_layer, at_input = GPT(TINY), GPT(TINY.model_copy(update={"positions": "input"}))
    assert all(b.pos_emb is None for b in at_input.blocks) and at_input.pos_emb.weight.shape == (16, 32)
    assert per_layer.num_params() - at_input.num_params() == (TINY.n_layer - 1) * 16 * 32
    assert per_layer.num_position_params() == 2 * 16 * 32 and at_input.num_position_params() == 16 * 32
    idx = torch.randint(0, 256, (2, 16))
    _, loss = at_input(idx, idx)
    loss.backward()
    assert at_input.pos_emb.weight.grad.abs().sum() > 0


SEED_SHAPE = ModelConfig(
    n_layer=2, d_model=32, n_head=2, d_ff=64, context=16, dropout=0.2, bias=False, tie_embeddings=True
)


def test_the_seeds_model_has_no_linear_biases_and_one_tied_byte_matrix():
    torch.manual_seed(0)
    model = GPT(SEED_SHAPE)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 2 * 4 + 1 and all(m.bias is None for m in linears)
    assert all(m.bias is not None for m in model.modules() if isinstance(m, torch.nn.LayerNorm))  # LayerNorm keeps its
    assert model.head.weight is model.tok_emb.weight
    # counted once: the T12-style count without the Linear biases and without the separate head
    d, ff, T, V, L = 32, 64, 16, 256, 2
    per_layer = 3 * d * d + d * d + d * ff + ff * d + 2 * (2 * d) + T * d
    assert model.num_params() == V * d + L * per_layer + 2 * d
    assert model.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.1)  # GPT-2's embedding init, not overwritten
    # a step through the head moves the embedding: one parameter, two uses
    before = model.tok_emb.weight.detach().clone()
    idx = torch.randint(0, 256, (2, 16))
    model(idx, idx)[1].backward()
    torch.optim.SGD(model.parameters(), lr=1.0).step()
    assert not torch.equal(before, model.head.weight) and model.head.weight is model.tok_emb.weight


def test_t12_parameter_count_of_the_seeds_model():
    n = GPT(ModelConfig(n_head=2, dropout=0.2, bias=False, tie_embeddings=True)).num_params()
    d, ff, T, V, L = 512, 2048, 512, 256, 12
    assert n == V * d + L * (4 * d * d + 2 * d * ff + 4 * d + T * d) + 2 * d == 41_051_136


def test_a_tied_model_survives_a_checkpoint_round_trip(tmp_path):
    from chargpt.train.checkpoint import load_model, save_checkpoint

    torch.manual_seed(0)
    model = GPT(SEED_SHAPE)
    save_checkpoint(tmp_path / "model.pt", model, {"model": SEED_SHAPE.model_dump()}, step=1)
    loaded, _ = load_model(tmp_path / "model.pt", expected=SEED_SHAPE)
    assert loaded.head.weight is loaded.tok_emb.weight and torch.equal(loaded.head.weight, model.head.weight)
    idx = torch.randint(0, 256, (1, 16))
    assert torch.equal(loaded.eval()(idx)[0], model.eval()(idx)[0])
