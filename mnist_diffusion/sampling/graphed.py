"""A network's inference calls replayed from CUDA graphs (``sample --cuda-graphs``)."""

from __future__ import annotations

import torch


class GraphedForward(torch.nn.Module):
    """``module(*args)`` for inference, replayed from one CUDA graph per argument signature
    (shapes, dtypes, and which arguments are None): a sampler's network calls, guided ones
    included, become one launch each. Arguments are copied into the graph's static inputs, and
    the static output is copied out. ``capture`` (a test's stand-in) turns a function of the
    static inputs into its replay; the default captures a CUDA graph."""

    def __init__(self, module: torch.nn.Module, capture=None):
        super().__init__()
        self.module = module
        self.num_classes = getattr(module, "num_classes", 0)  # the Denoiser reads it
        self.capture = capture or _capture_cuda_graph
        self.graphs: dict[tuple, tuple] = {}

    def forward(self, *args: torch.Tensor | None) -> torch.Tensor:
        key = tuple(None if a is None else (tuple(a.shape), a.dtype) for a in args)
        if key not in self.graphs:
            static = [None if a is None else a.clone() for a in args]
            output: list[torch.Tensor] = []

            def run() -> None:
                output[:] = [self.module(*static)]

            replay = self.capture(run)
            self.graphs[key] = (static, replay, output)
        static, replay, output = self.graphs[key]
        for buffer, a in zip(static, args, strict=True):
            if buffer is not None:
                buffer.copy_(a)
        replay()
        return output[0].clone()


def _capture_cuda_graph(run) -> callable:
    """Warm ``run`` up on a side stream, capture it as a CUDA graph, and return its replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    return graph.replay
