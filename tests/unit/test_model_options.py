"""The modern recipe's model options (ModelConfig): each alone and all together build a causal model whose KV-cache
path (sampling, the compressor) equals its full forward, that survives a checkpoint round trip, and whose parameters
Muon and weight decay split as intended; each option does what it names, checked against a value derived by hand."""

import pytest
import torch

from chargpt.device import autocast
from chargpt.model.config import ModelConfig
from chargpt.model.gpt import GPT, Rotary
from chargpt.pipeline.config import RunConfig
from chargpt.train.checkpoint import load_model, save_checkpoint
from chargpt.train.config import OptimizerConfig
from chargpt.train.optimizers import build_optimizer, hidden_matrices, param_groups

BASE = dict(n_layer=3, d_model=32, n_head=4, d_ff=64, context=16, dropout=0.0)
OPTIONS = {
    "rope": {"positions": "rope"},
    "input_positions": {"positions": "input"},
    "value_residual": {"value_residual": True},
    "embedding_skip": {"embedding_skip": True},
    "math_attention": {"attention_kernel": "math"},
    "auto_attention": {"attention_kernel": "auto"},
    "all": {
        "positions": "rope",
        "value_residual": True,
        "embedding_skip": True,
        "tie_embeddings": False,
        "attention_kernel": "math",
    },  # fmt: skip
}


def trained_a_little(options: dict, seed: int = 0) -> GPT:
    """A model of these options whose zero-initialised parts (the skips' weights) are nudged,
    so that every option takes part in the output."""
    torch.manual_seed(seed)
    model = GPT(ModelConfig(**(BASE | options)))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(params=sorted(OPTIONS))
def options(request):
    return OPTIONS[request.param]


def test_shapes_and_a_finite_loss(options):
    model = trained_a_little(options)
    idx = torch.randint(0, 256, (3, 16))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 16, 256) and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())  # every option's parameters learn


def test_future_bytes_never_change_earlier_logits(options):
    model = trained_a_little(options)
    idx = torch.randint(0, 256, (2, 16))
    changed = idx.clone()
    changed[:, 9:] = (idx[:, 9:] + 1) % 256
    a, b = model(idx)[0], model(changed)[0]
    torch.testing.assert_close(a[:, :9], b[:, :9], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 9:], b[:, 9:])


def test_the_kv_cache_path_equals_the_full_forward(options):
    model = trained_a_little(options)
    idx = torch.randint(0, 256, (2, 16))
    full = model(idx)[0]
    cache = model.new_cache()
    pieces = [model(idx[:, :5], cache=cache)[0]]  # a prompt, then a byte at a time, as sampling and compression do
    pieces += [model(idx[:, t : t + 1], cache=cache)[0] for t in range(5, 16)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=0, atol=2e-5)


def test_checkpoint_round_trip(tmp_path, options):
    model = trained_a_little(options)
    cfg = ModelConfig(**BASE, **options)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, RunConfig(name="t", model=cfg).model_dump(mode="json"), step=1)
    loaded, _ = load_model(path, expected=cfg)
    idx = torch.randint(0, 256, (2, 16))
    assert torch.equal(model(idx)[0], loaded.eval()(idx)[0])


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest_decaying_matrices_only(options):
    model = GPT(ModelConfig(**BASE, **options))
    hidden = {id(p) for p in hidden_matrices(model)}
    blocks_linear = {id(m.weight) for m in model.blocks.modules() if isinstance(m, torch.nn.Linear)}
    assert hidden == blocks_linear
    assert all(p.dim() == 2 for p in hidden_matrices(model))  # Muon orthogonalises matrices only
    optimizer = build_optimizer(model, OptimizerConfig(name="muon", weight_decay=0.1, muon_ns_dtype="fp32"), 1e-3, 0.9)
    stepped = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert sorted(stepped) == sorted({id(p) for p in model.parameters()})  # each parameter once, none left out
    rest = [p for p in model.parameters() if id(p) not in hidden]
    decay, no_decay = param_groups(rest, 0.1)
    assert {id(p) for p in decay["params"]} == {id(p) for p in rest if p.dim() == 2}
    assert {id(p) for p in no_decay["params"]} == {id(p) for p in rest if p.dim() < 2} and no_decay["weight_decay"] == 0
    scalars = {n for n, p in model.named_parameters() if p.dim() < 2 and "ln" not in n and "bias" not in n}
    expected = {
        "value_residual": {"blocks.1.attn.value_mix", "blocks.2.attn.value_mix"},
        "embedding_skip": {"blocks.1.embedding_skip", "blocks.2.embedding_skip"},
    }
    assert scalars == set().union(*(names for key, names in expected.items() if options.get(key)))


def test_the_defaults_build_nothing_new():
    names = set(GPT(ModelConfig(**BASE)).state_dict())
    assert not any(word in name for name in names for word in ("value_mix", "skip"))


