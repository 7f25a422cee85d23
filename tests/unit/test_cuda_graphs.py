"""The CUDA-graph step's path, on the CPU: tensor hyperparameters fed from the scheduler, and the optimizers that read
them. (The capture itself needs a GPU: bench/gpu_check.sh runs it.)"""

import copy

import pytest
import torch

from chargpt.errors import ConfigError
from chargpt.model.config import ModelConfig
from chargpt.model.gpt import GPT
from chargpt.pipeline.config import RunConfig
from chargpt.train.config import OptimizerConfig, ScheduleConfig
from chargpt.train.cuda_graphs import SGD, AdamW, DeviceHyperparams, GraphedStep, capturable_optimizer
from chargpt.train.loop import TrainStep
from chargpt.train.muon import Muon
from chargpt.train.optimizers import build_optimizer
from chargpt.train.run import Execution
from chargpt.train.schedule import build_scheduler

CPU = torch.device("cpu")


def problem(seed: int = 0, shapes=((12, 5), (7,), (4, 4))):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(*s, generator=gen)) for s in shapes]
    grads = [[torch.randn(*s, generator=gen) for s in shapes] for _ in range(4)]
    return params, grads


def as_tensors(opt, keys=("lr", "momentum")):
    for group in opt.param_groups:
        for key in keys:
            group[key] = torch.tensor(group[key])


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_sgd_with_tensor_hyperparameters_computes_torchs_update(nesterov, weight_decay):
    params, grads = problem()
    theirs_p, ours_p = copy.deepcopy(params), copy.deepcopy(params)
    kw = {"lr": 0.1, "momentum": 0.85, "nesterov": nesterov, "weight_decay": weight_decay}
    theirs, ours = torch.optim.SGD(theirs_p, **kw), SGD(ours_p, **kw)
    as_tensors(ours)
    for step_grads in grads:
        for a, b, g in zip(theirs_p, ours_p, step_grads):
            a.grad, b.grad = g.clone(), g.clone()
        theirs.step()
        ours.step()
    for a, b in zip(theirs_p, ours_p, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)  # the same update; fused multiply-adds may round apart
    # The same state, under torch's key: a run can switch between the two paths on resume.
    for a, b in zip(theirs_p, ours_p):
        torch.testing.assert_close(theirs.state[a]["momentum_buffer"], ours.state[b]["momentum_buffer"])
    assert {k for p in ours_p for k in ours.state[p]} == {"momentum_buffer"}


