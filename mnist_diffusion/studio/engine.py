"""The studio's work, without the web: the runs it offers, each loaded once, and what each panel
asks of a run, done by the library's own functions (:func:`generate`, :func:`inpaint`,
:func:`sdedit`, :func:`interpolate`, the schedule's ``q_sample``).

All of it runs on one worker thread, one request at a time, since the network already uses every
core. A request belongs to a page (its page_id); a newer request from the same page cancels the
older one at its next network call (:class:`Interruptible`).
"""

from __future__ import annotations

import base64
import dataclasses
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import SamplingConfig
from ..data.clusters import ClusterMatcher
from ..data.mnist import has_split, test_digits
from ..diffusion import pixels_to_x0, x0_to_unit
from ..diffusion.samplers import Start
from ..errors import UserError
from ..runs.loader import LoadedRun, load_run
from ..runs.store import CONFIG, WEIGHTS, runs_dir
from ..sampling.editing import check_strength, inpaint, interpolate, sdedit
from ..sampling.generate import check_batch, count_for, generate, parse_labels, resolve_for
from .requests import CleanupRequest, CompleteRequest, ForwardRequest, SampleRequest, WalkRequest

MAX_STREAMED = 100  # the most steps of one sample sent to the page; a longer walk (DDPM's T) sends every k-th
CURVE_POINTS = 500  # points of the alpha_bar and SNR curves sent to the page
EPS_SCALE = 2.5  # the predicted noise is shown as eps / 2.5 in [-1, 1]: +-2.5 standard deviations


class Cancelled(Exception):
    """A newer request from the same page took this one's place."""


class Interruptible(nn.Module):
    """A network that calls ``check`` before each evaluation, so that a sampling can be stopped
    between two steps by any of the library's samplers (``check`` raises :class:`Cancelled`)."""

    def __init__(self, net: nn.Module, check: Callable[[], None]):
        super().__init__()
        self.net = net
        self.check = check
        self.num_classes = getattr(net, "num_classes", 0)

    def forward(self, *args: Any) -> torch.Tensor:
        self.check()
        return self.net(*args)