def test_rotary_scores_depend_on_the_distance_only():
    rotary = Rotary(head_size=8, context=32, base=10000.0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    at = lambda x, pos: rotary(x.expand(1, 1, pos + 1, 8).contiguous(), 0)[..., pos, :]  # noqa: E731
    score = lambda m, n: (at(q, m) * at(k, n)).sum().item()  # noqa: E731
    assert score(7, 3) == pytest.approx(score(20, 16), abs=1e-5)
    assert score(7, 3) != pytest.approx(score(7, 4), abs=1e-3)
    assert at(q, 5).norm().item() == pytest.approx(q.norm().item(), rel=1e-6)  # a rotation
    torch.testing.assert_close(rotary(q.expand(1, 1, 4, 8), 2)[..., 0, :], at(q, 2))  # `start` is the position
    assert GPT(ModelConfig(**BASE, positions="rope")).num_position_params() == 0


def attention_ops(model: GPT, idx: torch.Tensor, amp_dtype: torch.dtype | None = None) -> set[str]:
    """The scaled-dot-product-attention kernels a forward and backward of `model` ran (profiled), and the dtype each
    of the reference kernel's matmuls and softmaxes ran in ("bmm float", "softmax c10::BFloat16"): nothing else in
    the model runs a batched matmul or a plain softmax."""
    with torch.profiler.profile(record_shapes=True) as prof:
        with autocast(torch.device("cpu"), amp_dtype):
            _, loss = model(idx, idx)
        loss.backward()
    inner = ("aten::bmm", "aten::_softmax", "aten::_softmax_backward_data")
    return {e.key for e in prof.key_averages() if "scaled_dot_product" in e.key and "attention" in e.key} | {
        f"{e.name.removeprefix('aten::').lstrip('_')} {e.input_dtypes[0]}" for e in prof.events() if e.name in inner
    }


FUSED = "aten::_scaled_dot_product_flash_attention_for_cpu"
MATH = "aten::_scaled_dot_product_attention_math"
ENTRY = "aten::scaled_dot_product_attention"  # the function every kernel is called through
IN_FP32 = {"bmm float", "softmax float", "softmax_backward_data float"}
IN_BF16 = {"bmm c10::BFloat16", "softmax c10::BFloat16", "softmax_backward_data c10::BFloat16"}


@pytest.mark.parametrize("amp_dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_each_attention_kernel_runs_the_kernel_it_names_and_computes_the_same(amp_dtype):
    """fused: torch's flash kernel; math: the reference path, which computes in fp32 whatever its inputs; auto: on a
    CPU in bf16 (where it measured fastest) the reference path in bf16, forward and backward, and fused in fp32. The
    same weights give the same logits and gradients through each, up to rounding, and torch's switch for the bf16
    path is left as it was."""
    idx = torch.randint(0, 256, (2, 16))
    runs = {}
    for kernel in ("fused", "math", "auto"):
        model = trained_a_little({"positions": "rope", "attention_kernel": kernel}).train()
        ops = attention_ops(model, idx, amp_dtype)
        runs[kernel] = model(idx)[0].detach(), [p.grad for p in model.parameters()], ops
    assert FUSED in runs["fused"][2] and MATH not in runs["fused"][2]
    assert runs["math"][2] == {ENTRY, MATH} | IN_FP32
    assert runs["auto"][2] == ({ENTRY, MATH} | IN_BF16 if amp_dtype == torch.bfloat16 else runs["fused"][2])
    assert not torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed()
    tolerance = {"rtol": 0, "atol": 1e-5 if amp_dtype is None else 2e-2}
    for kernel in ("math", "auto"):
        torch.testing.assert_close(runs[kernel][0], runs["fused"][0], **tolerance)
        for a, b in zip(runs[kernel][1], runs["fused"][1], strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-4 if amp_dtype is None else 5e-2)


def test_rope_needs_an_even_head_size_and_says_so():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="positions: rope needs an even head size; d_model / n_head is 3"):
        ModelConfig(d_model=12, n_head=4, positions="rope")


@pytest.mark.parametrize(
    "run", ["final", "t12", "quickstart_classic", "quickstart_seed", "quickstart_adamw", "grid_min1e-3_mom090_wd1e-4"]
)
def test_the_runs_that_predate_the_options_use_none_of_them(run):
    """They keep their figures: their models are built exactly as before (checked bit for bit at 100 training steps
    when the options came, docs/results.md)."""
    from conftest import REPO

    from chargpt.pipeline.config import load_run_config

    model = load_run_config(run, REPO / "params.yaml").model
    defaults = ModelConfig()
    options = ("value_residual", "embedding_skip", "attention_kernel")
    assert all(getattr(model, k) == getattr(defaults, k) for k in options) and model.positions != "rope"
