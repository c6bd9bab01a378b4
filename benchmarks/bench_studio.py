"""How live `mnistdiff studio` feels on one trained run: the studio served on a free local port (the
app `mnistdiff studio` serves, in this process), asked over HTTP as the page asks it.

(a) A sample of N digits: seconds from sending the request to the first streamed step (x_t, the
predicted x_0 and noise of step 1) and to the last digits, beside the same sample drawn by the
library with the run already loaded (``generate``, what `sample` runs) and by `mnistdiff sample`
itself as a user types it (a new process: Python, torch and the run loaded, then the sample).
(b) "Fill the rest" of a drawing (the top bar of a 7) as the page asks for it by default (on a
clustered run, with clusters that match the drawing): seconds to the completions.
(c) What "fill the rest" makes of that bar: 64 completions (the page's defaults, seeds 0-3 of 16
each) read by the shipped classifier, the share read as 7 or 9 and the digits' histogram, for the
page's default and without matching clusters; beside them, MNIST's own answer: the digits of the
training images weighed by how well they agree with the bar (the kernel of ``ClusterMatcher``).

Each is timed ``--repeat`` times after one untimed request that loads the run (the studio's sample
and the library's alternated); the median is kept.

    python benchmarks/bench_studio.py --run 00000-default --artifacts-dir artifacts

Writes ``benchmarks/results/studio.json`` and its ``.md`` table; ``--screenshots docs`` also writes
a picture of each panel of the page (Chromium, through Playwright) into that folder.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch
from common import RESULTS_DIR, machine_info, machine_line, run_info, run_script, say, write_results

from mnist_diffusion.config import DEFAULT_ARTIFACTS_DIR, DEFAULT_DATA_DIR, SamplingConfig
from mnist_diffusion.errors import UserError
from mnist_diffusion.runs.store import resolve_run
from mnist_diffusion.runtime import setup_device
from mnist_diffusion.sampling.generate import generate

# A 7's top bar: rows 8-9, columns 8-20, the rows where the training 7s have the most ink in those
# columns (and the widest row of most 7s). Higher up (rows 5-7) is where 2s, 3s, 5s and 0s begin,
# and both the model and the training digits with ink there finish such a bar as those.
BAR_TOP, BAR_COLUMNS = 8, (8, 20)


def bar_drawing(top: int) -> list[float]:
    """A 7's top bar two pixels thick, rows ``top`` and ``top + 1``, columns BAR_COLUMNS: 784 values."""
    return [
        1.0 if top <= i // 28 <= top + 1 and BAR_COLUMNS[0] <= i % 28 <= BAR_COLUMNS[1] else 0.0 for i in range(784)
    ]


READ_SEEDS = 4  # (c): requests of 16 completions, seeds 0-3
PANELS = ("sample", "draw", "forward", "walk")


def post(url: str, body: dict) -> urllib.request.Request:
    return urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})


def stream_sample(base: str, body: dict) -> tuple[float, float, int]:
    """Seconds to the first step and to the digits of one streamed sample, and the steps seen."""
    began, first, steps = time.perf_counter(), None, 0
    with urllib.request.urlopen(post(base + "api/sample", body), timeout=600) as reply:
        for line in reply:
            if not line.startswith(b"data: "):
                continue
            event = json.loads(line[6:])
            if event["event"] == "step":
                steps += 1
                first = first if first is not None else time.perf_counter() - began
            elif event["event"] == "done":
                return first, time.perf_counter() - began, steps
            else:
                raise UserError(f"the studio answered {event}")
    raise UserError("the stream ended before the digits")


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        out.append(time.perf_counter() - began)
    return out


def seven_or_nine(histogram: list[int]) -> float:
    return (histogram[7] + histogram[9]) / sum(histogram)


