"""The whole training step as one CUDA graph: forward, backward, clipping and the optimizer step, replayed each step.

A T12 step on an H100 is short enough that launching its few thousand kernels from Python costs as much as
running them. A captured graph launches them all at once and never waits on the host. What a graph cannot do
is read Python values: it replays the kernels with the arguments they were captured with. So:
- the scheduled LR and momentum of every param group live in 0-dim device tensors (`DeviceHyperparams`); the
  scheduler keeps setting the groups' floats, and before each replay `feed()` copies them into the tensors,
  so the replayed step follows the schedule exactly;
- the batches are copied into static input buffers, and the loss, gradient norm and clipping flag come out
  of static output tensors;
- the optimizers must take tensor hyperparameters without reading them on the host: `capturable_optimizer` builds
  the run's optimizer from `SGD` and `AdamW` below (torch's SGD cannot take a tensor momentum; torch's capturable
  AdamW with tensor betas failed to capture on an H100); Muon's own step takes tensors (chargpt.train.muon).
The first steps run eagerly on a side stream (the same math, real training steps), so that lazily created
state (optimizer buffers, cuBLAS workspaces, torch.compile's kernels) exists before capture. A change of the
model's Python-side state that changes its graph (the auxiliary losses switching off half-way) is a new
capture. On a CPU nothing is captured and the step runs eagerly through the same path (what the tests use).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch

from chargpt.errors import GraphCaptureError
from chargpt.train.config import OptimizerConfig
from chargpt.train.loop import Batch, StepResult, TrainStep
from chargpt.train.optimizers import OptimizerClasses, build_optimizer

SCHEDULED = ("lr", "momentum", "betas")


def _has_tensor_hyperparameters(optimizer: torch.optim.Optimizer, momentum_key: str) -> bool:
    def momentum(g):
        return g[momentum_key][0] if momentum_key == "betas" else g[momentum_key]

    return any(
        isinstance(g["lr"], torch.Tensor) or isinstance(momentum(g), torch.Tensor) for g in optimizer.param_groups
    )


def _tensor_step_groups(optimizer: torch.optim.Optimizer, closure, unsupported: tuple[str, ...]):
    """The groups of a tensor-hyperparameter step, each with its parameters that have gradients."""
    name = type(optimizer).__name__
    if closure is not None:
        raise ValueError(f"{name}.step with tensor hyperparameters takes no closure")
    for group in optimizer.param_groups:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            continue
        if any(group[key] for key in unsupported):
            raise ValueError(f"{name} with tensor hyperparameters supports none of {', '.join(unsupported)}")
        yield group, params


class SGD(torch.optim.SGD):
    """torch.optim.SGD, plus a step for LR and momentum held as 0-dim tensors (what a CUDA graph replays).

    With float hyperparameters it is torch's step. With tensors it computes the same update as torch's
    (L2 weight decay added to the gradient, momentum buffer m*buf + grad, Nesterov grad + m*buf) with
    foreach ops that take a tensor scalar; torch's own passes the momentum as a Python number."""

    @torch.no_grad()
    def step(self, closure=None):
        if not _has_tensor_hyperparameters(self, "momentum"):
            return super().step(closure)
        for group, params in _tensor_step_groups(self, closure, unsupported=("dampening", "maximize")):
            lr, momentum = group["lr"], group["momentum"]
            grads = [p.grad for p in params]
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            # torch starts the buffer as a copy of the first gradient; m * 0 + grad is that, exactly.
            for p in params:
                if self.state[p].get("momentum_buffer") is None:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p)
            bufs = [self.state[p]["momentum_buffer"] for p in params]
            torch._foreach_mul_(bufs, momentum)
            torch._foreach_add_(bufs, grads)
            update = torch._foreach_add(grads, torch._foreach_mul(bufs, momentum)) if group["nesterov"] else bufs
            torch._foreach_add_(params, torch._foreach_mul(update, -lr))
        return None


class AdamW(torch.optim.AdamW):
    """torch.optim.AdamW, plus a step for LR and beta1 held as 0-dim tensors that a CUDA graph can capture.

    With float hyperparameters it is torch's step. With tensors it computes the same update (decoupled weight decay,
    bias-corrected moments, per-parameter step counts on the device) with ops that take tensors, reading none of
    them on the host (a test checks that): a step through torch's capturable path with tensor betas failed to
    capture on an H100 (docs/gpu.md), cause not isolated."""

    @torch.no_grad()
    def step(self, closure=None):
        if not _has_tensor_hyperparameters(self, "betas"):
            return super().step(closure)
        for group, params in _tensor_step_groups(self, closure, unsupported=("amsgrad", "maximize")):
            lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                elif state["step"].device != p.device:  # restored from a run whose counts lived on the host
                    state["step"] = state["step"].to(device=p.device, dtype=torch.float32)
            grads = [p.grad for p in params]
            steps = [self.state[p]["step"] for p in params]
            exp_avgs = [self.state[p]["exp_avg"] for p in params]
            exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
            torch._foreach_add_(steps, 1.0)
            if wd:
                torch._foreach_mul_(params, 1 - lr * wd)
            torch._foreach_mul_(exp_avgs, beta1)  # exp_avg.lerp_(grad, 1 - beta1), as products
            torch._foreach_add_(exp_avgs, torch._foreach_mul(grads, 1 - beta1))
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
            # Every parameter of a group steps together: one step count serves the bias corrections.
            count = steps[0]
            step_size = lr / (1 - torch.pow(beta1, count))
            denom = torch._foreach_sqrt(exp_avg_sqs)
            torch._foreach_div_(denom, torch.sqrt(1 - torch.pow(beta2, count)))
            torch._foreach_add_(denom, eps)
            update = torch._foreach_div(exp_avgs, denom)
            torch._foreach_mul_(update, step_size)
            torch._foreach_sub_(params, update)
        return None


