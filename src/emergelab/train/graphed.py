"""The training step replayed from a CUDA graph (``execution.cuda_graphs = auto``).

At the sizes emergelab trains, a seed-batched step on a GPU is bound by kernel launches, not by the GPU:
a few hundred small kernels per step, each running for microseconds (benchmarks/README.md: 6.5 ms per
step at 64 seeds of the S = 16 linear map on an H200, the GPU idle most of it). Captured once, the whole
step (forward, loss, backward, per-member clipping, AdamW, the running loss sum) is one graph launch.

The graph reads its inputs from static buffers, so ``GraphedStep(tokens, weights)`` copies the step's
tokens ``[E, B, L]`` and loss weights ``[P]`` into them before each replay; everything else the step reads
(parameters, gradients, optimizer state, the learning rate as a device tensor, the loss sum) is updated
in place and never reallocated. The first ``warmup`` calls run the step eagerly on a side stream, as
``torch.cuda.graphs``' whole-network recipe asks (the optimizer state, cuBLAS workspaces and autograd's
streams exist before capture); they are real training steps computing what the graph computes. The call
after them captures (capturing records kernels without running them) and replays.

A capture that fails (the model reads a value back from the GPU, say) raises :class:`CaptureFailed`
before the step has changed anything, and the caller trains on eagerly.
"""

from __future__ import annotations

from typing import Callable

import torch

StepBody = Callable[[torch.Tensor, torch.Tensor], None]  # (tokens [E, B, L], loss weights [P]) -> None


class CaptureFailed(RuntimeError):
    """The step could not be captured; nothing of it ran."""


class GraphCaptureWarning(UserWarning):
    """A run trains without CUDA graphs because its step could not be captured (printed as one line)."""

    one_line = True


class GraphedStep:
    """``body(tokens, weights)`` (one training step, in place) replayed from a CUDA graph on ``device``."""

    def __init__(self, body: StepBody, device: torch.device, warmup: int = 3):
        if torch.device(device).type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, got {device}")
        self.body, self.device, self.warmup = body, torch.device(device), warmup
        self.eager_calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.tokens: torch.Tensor | None = None  # [E, B, L], the graph's input buffers
        self.weights: torch.Tensor | None = None  # [P]

    def __call__(self, tokens: torch.Tensor, weights: torch.Tensor) -> None:
        if self.tokens is None or self.weights is None:
            self.tokens, self.weights = tokens.clone(), weights.clone()
        else:
            self.tokens.copy_(tokens)
            self.weights.copy_(weights)
        if self.graph is not None:
            self.graph.replay()
        elif self.eager_calls < self.warmup:
            self._eager_on_side_stream()
        else:
            self._capture()
            assert self.graph is not None
            self.graph.replay()

    def _eager_on_side_stream(self) -> None:
        assert self.tokens is not None and self.weights is not None
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            self.body(self.tokens, self.weights)
        current.wait_stream(side)
        self.eager_calls += 1

    def _capture(self) -> None:
        assert self.tokens is not None and self.weights is not None
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.body(self.tokens, self.weights)
        except Exception as error:  # e.g. a host read inside the step: not permitted while capturing
            torch.cuda.synchronize(self.device)
            raise CaptureFailed(f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") \
                from error
        self.graph = graph