def read_completions(base: str, fill: dict) -> dict:
    """What "fill the rest" makes of ``fill``'s drawing: READ_SEEDS requests of 16 completions read by
    the shipped classifier (the one `eval` scores with)."""
    from mnist_diffusion.evaluation.features import extract, load_feature_net

    net, _ = load_feature_net()
    digits = []
    for seed in range(READ_SEEDS):
        reply = json.loads(
            urllib.request.urlopen(post(base + "api/complete", {**fill, "n": 16, "seed": seed}), timeout=600).read()
        )
        raw = torch.frombuffer(bytearray(base64.b64decode(reply["digits"])), dtype=torch.uint8)
        digits.append(raw.reshape(-1, 1, 28, 28).float() / 255)
    _, probs = extract(net, torch.cat(digits))
    histogram = torch.bincount(probs.argmax(1), minlength=10).tolist()
    return {"n": len(probs), "histogram": histogram, "seven_or_nine": seven_or_nine(histogram)}


def mnist_answer(data_dir: Path, drawing: list[float]) -> dict:
    """The training set's own answer to ``drawing``: p(digit | the drawn pixels), the kernel estimate
    of ``ClusterMatcher`` with the digit labels as the clusters."""
    from mnist_diffusion.data.clusters import ClusterMatcher
    from mnist_diffusion.data.mnist import load_mnist

    images, labels = load_mnist(data_dir, "train")
    x = torch.tensor(drawing).reshape(1, 28, 28)
    probs = ClusterMatcher(images, labels, 10).probabilities(x, x > 0)[0]
    return {"digits": [round(p, 4) for p in probs.tolist()], "seven_or_nine": float(probs[7] + probs[9])}