def capturable_optimizer(
    model: torch.nn.Module, cfg: OptimizerConfig, lr: float, momentum: float
) -> torch.optim.Optimizer:
    """build_optimizer's optimizer, every step of which a CUDA graph can capture: the classes above, on AdamW's
    multi-tensor kernels (its fused one reads beta1 on the host)."""
    return build_optimizer(model, cfg, lr, momentum, OptimizerClasses(SGD, AdamW, kernel={"foreach": True}))


class DeviceHyperparams:
    """Every param group's scheduled values mirrored in 0-dim tensors on `device`: lr, and the momentum (SGD's and
    Muon's `momentum`, AdamW's beta1). beta2 is not scheduled and stays a float: an optimizer step may use it as a
    Python number, and reading a device tensor on the host is what a capture refuses."""

    def __init__(self, optimizer: torch.optim.Optimizer, device: torch.device):
        self.groups = optimizer.param_groups
        tensor = lambda value: torch.tensor(float(value), dtype=torch.float32, device=device)  # noqa: E731
        self.tensors = [
            {key: tensor(group[key][0] if key == "betas" else group[key]) for key in SCHEDULED if key in group}
            for group in self.groups
        ]

    def feed(self) -> None:
        """Copy the groups' current values into the tensors (asynchronous: a fill kernel per value)."""
        for group, mirrored in zip(self.groups, self.tensors):
            for key, tensor in mirrored.items():
                tensor.fill_(group[key][0] if key == "betas" else group[key])

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """While inside, the groups hold the tensors in place of their floats (the optimizer step reads them)."""
        saved = [{key: group[key] for key in mirrored} for group, mirrored in zip(self.groups, self.tensors)]
        self.feed()
        for group, mirrored in zip(self.groups, self.tensors):
            group.update(
                {key: (tensor, group["betas"][1]) if key == "betas" else tensor for key, tensor in mirrored.items()}
            )
        try:
            yield
        finally:
            for group, values in zip(self.groups, saved):
                group.update(values)  # also Muon's momentum, which MuonWithAdamW's step set from beta1's tensor


class GraphedStep:
    """A TrainStep captured once in a CUDA graph and replayed; on a CPU, the same step run eagerly.

    `graph_key` returns what the captured graph depends on beyond tensors (e.g. whether the auxiliary losses
    are on); when it changes, the step warms up and captures again."""

    def __init__(
        self,
        step: TrainStep,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        graph_key: Callable[[], object] = lambda: None,
        warmup_steps: int = 3,
    ):
        if step.scaler is not None:
            raise ValueError("a CUDA-graph step cannot use a GradScaler (its skip decision is a host sync)")
        self.step, self.optimizer, self.device = step, optimizer, device
        self.micro_batches = step.micro_batches
        self.graph_key, self.warmup_steps = graph_key, warmup_steps
        self.capture = device.type == "cuda"
        self.hyper: DeviceHyperparams | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.key: object = None
        self.warmups_left = warmup_steps
        self.static_batches: list[Batch] = []
        self.static_result: StepResult | None = None
        self.captures = 0

    def __call__(self, batches: Sequence[Batch]) -> StepResult:
        if self.hyper is None:  # built lazily: after a resumed run restored the optimizer's state and groups
            self.hyper = DeviceHyperparams(self.optimizer, self.device)
        # The model sees the same input tensors in warm-up and capture: torch.compile guards on its inputs
        # (aliasing, strides), and a guard failing inside a capture would recompile there, which fails.
        if not self.static_batches:
            self.static_batches = [(x.clone(), y.clone()) for x, y in batches]
        for (x, y), (static_x, static_y) in zip(batches, self.static_batches, strict=True):
            static_x.copy_(x, non_blocking=True)
            static_y.copy_(y, non_blocking=True)
        key = self.graph_key()
        if key != self.key:
            self.graph, self.key, self.warmups_left = None, key, self.warmup_steps
        if not self.capture or self.warmups_left > 0:
            return self._eager()
        if self.graph is None:
            self._capture()
        self.hyper.feed()
        self.graph.replay()
        return self.static_result

    def _eager(self) -> StepResult:
        """A real training step through the same tensor-hyperparameter path, on a side stream (for capture)."""
        self.warmups_left -= 1
        stream = torch.cuda.Stream(self.device) if self.capture else None
        if stream is not None:
            stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext(), self.hyper.installed():
            result = self.step(self.static_batches)
        if stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(stream)
        return result

    def _capture(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)  # backward allocates the gradients inside the graph's pool
        self.graph = None
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        try:
            with self.hyper.installed(), torch.cuda.graph(graph):
                # Not zeroed after: in the graph, each replay's first backward writes the gradients afresh.
                self.static_result = self.step.run(self.static_batches)
        except Exception as e:  # an op that needs the host (a sync, a pageable copy) inside the step
            raise GraphCaptureError(
                f"capturing the training step in a CUDA graph failed ({type(e).__name__}: "
                f"{str(e).splitlines()[0]}); train with train.cuda_graphs: false"
            ) from e
        self.graph = graph
        self.captures += 1
