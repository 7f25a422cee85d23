import copy

import pytest
import torch

from chargpt.train.muon import Muon, newton_schulz


def problem(seed: int = 0, shapes=((48, 16), (16, 40), (24, 24))):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(*s, generator=gen)) for s in shapes]
    grads = [[torch.randn(*s, generator=gen) for s in shapes] for _ in range(3)]
    return params, grads


def train(opt, params, grads, step) -> list[torch.Tensor]:
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        step(opt)
    return [p.detach().clone() for p in params]


KW = {"lr": 0.02, "weight_decay": 0.1, "momentum": 0.9}


@pytest.mark.parametrize("adjust_lr_fn", ["match_rms_adamw", "original"])
@pytest.mark.parametrize("nesterov", [True, False])
def test_our_update_in_bf16_is_torchs_muon_bit_for_bit(adjust_lr_fn, nesterov):
    """muon_update mirrors torch.optim.Muon exactly: only the dtype of the iteration is ours to choose."""
    params, grads = problem()
    kw = {**KW, "adjust_lr_fn": adjust_lr_fn, "nesterov": nesterov}
    theirs_params, ours_params = copy.deepcopy(params), copy.deepcopy(params)
    theirs = train(torch.optim.Muon(theirs_params, **kw), theirs_params, grads, lambda o: o.step())
    ours = train(Muon(ours_params, ns_dtype=torch.bfloat16, **kw), ours_params, grads, lambda o: o.own_step())
    for a, b in zip(theirs, ours, strict=True):
        assert torch.equal(a, b)


def test_the_fp32_iteration_gives_the_same_update_to_bf16_rounding():
    params, grads = problem()
    start = copy.deepcopy(params)
    bf16_params, fp32_params = copy.deepcopy(params), copy.deepcopy(params)
    bf16 = train(Muon(bf16_params, **KW), bf16_params, grads, lambda o: o.step())
    fp32 = train(Muon(fp32_params, ns_dtype=torch.float32, **KW), fp32_params, grads, lambda o: o.step())
    for s, a, b in zip(start, bf16, fp32, strict=True):
        step_bf16, step_fp32 = a - s.detach(), b - s.detach()
        assert not torch.equal(step_bf16, step_fp32)
        assert (step_fp32 - step_bf16).norm() / step_fp32.norm() < 0.02  # bf16 keeps 8 bits of mantissa


@pytest.mark.parametrize("shape", [(64, 16), (16, 64), (32, 32)])
def test_newton_schulz_orthogonalises(shape):
    torch.manual_seed(0)
    x = newton_schulz(torch.randn(*shape), (3.4445, -4.7750, 2.0315), 5, 1e-7, torch.float32)
    assert x.shape == shape
    singular = torch.linalg.svdvals(x)
    assert singular.min() > 0.5 and singular.max() < 1.3  # Keller Jordan's iteration: roughly in (0.7, 1.2)