def screenshots(base: str, out: Path, run: str, rows: tuple[int, int]) -> list[Path]:
    """A picture of each panel after using it: a sample, a drawing filled, t moved, a walk."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise UserError("--screenshots needs Chromium (Debian: apt-get install chromium)")
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.route("**/*", lambda r: r.continue_() if r.request.url.startswith(base) else r.abort())
        page.goto(base)
        page.wait_for_function("window.studio && window.studio.info !== null")
        page.click("#sample-go")
        page.wait_for_function("window.studio.results.sample !== undefined", timeout=600_000)
        page.locator("#sample-step").fill("8")
        box = page.locator("#pad").bounding_box()
        for row in rows:  # through the middle of each pixel row of the bar
            y = box["y"] + (row + 0.5) * box["height"] / 28
            page.mouse.move(box["x"] + (BAR_COLUMNS[0] + 0.5) * box["width"] / 28, y)
            page.mouse.down()
            page.mouse.move(box["x"] + (BAR_COLUMNS[1] + 0.5) * box["width"] / 28, y, steps=12)
            page.mouse.up()
        page.click("#fill")
        page.wait_for_function("window.studio.results.complete !== undefined", timeout=600_000)
        page.locator("#fwd-t").fill(str(round(0.3 * page.evaluate("window.studio.info.timesteps"))))
        page.wait_for_timeout(1000)
        page.click("#walk-go")
        page.wait_for_function("window.studio.results.walk !== undefined", timeout=600_000)
        written = []
        for panel in PANELS:
            path = out / f"studio-{panel}.png"
            page.locator(f"#{panel}").screenshot(path=str(path))
            written.append(path)
        browser.close()
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default=None, help="the run (default: the latest)")
    ap.add_argument("--artifacts-dir", type=Path, default=DEFAULT_ARTIFACTS_DIR)
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    ap.add_argument("-n", type=int, default=16, help="digits of the sample")
    ap.add_argument("--steps", type=int, default=20, help="steps of the sample")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--bar-top", type=int, default=BAR_TOP, help="the 7's bar: its first of two rows (0-26)")
    ap.add_argument("--screenshots", type=Path, default=None, help="also write docs/studio-*.png here")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "studio.json")
    args = ap.parse_args()
    if not 0 <= args.bar_top <= 26:
        ap.error(f"--bar-top must be a row from 0 to 26 (got {args.bar_top})")
    rows, drawing = (args.bar_top, args.bar_top + 1), bar_drawing(args.bar_top)

    from mnist_diffusion.studio.engine import Studio
    from mnist_diffusion.studio.server import create_app, serving

    device = setup_device("cpu")
    run_dir = resolve_run(args.run, args.artifacts_dir)
    studio = Studio(args.artifacts_dir, args.data_dir, device, extra_run=run_dir)
    loaded = studio.run(run_dir.name)
    body = {"page_id": "bench", "run": run_dir.name, "n": args.n, "steps": args.steps, "seed": 0}
    fill = {"page_id": "bench", "run": run_dir.name, "drawing": drawing, "n": 8, "seed": 0}
    fill["match_clusters"] = studio.info(run_dir.name)["match_clusters"]  # what the page sends by default
    settings = SamplingConfig(steps=args.steps)
    with serving(create_app(studio)) as base:
        say(f"studio at {base}: one sample to warm up")
        stream_sample(base, body)
        firsts, wholes, library = [], [], []
        for _ in range(args.repeat):  # alternated, so that both see the same load on a shared machine
            first, whole, steps = stream_sample(base, body)
            firsts.append(first)
            wholes.append(whole)
            library += timed(lambda: generate(loaded, args.n, settings), 1)
        say(f"first step {statistics.median(firsts):.3f} s, all {statistics.median(wholes):.3f} s ({steps} steps)")
        fills = timed(
            lambda: urllib.request.urlopen(post(base + "api/complete", fill), timeout=600).read(), args.repeat
        )
        say(f"fill the rest: {statistics.median(fills):.3f} s")
        read = read_completions(base, fill)
        say(f"fill the rest of a 7's bar: {read['seven_or_nine']:.0%} read as 7 or 9 ({read['histogram']})")
        plain = read_completions(base, {**fill, "match_clusters": False}) if fill["match_clusters"] else read
        mnist = mnist_answer(args.data_dir, drawing) if studio.has_training_digits() else None
        shots = screenshots(base, args.screenshots, run_dir.name, rows) if args.screenshots else []
    studio.close()
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "mnist_diffusion", "sample", "--run", str(run_dir), "-n", str(args.n)]
        command += ["--steps", str(args.steps), "--device", "cpu", "-o", str(Path(tmp) / "grid.png")]
        cli = timed(lambda: subprocess.run(command, check=True, capture_output=True), args.repeat)
    results = {
        "machine": machine_info(device),
        "date": dt.date.today().isoformat(),
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "run": run_info(loaded),
        "n": args.n,
        "steps": args.steps,
        "sampler": settings.sampler,
        "repeat": args.repeat,
        "first_step_s": firsts,
        "whole_sample_s": wholes,
        "fill_the_rest_s": fills,
        "library_sample_s": library,
        "cli_sample_s": cli,
        "seven_bar": {
            "rows": rows,
            "columns": BAR_COLUMNS,
            "match_clusters": fill["match_clusters"],
            **read,
            "without_matching": plain,
            "mnist": mnist,
        },
        "screenshots": [str(p) for p in shots],
        "torch_threads": torch.get_num_threads(),
    }
    med = {k: statistics.median(results[k]) for k in results if k.endswith("_s")}
    table = (
        machine_line(results)
        + f"\nrun {run_dir.name} ({results['run']['preset']} preset, {results['run']['parameters']:,} parameters); "
        f"{args.n} digits, {settings.sampler} {args.steps} steps; median of {args.repeat}\n\n"
        "| what | seconds |\n|---|---|\n"
        f"| studio: first streamed step | {med['first_step_s']:.2f} |\n"
        f"| studio: the whole sample | {med['whole_sample_s']:.2f} |\n"
        f"| library: `generate`, run loaded | {med['library_sample_s']:.2f} |\n"
        f"| `mnistdiff sample`, a new process | {med['cli_sample_s']:.2f} |\n"
        f"| studio: fill the rest, 8 completions | {med['fill_the_rest_s']:.2f} |\n"
        f"\nA 7's top bar (rows {rows[0]}-{rows[1]}, columns {BAR_COLUMNS[0]}-{BAR_COLUMNS[1]}) filled "
        f"{read['n']} times"
        + (" (clusters that match the drawing)" if fill["match_clusters"] else "")
        + f": {read['seven_or_nine']:.0%} read as 7 or 9; digits 0-9: {read['histogram']}\n"
    )
    if fill["match_clusters"]:
        table += f"Without matching clusters: {plain['seven_or_nine']:.0%}; digits 0-9: {plain['histogram']}\n"
    if mnist is not None:
        table += (
            f"MNIST's training digits weighed by how well they fit the bar: {mnist['seven_or_nine']:.0%} 7s or 9s\n"
        )
    write_results(args.out, results, table)
    print(table)


if __name__ == "__main__":
    run_script(main)
