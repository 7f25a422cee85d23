"""The whole training step as one CUDA graph: forward, backward, clipping and the optimizer step, replayed each step.

A T12 step on an H100 is short enough that launching its few thousand kernels from Python costs as much as
running them. A captured graph launches them all at once and never waits on the host. What a graph cannot do
is read Python values: it replays the kernels with the arguments they were captured with. So:
- the scheduled LR and momentum of every param group live in 0-dim device tensors (`DeviceHyperparams`); the
  scheduler keeps setting the groups' floats, and before each replay `feed()` copies them into the tensors,
  so the replayed step follows the schedule exactly;
- the batches are copied into static input buffers, and the loss, gradient norm and clipping flag come out
  of static output tensors;
- the optimizers must take tensor hyperparameters without reading them on the host (chargpt.train.optimizers).
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
from chargpt.train.loop import Batch, StepResult, TrainStep

SCHEDULED = ("lr", "momentum", "betas")


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