def pixels(images: torch.Tensor) -> str:
    """Images in [0, 1], [N x 1 x 28 x 28], as base64 of N * 784 bytes (0-255, row by row)."""
    data = (images.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    return base64.b64encode(data.numpy().tobytes()).decode("ascii")


class Studio:
    """The runs of one artifacts folder (and the one given on the command line), loaded on first
    use and kept; the test digits of ``data_dir``; and the worker that runs every request."""

    def __init__(self, artifacts_dir: Path, data_dir: Path, device: torch.device, extra_run: Path | None = None):
        self.artifacts_dir, self.data_dir, self.device = Path(artifacts_dir), Path(data_dir), device
        self.extra_run = extra_run
        self.default_run = extra_run.name if extra_run is not None else None
        self.loaded: dict[str, LoadedRun] = {}
        self.matchers: dict[str, ClusterMatcher] = {}  # a clustered run's, made on its first --match-clusters
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="studio")
        self.pages_running: dict[str, threading.Event] = {}
        self.lock = threading.Lock()

    # ------------------------------------------------------------------ runs

    def runs(self) -> dict[str, Path]:
        """The runs the page may pick, by folder name: those of the artifacts folder with weights."""
        root = runs_dir(self.artifacts_dir)
        found = {p.name: p for p in sorted(root.iterdir()) if (p / WEIGHTS).is_file()} if root.is_dir() else {}
        if self.extra_run is not None:
            found[self.extra_run.name] = self.extra_run
        return {name: path for name, path in found.items() if (path / CONFIG).is_file()}

    def run(self, name: str) -> LoadedRun:
        """The run named ``name`` (one of :meth:`runs`), loaded once. Only names are taken: no path
        that a page sends is ever opened."""
        if name not in self.loaded:
            path = self.runs().get(name)
            if path is None:
                raise UserError(f"no run named {name[:80]!r} in {runs_dir(self.artifacts_dir)}")
            self.loaded[name] = load_run(path, self.device)
        return self.loaded[name]

    def warm_up(self, name: str, n: int = 16) -> Future:
        """A one-step sample of ``n`` digits on the worker, so that the kernels' first-call costs
        are paid before the first click rather than after it."""
        return self.submit(generate, self.run(name), n, SamplingConfig(steps=1))

    def info(self, name: str) -> dict[str, Any]:
        """What the page shows of a run: its schedule's curves and what it can be guided with."""
        run = self.run(name)
        T = run.schedule.num_timesteps
        every = max(1, math.ceil(T / CURVE_POINTS))
        ts = list(range(0, T, every))
        ab = run.schedule.float64["alphas_cumprod"]
        return {
            "run": name,
            "timesteps": T,
            "schedule": run.cfg.diffusion.schedule,
            "prediction": run.cfg.diffusion.prediction,
            "conditional": run.conditional,
            "guidance": dataclasses.asdict(run.guidance_kinds),
            "curve_t": ts,
            "alpha_bar": [float(ab[t]) for t in ts],
            "log10_snr": [math.log10(max(float(ab[t] / (1 - ab[t])), 1e-30)) for t in ts],
            "test_digits": self.has_test_digits(),
            "match_clusters": run.clustered and self.has_training_digits(),
        }

    def has_test_digits(self) -> bool:
        return has_split(self.data_dir, "test")

    def has_training_digits(self) -> bool:
        return has_split(self.data_dir, "train")

    def matcher(self, name: str) -> ClusterMatcher:
        """The ClusterMatcher of run ``name``, made once; never a download (the page offers the
        choice only where MNIST's training digits are in ``data_dir``)."""
        if name not in self.matchers:
            run = self.run(name)
            if run.clustered and not self.has_training_digits():
                raise UserError(
                    f"matching clusters needs MNIST's training digits in {self.data_dir} (`mnistdiff data download`)"
                )
            self.matchers[name] = run.cluster_matcher(self.data_dir)  # (refuses a run without clusters)
        return self.matchers[name]

    # ------------------------------------------------------------------ requests

    def begin(self, page_id: str) -> threading.Event:
        """A new request from page ``page_id``: the previous one is told to stop."""
        event = threading.Event()
        with self.lock:
            old = self.pages_running.get(page_id)
            if old is not None:
                old.set()
            self.pages_running[page_id] = event
        return event

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        return self.worker.submit(fn, *args)

    def interruptible(self, run: LoadedRun, stop: threading.Event) -> LoadedRun:
        """``run`` with networks that raise :class:`Cancelled` once ``stop`` is set."""

        def check() -> None:
            if stop.is_set():
                raise Cancelled("cancelled by a newer request from the same page")

        guide = Interruptible(run.guide, check) if run.guide is not None else None
        return dataclasses.replace(run, model=Interruptible(run.model, check), guide=guide)

    def prepare_sample(self, request: SampleRequest) -> dict[str, Any]:
        """The checked settings of a sample request (a UserError or ValueError if they are not)."""
        run = self.run(request.run)
        count_for(request.n, "n")
        settings = resolve_for(run, request.sampling())
        check_batch(run, settings, request.n)
        labels = parse_labels(request.digit, None, request.n, run.conditional)
        steps = settings.evaluations(run.schedule.num_timesteps)
        return {"run": run, "settings": settings, "labels": labels, "steps": steps}

    def stream_sample(self, plan: dict[str, Any], n: int, stop: threading.Event) -> Iterator[dict[str, Any]]:
        """Draw ``n`` digits as `mnistdiff sample` does (the same seed gives the same digits), and
        yield a frame per step as it is computed: x_t, the predicted x_0 and the predicted noise
        at that step's t; then the digits. Runs on the caller's thread; ``stop`` cancels it."""
        run = self.interruptible(plan["run"], stop)
        ab = run.schedule.alphas_cumprod
        steps, every = plan["steps"], max(1, math.ceil(plan["steps"] / MAX_STREAMED))
        frames: queue.Queue = queue.Queue()
        x_t: list[torch.Tensor] = []  # the x the next step starts from

        def start(first: int, b: int, generator: torch.Generator) -> Start:
            # 1. x_T ~ N(0, I), drawn as the sampler itself draws it, kept to show with the first step.
            x = torch.randn((b, run.cfg.model.in_channels, 28, 28), generator=generator, device=run.device)
            x_t.append(x)
            return Start(x, run.schedule.num_timesteps - 1)

        def callback(i: int, t: int, x_next: torch.Tensor, x0: torch.Tensor) -> None:
            # 2. The noise the step predicted: eps = (x_t - sqrt(alpha_bar_t) x_0) / sqrt(1 - alpha_bar_t).
            x, a = x_t.pop(), ab[t]
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
            x_t.append(x_next)
            if i % every == 0 or i + 1 == steps:
                frames.put(
                    {
                        "event": "step",
                        "step": i,
                        "steps": steps,
                        "t": t,
                        "x_t": pixels(x0_to_unit(x)),
                        "x0": pixels(x0_to_unit(x0)),
                        "eps": pixels(x0_to_unit(eps / EPS_SCALE)),
                    }
                )

        began = time.perf_counter()
        finished = object()  # put after the last frame

        def work() -> torch.Tensor:
            try:
                return generate(run, n, plan["settings"], labels=plan["labels"], callback=callback, start=start)
            finally:
                frames.put(finished)

        done = self.submit(work)
        while (frame := frames.get()) is not finished:  # each frame as soon as the worker made it
            yield frame
        digits = done.result()  # or raises Cancelled, or what went wrong
        yield {"event": "done", "n": n, "digits": pixels(digits), "seconds": time.perf_counter() - began}

    def complete(self, request: CompleteRequest, stop: threading.Event) -> dict[str, Any]:
        """ "Fill the rest": the drawing inpainted ``n`` times (`mnistdiff inpaint`)."""
        run = self.interruptible(self.run(request.run), stop)
        image = torch.tensor(request.drawing, dtype=torch.float32).reshape(1, 1, 28, 28)
        settings = request.sampling()
        out = inpaint(
            run,
            image,
            request.missing(),
            settings,
            n=request.n,
            digit=request.digit,
            jumps=request.jumps,
            resample=request.resample,
            match=self.matcher(request.run) if request.match_clusters else None,
        )
        return {"n": request.n, "digits": pixels(out[0])}

    def cleanup(self, request: CleanupRequest, stop: threading.Event) -> dict[str, Any]:
        """ "Clean up": SDEdit of the drawing (`mnistdiff sample --init --strength`)."""
        run = self.interruptible(self.run(request.run), stop)
        drawing = torch.tensor(request.drawing, dtype=torch.float32).reshape(1, 28, 28)
        out = sdedit(
            run, drawing, request.n, request.sampling(), strength=check_strength(request.strength), digit=request.digit
        )
        return {"n": request.n, "digits": pixels(out)}

    def forward(self, request: ForwardRequest) -> dict[str, Any]:
        """x_t ~ q(x_t | x_0) of a test digit or the drawing (`mnistdiff visualize-forward`)."""
        schedule = self.run(request.run).schedule
        T = schedule.num_timesteps
        if request.t >= T:
            raise UserError(f"t must be between 0 and {T - 1} for this run (got {request.t})")
        if request.drawing is not None:
            x0 = torch.tensor(request.drawing, dtype=torch.float32).reshape(1, 1, 28, 28) * 2 - 1
        else:
            if not self.has_test_digits():
                raise UserError(f"no MNIST test digits in {self.data_dir}: draw one, or start with --data-dir")
            x0 = pixels_to_x0(test_digits(self.data_dir, [request.test_digit])[0])
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(request.seed))
        device = schedule.alphas_cumprod.device
        x_t = schedule.q_sample(x0.to(device), torch.tensor([request.t], device=device), noise.to(device))
        ab = float(schedule.float64["alphas_cumprod"][request.t])
        return {"t": request.t, "x0": pixels(x0_to_unit(x0)), "x_t": pixels(x0_to_unit(x_t)), "alpha_bar": ab}

    def walk(self, request: WalkRequest, stop: threading.Event) -> dict[str, Any]:
        """An interpolation between two seeds or drawings (`mnistdiff interpolate`)."""
        run = self.interruptible(self.run(request.run), stop)
        a, b = request.end(request.a), request.end(request.b)
        out = interpolate(run, a, b, request.sampling(), frames=request.frames, digit=request.digit)
        return {"n": request.frames, "digits": pixels(out)}

    def close(self) -> None:
        with self.lock:
            for event in self.pages_running.values():
                event.set()
        self.worker.shutdown(wait=True, cancel_futures=True)
