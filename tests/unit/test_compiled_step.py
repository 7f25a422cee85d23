"""The step's execution modes: eager, torch.compile, and torch.compile's reduce-overhead mode (train.cuda_graphs).
On the CPU the compiled step must train as the eager one does; reduce-overhead's CUDA graphs themselves need a GPU
(bench/gpu_check.sh part 1 measures them)."""

import pytest
import torch
from conftest import TINY_MODEL, tiny_training_run

from chargpt.errors import ConfigError
from chargpt.pipeline.config import RunConfig
from chargpt.train.loop import LoopConfig, LoopHooks, train_loop
from chargpt.train.run import compile_mode

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


def test_the_defaults_compile_on_cuda_only():
    t = RunConfig(name="x").train
    assert compile_mode(t, CPU) is None
    assert compile_mode(t, CUDA) == "default"
    assert compile_mode(RunConfig(name="x", train={"compile": True}).train, CPU) == "default"
    assert compile_mode(RunConfig(name="x", train={"compile": False}).train, CUDA) is None


def test_cuda_graphs_select_the_reduce_overhead_mode_on_cuda_and_are_refused_elsewhere():
    t = RunConfig(name="x", train={"cuda_graphs": True}).train
    assert compile_mode(t, CUDA) == "reduce-overhead"
    with pytest.raises(ConfigError, match="train.cuda_graphs: true needs a CUDA device; this run is on cpu"):
        compile_mode(t, CPU)


def test_configs_that_cannot_record_graphs_are_refused_naming_the_keys():
    with pytest.raises(ValueError, match="train.cuda_graphs: true cannot combine with train.nproc: 2"):
        RunConfig(name="x", train={"cuda_graphs": True, "nproc": 2})
    with pytest.raises(ValueError, match="train.cuda_graphs: true is torch.compile's reduce-overhead mode, and "):
        RunConfig(name="x", train={"cuda_graphs": True, "compile": False})


def trained(tmp_path, compiled: bool, steps: int = 3):
    """A tiny run from seed 0 after `steps` steps, and its train loss at each: without dropout (compiled code draws
    its masks from another generator), two micro-batches a step (so that the accumulated loss is checked too)."""
    torch.manual_seed(0)
    run = tiny_training_run(
        tmp_path,
        model=TINY_MODEL | {"n_layer": 1, "d_model": 16, "d_ff": 32, "context": 16},
        optimizer={"name": "muon", "muon_ns_dtype": "fp32"},
        train={"compile": compiled, "micro_batch_size": 1},
    )
    parts, losses = run.parts, []
    assert (run.compile_mode == "default") is compiled and parts.step.micro_batches == 2
    assert isinstance(parts.step.forward, torch._dynamo.eval_frame.OptimizedModule) is compiled
    train_loop(parts, LoopConfig(steps, 1, steps), LoopHooks(on_metrics=lambda step, m: losses.append(m["train_loss"])))
    return run.model, torch.tensor(losses)


def test_the_compiled_step_trains_as_the_eager_step_does(tmp_path):
    torch._dynamo.reset()
    eager_model, eager_losses = trained(tmp_path, compiled=False)
    compiled_model, compiled_losses = trained(tmp_path, compiled=True)
    assert len(eager_losses) == 3 and len(set(eager_losses.tolist())) == 3
    # Inductor's fused kernels sum in another order: equal to fp32 rounding, not bit for bit.
    torch.testing.assert_close(compiled_losses, eager_losses, rtol=1e-5, atol=1e-5)
    for (name, a), b in zip(eager_model.state_dict().items(), compiled_model.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4, msg=lambda m, name=name: f"{name}: {m}")
