"""`mnistdiff studio`'s API through FastAPI's test client: each endpoint gives what the library
gives for the same seed, every bad request gets a 4xx with a reason, runs are picked by name only,
a newer request cancels the older, and nothing is written to the run folder."""

from __future__ import annotations

import base64
import json
import re
import signal
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mnist_diffusion import inpaint, interpolate, load_run, sample
from mnist_diffusion.cli import app
from mnist_diffusion.sampling.editing import sdedit

runner = CliRunner()
needs_server = pytest.mark.skipif(
    find_spec("fastapi") is None or find_spec("httpx") is None,
    reason="needs the studio extra and httpx: pip install 'mnist-diffusion[dev]'",
)
RUN = "00000-default"


def as_bytes(images: torch.Tensor) -> np.ndarray:
    """Images in [0, 1] as the studio sends them: 0-255, row by row."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).flatten().numpy()


def decoded(b64: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), np.uint8)


def bar() -> list[float]:
    """A drawing: the top bar of a 7, rows 5-6, columns 6-21."""
    drawing = np.zeros((28, 28), np.float32)
    drawing[5:7, 6:22] = 1.0
    drawing[7, 6:22] = 0.4
    return drawing.flatten().tolist()


def folder_state(path) -> dict:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*"))}


@pytest.fixture(scope="module")
def served(tiny_run, data_dir):
    from fastapi.testclient import TestClient

    from mnist_diffusion.studio.engine import Studio
    from mnist_diffusion.studio.server import create_app

    artifacts, run_dir = tiny_run
    before = folder_state(run_dir)
    studio = Studio(artifacts, data_dir, torch.device("cpu"))
    with TestClient(create_app(studio), base_url="http://127.0.0.1") as client:
        yield studio, client, load_run(RUN, device="cpu", artifacts_dir=artifacts)
    studio.close()
    assert folder_state(run_dir) == before, "the studio wrote into the run folder"


def events(client, body: dict) -> list[dict]:
    with client.stream("POST", "/api/sample", json={"run": RUN, **body}) as response:
        assert response.status_code == 200, response.read()
        return [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]


@needs_server
def test_the_runs_and_a_runs_schedule(served):
    _, client, run = served
    assert client.get("/api/runs").json() == {"runs": [RUN], "default": RUN}
    info = client.get("/api/info", params={"run": RUN}).json()
    assert info["timesteps"] == 50 and info["test_digits"] is True
    assert info["guidance"] == {"auto": False, "labels": False, "clusters": True}
    ab = run.schedule.float64["alphas_cumprod"]
    assert info["alpha_bar"] == pytest.approx([float(a) for a in ab])
    assert info["log10_snr"][10] == pytest.approx(float(torch.log10(ab[10] / (1 - ab[10]))))


@needs_server
@pytest.mark.parametrize("sampler, steps", [("dpmpp-2m-sde", 6), ("ddim", 4), ("ddpm", None)])
def test_a_streamed_sample_is_the_librarys_with_a_frame_per_step(served, sampler, steps):
    _, client, run = served
    got = events(client, {"n": 5, "sampler": sampler, "steps": steps, "seed": 7})
    *frames, done = got
    assert done["event"] == "done" and done["n"] == 5
    want = sample(run, 5, sampler=sampler, steps=steps, seed=7)
    assert np.array_equal(decoded(done["digits"]), as_bytes(want))
    assert [f["step"] for f in frames] == list(range(steps or 50))
    assert all(len(decoded(f[k])) == 5 * 784 for f in frames for k in ("x_t", "x0", "eps"))
    # x_t of each step is where the step before it ended; x_T is unit noise, so its pixels spread wide.
    assert decoded(frames[0]["x_t"]).std() > 60
    assert not np.array_equal(decoded(frames[0]["x0"]), decoded(frames[-1]["x0"]))


@needs_server
def test_the_predicted_noise_is_what_the_network_predicts(served):
    _, client, run = served
    first = events(client, {"n": 2, "sampler": "ddim", "steps": 3, "seed": 1})[0]
    x_t = torch.tensor(decoded(first["x_t"]), dtype=torch.float32).reshape(2, 1, 28, 28) / 255 * 2 - 1
    x0 = torch.tensor(decoded(first["x0"]), dtype=torch.float32).reshape(2, 1, 28, 28) / 255 * 2 - 1
    eps = torch.tensor(decoded(first["eps"]), dtype=torch.float32).reshape(2, 1, 28, 28) / 255 * 2 - 1
    a = run.schedule.alphas_cumprod[first["t"]]
    inside = (x_t.abs() < 0.99) & (eps.abs() < 0.99)  # pixels the picture did not clip
    recon = a.sqrt() * x0 + (1 - a).sqrt() * eps * 2.5
    assert torch.allclose(recon[inside], x_t[inside], atol=0.05)


@needs_server
def test_completions_keep_the_drawing_and_are_the_librarys(served):
    _, client, run = served
    drawing = bar()
    reply = client.post("/api/complete", json={"run": RUN, "drawing": drawing, "n": 3, "steps": 10, "seed": 2})
    assert reply.status_code == 200, reply.text
    got = decoded(reply.json()["digits"]).reshape(3, 784)
    image = torch.tensor(drawing).reshape(1, 1, 28, 28)
    want = inpaint(run, image, image == 0, n=3, steps=10, seed=2, resample=1)
    assert np.array_equal(got.flatten(), as_bytes(want))
    drawn = np.array(drawing) > 0
    assert np.array_equal(got[:, drawn], np.broadcast_to(as_bytes(torch.tensor(drawing))[drawn], (3, drawn.sum())))


@needs_server
def test_completions_with_matched_clusters_are_the_librarys(served, data_dir):
    studio, client, run = served
    assert client.get(f"/api/info?run={RUN}").json()["match_clusters"] is True  # clustered, training digits at hand
    drawing = bar()
    body = {"run": RUN, "drawing": drawing, "n": 3, "steps": 4, "seed": 2, "match_clusters": True}
    reply = client.post("/api/complete", json=body)
    assert reply.status_code == 200, reply.text
    image = torch.tensor(drawing).reshape(1, 1, 28, 28)
    want = inpaint(run, image, image == 0, n=3, steps=4, seed=2, resample=1, match=run.cluster_matcher(data_dir))
    assert np.array_equal(decoded(reply.json()["digits"]), as_bytes(want))
    plain = inpaint(run, image, image == 0, n=3, steps=4, seed=2, resample=1)
    assert not np.array_equal(as_bytes(want), as_bytes(plain))


@needs_server
def test_matched_clusters_are_refused_in_one_line_where_they_cannot_be_had(tiny_run, data_dir, tmp_path):
    """Without MNIST's training digits in --data-dir, or for a run without clusters, the page is
    told not to offer matching and a request for it is a 4xx that says why."""
    from conftest import TINY_FLAGS
    from fastapi.testclient import TestClient

    from mnist_diffusion.studio.engine import Studio
    from mnist_diffusion.studio.server import create_app

    plain = tmp_path / "plain"
    args = ["train", *TINY_FLAGS, "--clusters", "0", "--max-steps", "1", "--data-dir", str(data_dir)]
    assert runner.invoke(app, [*args, "--artifacts-dir", str(plain)]).exit_code == 0
    body = {"drawing": bar(), "n": 2, "steps": 2, "match_clusters": True}
    for artifacts, where, run, reason in (
        (tiny_run[0], tmp_path / "no-data", RUN, "needs MNIST's training digits .*`mnistdiff data download`"),
        (plain, data_dir, "00000-default", "clusters"),
    ):
        where.mkdir(exist_ok=True)
        studio = Studio(artifacts, where, torch.device("cpu"))
        with TestClient(create_app(studio), base_url="http://127.0.0.1") as client:
            assert client.get(f"/api/info?run={run}").json()["match_clusters"] is False
            reply = client.post("/api/complete", json={"run": run, **body})
            assert 400 <= reply.status_code < 500, reply.text
            assert re.search(reason, reply.json()["detail"]), reply.json()["detail"]
            assert client.post("/api/complete", json={"run": run, **body, "match_clusters": False}).status_code == 200
        studio.close()


@needs_server
def test_a_painted_mask_is_what_gets_filled(served):
    _, client, _ = served
    mask = np.zeros((28, 28), bool)
    mask[14:, :] = True  # the bottom half
    body = {"run": RUN, "drawing": bar(), "mask": mask.flatten().tolist(), "n": 2, "steps": 5}
    got = decoded(client.post("/api/complete", json=body).json()["digits"]).reshape(2, 28, 28)
    assert (got[:, :14] == as_bytes(torch.tensor(bar())).reshape(28, 28)[:14]).all()  # the top half as drawn


@needs_server
def test_clean_up_walk_and_forward_are_the_librarys(served):
    _, client, run = served
    drawing = bar()
    image = torch.tensor(drawing).reshape(1, 28, 28)
    body = {"run": RUN, "drawing": drawing, "n": 2, "strength": 0.5, "steps": 5, "seed": 4}
    got = decoded(client.post("/api/cleanup", json=body).json()["digits"])
    assert np.array_equal(got, as_bytes(sdedit(run, image, 2, strength=0.5, steps=5, seed=4)))
    body = {"run": RUN, "a": 3, "b": drawing, "frames": 3, "sampler": "ddim", "steps": 5}
    got = decoded(client.post("/api/walk", json=body).json()["digits"])
    assert np.array_equal(got, as_bytes(interpolate(run, 3, image, frames=3, sampler="ddim", steps=5)))
    reply = client.post("/api/forward", json={"run": RUN, "t": 20, "seed": 5, "drawing": drawing}).json()
    noise = torch.randn((1, 1, 28, 28), generator=torch.Generator().manual_seed(5))
    x_t = run.schedule.q_sample(image[None] * 2 - 1, torch.tensor([20]), noise)
    assert np.array_equal(decoded(reply["x_t"]), as_bytes((x_t + 1) / 2))
    assert reply["alpha_bar"] == pytest.approx(float(run.schedule.float64["alphas_cumprod"][20]))
    test_digit = client.post("/api/forward", json={"run": RUN, "t": 0, "test_digit": 3}).json()
    assert decoded(test_digit["x0"]).max() > 200  # a real digit of the test set, not a blank


BAD = [
    ("/api/sample", {"n": 10**9}),
    ("/api/sample", {"n": 0}),
    ("/api/sample", {"steps": 51}),  # more than the run's T
    ("/api/sample", {"steps": 10**30}),
    ("/api/sample", {"sampler": "euler"}),
    ("/api/sample", {"seed": -1}),
    ("/api/sample", {"seed": 2**70}),
    ("/api/sample", {"eta": 2.0}),
    ("/api/sample", {"label_guidance": 3.0}),  # the run has no digit labels
    ("/api/sample", {"cluster_guidance": 1e9}),
    ("/api/sample", {"digit": 3}),
    ("/api/sample", {"n": "many"}),
    ("/api/sample", {"unknown": 1}),
    ("/api/sample", {"page_id": "../../etc"}),
    ("/api/complete", {"drawing": [0.5] * 783}),
    ("/api/complete", {"drawing": [2.0] * 784}),
    ("/api/complete", {"drawing": [0.5] * 784, "n": 17}),
    ("/api/complete", {"drawing": [0.5] * 784, "mask": [True] * 10}),
    ("/api/complete", {"drawing": [0.5] * 784, "resample": 1000}),
    ("/api/cleanup", {"drawing": [0.5] * 784, "strength": 0.0}),
    ("/api/cleanup", {"drawing": [0.5] * 784, "strength": 1.5}),
    ("/api/forward", {"t": 50}),
    ("/api/forward", {"t": -1}),
    ("/api/forward", {"t": 3, "test_digit": 10**6}),
    ("/api/walk", {"sampler": "ddpm"}),
    ("/api/walk", {"frames": 1000}),
    ("/api/walk", {"a": 2**64}),
    ("/api/walk", {"a": [0.1] * 5}),
]


@needs_server
@pytest.mark.parametrize("path, body", BAD, ids=[f"{p}-{json.dumps(b)[:40]}" for p, b in BAD])
def test_a_bad_request_gets_a_4xx_with_a_reason(served, path, body):
    _, client, _ = served
    reply = client.post(path, json={"run": RUN, **body})
    assert 400 <= reply.status_code < 500, reply.text
    assert isinstance(reply.json()["detail"], str) and reply.json()["detail"]


@needs_server
@pytest.mark.parametrize("raw", [b"{", b"[]", b"null", b'{"run": 3}', b"\xff\xfe", b"{}"])
def test_a_malformed_body_gets_a_4xx(served, raw):
    _, client, _ = served
    for path in ("/api/sample", "/api/complete", "/api/forward", "/api/walk"):
        reply = client.post(path, content=raw, headers={"content-type": "application/json"})
        assert 400 <= reply.status_code < 500, (path, reply.text)


@needs_server
@pytest.mark.parametrize("name", ["../00000-default", "/etc", "runs/00000-default", "0", "default", "x" * 500])
def test_a_run_is_picked_by_its_name_only(served, tiny_run, name):
    _, client, _ = served
    for reply in (
        client.get("/api/info", params={"run": name}),
        client.post("/api/forward", json={"run": name, "t": 1}),
        client.post("/api/forward", json={"run": str(tiny_run[1]), "t": 1}),
    ):
        assert 400 <= reply.status_code < 500, reply.text


@needs_server
def test_only_requests_addressed_to_the_loopback_name_are_answered(served):
    _, client, _ = served
    assert client.get("/", headers={"host": "attacker.example"}).status_code == 400
    page = client.get("/")
    assert page.status_code == 200 and "/static/studio.js" in page.text
    script = client.get("/static/studio.js").text
    assert "http://" not in script and "https://" not in script  # nothing fetched from elsewhere
    assert client.get("/static/../engine.py").status_code == 404


@needs_server
def test_a_newer_request_from_the_same_page_cancels_the_older(served):
    from mnist_diffusion.studio.engine import Cancelled
    from mnist_diffusion.studio.requests import CompleteRequest

    studio, client, _ = served
    older = studio.begin("page-1")
    other = studio.begin("page-2")
    newer = studio.begin("page-1")
    assert older.is_set() and not other.is_set() and not newer.is_set()
    with pytest.raises(Cancelled):
        studio.complete(CompleteRequest(run=RUN, drawing=bar(), n=1, steps=3), older)
    lone = events(client, {"page_id": "page-3", "n": 1, "steps": 3})
    assert lone[-1]["event"] == "done"  # and a page's lone request runs to its end
    for path, body in [
        ("/api/complete", {"drawing": bar(), "n": 1, "steps": 2}),
        ("/api/sample", {"n": 1, "steps": 2}),
    ]:
        first = studio.pages_running["page-3"]
        client.post(path, json={"run": RUN, "page_id": "page-3", **body}).read()
        # each endpoint takes the page's place
        assert first.is_set() and studio.pages_running["page-3"] is not first, (
            path
        )  # each endpoint takes the page's place


def test_without_the_extra_the_command_names_it(monkeypatch, tiny_run):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # what `import fastapi` meets where it is not installed
    result = runner.invoke(app, ["studio", "--no-browser", "--artifacts-dir", str(tiny_run[0])])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        "Error: the studio needs fastapi, which is not installed: pip install 'mnist-diffusion[studio]'"
    )


@needs_server
def test_the_benchmark_times_the_studio_beside_sample(tiny_run, data_dir, tmp_path):
    out = tmp_path / "studio.json"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_studio.py"
    command = [sys.executable, str(script), "--artifacts-dir", str(tiny_run[0]), "--data-dir", str(data_dir)]
    command += ["-n", "4", "--steps", "3", "--repeat", "1", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())
    assert results["run"]["name"] == RUN and results["n"] == 4 and results["steps"] == 3
    for key in ("first_step_s", "whole_sample_s", "fill_the_rest_s", "library_sample_s", "cli_sample_s"):
        assert len(results[key]) == 1 and results[key][0] > 0, key
    assert results["first_step_s"][0] < results["whole_sample_s"][0]
    bar = results["seven_bar"]  # what the completions of a 7's bar are read as
    assert bar["n"] == 64 and sum(bar["histogram"]) == 64 and len(bar["histogram"]) == 10
    assert bar["seven_or_nine"] == (bar["histogram"][7] + bar["histogram"][9]) / 64
    assert (bar["rows"], bar["columns"]) == ([8, 9], [8, 20])
    assert bar["match_clusters"] is True  # a clustered run, MNIST's training digits at hand: the page's default
    plain = bar["without_matching"]
    assert plain["n"] == 64 and plain["seven_or_nine"] == (plain["histogram"][7] + plain["histogram"][9]) / 64
    assert len(bar["mnist"]["digits"]) == 10 and abs(sum(bar["mnist"]["digits"]) - 1) < 1e-3
    table = out.with_suffix(".md").read_text()
    assert "| studio: first streamed step |" in table and "read as 7 or 9" in table


@needs_server
def test_ctrl_c_stops_the_studio_even_when_it_was_started_with_ctrl_c_ignored(tiny_run):
    # A shell's background job, or any parent that ignores Ctrl+C, hands SIGINT ignored to its children:
    # once the studio says "Ctrl+C to stop", Ctrl+C must stop it, even before its server is up.
    command = [sys.executable, "-m", "mnist_diffusion", "studio", "--port", "0", "--no-browser"]
    command += ["--artifacts-dir", str(tiny_run[0])]
    ignore = lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)  # noqa: E731
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ignore)
    try:
        assert "(Ctrl+C to stop)" in process.stdout.readline()
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=120)  # a hang guard: it stops in about a second
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130


@needs_server
def test_a_port_in_use_is_one_line(tiny_run):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = runner.invoke(
            app, ["studio", "--no-browser", "--port", str(port), "--artifacts-dir", str(tiny_run[0])]
        )
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]
    assert last.startswith(f"Error: cannot listen on 127.0.0.1:{port}") and "--port" in last, result.output