def test_sgd_with_float_hyperparameters_is_torchs_step_bit_for_bit():
    params, grads = problem()
    theirs_p, ours_p = copy.deepcopy(params), copy.deepcopy(params)
    theirs = torch.optim.SGD(theirs_p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4, foreach=True)
    ours = SGD(ours_p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4, foreach=True)
    for step_grads in grads:
        for a, b, g in zip(theirs_p, ours_p, step_grads):
            a.grad, b.grad = g.clone(), g.clone()
        theirs.step()
        ours.step()
    assert all(torch.equal(a, b) for a, b in zip(theirs_p, ours_p))


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_adamw_with_tensor_hyperparameters_computes_torchs_update(weight_decay):
    params, grads = problem()
    theirs_p, ours_p = copy.deepcopy(params), copy.deepcopy(params)
    theirs = torch.optim.AdamW(theirs_p, lr=1e-2, betas=(0.9, 0.99), weight_decay=weight_decay)
    ours = AdamW(ours_p, lr=1e-2, betas=(0.9, 0.99), weight_decay=weight_decay)
    for i, step_grads in enumerate(grads):
        lr, beta1 = 1e-2 * (i + 1), 0.9 - 0.02 * i  # a schedule: each step its own LR and beta1
        for group in theirs.param_groups:
            group["lr"], group["betas"] = lr, (beta1, 0.99)
        for group in ours.param_groups:
            group["lr"], group["betas"] = torch.tensor(lr), (torch.tensor(beta1), 0.99)  # as DeviceHyperparams installs
        for a, b, g in zip(theirs_p, ours_p, step_grads):
            a.grad, b.grad = g.clone(), g.clone()
        theirs.step()
        ours.step()
    for a, b in zip(theirs_p, ours_p, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(theirs_p, ours_p):  # torch's state layout: a run can switch paths on resume
        assert theirs.state[a].keys() == ours.state[b].keys()
        torch.testing.assert_close(theirs.state[a]["exp_avg_sq"], ours.state[b]["exp_avg_sq"])
        assert ours.state[b]["step"].item() == 4


def test_muon_with_tensor_hyperparameters_computes_the_float_update():
    params, grads = problem(shapes=((48, 16), (16, 40)))
    out = []
    for tensor in (False, True):
        ps = copy.deepcopy(params)
        opt = Muon(ps, ns_dtype=torch.float32, lr=0.02, momentum=0.9, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
        if tensor:
            as_tensors(opt)
        for step_grads in grads:
            for p, g in zip(ps, step_grads):
                p.grad = g.clone()
            opt.step()
        out.append(ps)
    for a, b in zip(*out, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def tiny_gpt(seed=0):
    torch.manual_seed(seed)
    return GPT(ModelConfig(n_layer=2, d_model=32, n_head=2, d_ff=64, context=16, dropout=0.0))


def train(name: str, graphed: bool, steps: int = 20, seen: list | None = None) -> list[float]:
    """The losses of `steps` steps on a tiny GPT, with the plain step or the graph step's path."""
    model = tiny_gpt()
    # fp32 Newton-Schulz: in bf16 a last-bit difference flips roundings, and the runs drift apart chaotically.
    cfg = OptimizerConfig(name=name, weight_decay=1e-2, muon_ns_dtype="fp32")
    lr_max = 0.1 if name == "sgd" else 1e-2
    opt = (capturable_optimizer if graphed else build_optimizer)(model, cfg, lr=1e-4, momentum=0.9)
    sched = build_scheduler(opt, ScheduleConfig(lr_max=lr_max), lr_max, steps)
    step = TrainStep(model, model.parameters(), opt, grad_clip=1.0)
    if graphed:
        step = GraphedStep(step, opt, CPU)
    batches = torch.randint(0, 256, (2, 4, 16), generator=torch.Generator().manual_seed(1))  # learnable: memorised
    losses = []
    for i in range(steps):
        x = batches[i % 2]
        losses.append(step([(x, x)]).loss.item())
        if seen is not None:  # what the step read, against the scheduler's values
            tensors = step.hyper.tensors[0]
            momentum = tensors["betas"] if "betas" in tensors else tensors["momentum"]
            group = opt.param_groups[0]
            seen.append(
                (
                    tensors["lr"].item(),
                    momentum.item(),
                    group["lr"],
                    group["betas"][0] if "betas" in group else group["momentum"],
                )
            )
        if i + 1 < steps:
            sched.step()
    return losses


@pytest.mark.parametrize("name", ["sgd", "adamw", "muon"])
def test_the_graph_steps_path_trains_as_the_plain_step_does(name):
    seen = []
    plain, graphed = train(name, graphed=False), train(name, graphed=True, seen=seen)
    # The same training, to rounding (compared by loss: Adam's update of a gradient that is pure rounding noise is
    # +-lr either way, so single weights may differ by more).
    assert plain[0] == graphed[0] and plain[-1] < plain[0] - 0.5
    assert graphed == pytest.approx(plain, rel=1e-3)
    # Every step read this step's scheduled LR and momentum (fp32 copies of the scheduler's floats).
    assert len(seen) == 20 and len({lr for lr, *_ in seen}) > 5
    for lr_t, momentum_t, lr, momentum in seen:
        assert lr_t == pytest.approx(lr, rel=1e-6) and momentum_t == pytest.approx(momentum, rel=1e-6)


def test_hyperparameters_are_tensors_only_inside_the_step():
    model = tiny_gpt()
    opt = build_optimizer(model, OptimizerConfig(name="muon"), lr=1e-3, momentum=0.9)
    hyper = DeviceHyperparams(opt, CPU)
    with hyper.installed():
        assert all(
            isinstance(g["lr"], torch.Tensor) and isinstance(g["betas"][0], torch.Tensor) for g in opt.param_groups
        )
        # beta2 is not scheduled, and a step may read it as a number: a host read of a tensor fails a capture
        assert all(type(g["betas"][1]) is float for g in opt.param_groups)
        opt.param_groups[0]["lr"].fill_(5.0)  # a step may do anything with them
    assert all(type(g["lr"]) is float and type(g["betas"][0]) is float for g in opt.param_groups)
    assert all(type(g["momentum"]) is float for g in opt.muon.param_groups)
    opt.param_groups[0]["lr"] = 0.25
    hyper.feed()
    assert hyper.tensors[0]["lr"].item() == 0.25 and hyper.tensors[1]["lr"].item() == pytest.approx(1e-3)


def test_a_graphed_step_recaptures_when_its_key_changes():
    """On a CPU nothing is captured; the key logic (warm-up again after a change) is the same as on CUDA."""
    model = tiny_gpt()
    opt = capturable_optimizer(model, OptimizerConfig(name="adamw"), lr=1e-3, momentum=0.9)
    key = ["aux on"]
    step = GraphedStep(TrainStep(model, model.parameters(), opt), opt, CPU, graph_key=lambda: key[0], warmup_steps=2)
    x = torch.randint(0, 256, (2, 16))
    step([(x, x)])
    assert step.warmups_left == 1 and step.key == "aux on"
    key[0] = "aux off"
    step([(x, x)])
    assert step.warmups_left == 1 and step.key == "aux off"


def test_a_graphed_step_refuses_a_grad_scaler():
    model = tiny_gpt()
    opt = build_optimizer(model, OptimizerConfig(name="adamw"), lr=1e-3, momentum=0.9)
    step = TrainStep(model, model.parameters(), opt, scaler=torch.amp.GradScaler("cpu"))
    with pytest.raises(ValueError, match="GradScaler"):
        GraphedStep(step, opt, CPU)


def test_configs_that_cannot_capture_are_refused_naming_the_keys():
    with pytest.raises(ValueError, match="train.cuda_graphs: true cannot combine with train.nproc: 2"):
        RunConfig(name="x", train={"cuda_graphs": True, "nproc": 2})
    with pytest.raises(ValueError, match="train.cuda_graphs: true cannot combine with train.precision: fp16"):
        RunConfig(name="x", train={"cuda_graphs": True, "precision": "fp16"})
    t = RunConfig(name="x", train={"cuda_graphs": True}).train
    with pytest.raises(ConfigError, match="train.cuda_graphs: true needs a CUDA device; this run is on cpu"):
        Execution.resolve(t, CPU, None, world_size=1)
    cuda = torch.device("cuda", 0)
    with pytest.raises(ConfigError, match="train.cuda_graphs: true cannot combine with fp16 .train.precision: auto"):
        Execution.resolve(t, cuda, torch.float16, world_size=1)  # auto chose fp16 on an older GPU


def test_the_defaults_compile_on_cuda_only_and_capture_nowhere():
    t = RunConfig(name="x").train
    assert Execution.resolve(t, CPU, None, 1) == Execution(compile=False, cuda_graphs=False)
    cuda = torch.device("cuda", 0)
    assert Execution.resolve(t, cuda, torch.bfloat16, 1) == Execution(compile=True, cuda_graphs=False)
    both = RunConfig(name="x", train={"compile": True, "cuda_graphs": True}).train
    assert Execution.resolve(both, cuda, torch.bfloat16, 1) == Execution(compile=True, cuda_graphs=True)


class HostReadForbidden(torch.Tensor):
    """A tensor that fails when Python reads its value: what a CUDA graph capture refuses (a host sync)."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (
            torch.Tensor.item,
            torch.Tensor.__float__,
            torch.Tensor.__int__,
            torch.Tensor.__bool__,
            torch.Tensor.tolist,
        ):
            raise AssertionError(f"the step read a scheduled hyperparameter on the host ({func.__name__})")
        return super().__torch_function__(func, types, args, kwargs or {})


@pytest.mark.parametrize("name", ["sgd", "adamw", "muon"])
def test_the_optimizer_steps_never_read_the_hyperparameter_tensors_on_the_host(name):
    model = tiny_gpt()
    opt = capturable_optimizer(
        model, OptimizerConfig(name=name, weight_decay=1e-2, muon_ns_dtype="fp32"), lr=1e-3, momentum=0.9
    )
    hyper = DeviceHyperparams(opt, CPU)
    hyper.tensors = [{k: t.as_subclass(HostReadForbidden) for k, t in mirrored.items()} for mirrored in hyper.tensors]
    x = torch.randint(0, 256, (2, 16))
    step = TrainStep(model, model.parameters(), opt, grad_clip=1.0)
    for _ in range(2):  # the first step creates the optimizer's state, the second is what a capture records
        with hyper.installed():
            step([(x, x)])
