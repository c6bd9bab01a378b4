"""`mnistdiff compare`: the config fields that differ and only those, replicates pooled, a verdict on
each difference, old eval.json files without intervals, and bad input in one line. Two tiny runs are
trained through the CLI (they differ in --lr); replicates are copies with another seed in their
config; every eval.json is written by hand in the shape `eval` writes (docs/COMPARE.md)."""

from __future__ import annotations

import html
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mnist_diffusion.cli import app
from mnist_diffusion.evaluation.uncertainty import difference, pooled
from mnist_diffusion.report.compare import compare_runs, estimates, replicate_groups
from mnist_diffusion.report.compare_html import compare_page
from mnist_diffusion.runtime import describe_machine

runner = CliRunner()
Z = 1.959963984540054  # the 97.5% quantile of the standard normal


@pytest.fixture(scope="module")
def trained(run_pair) -> Path:
    """Two tiny runs trained for 2 steps: 00000-a and 00001-b (--lr 0.001); read only."""
    return run_pair


@pytest.fixture
def artifacts(trained, tmp_path) -> Path:
    """A copy of the trained runs this test may change."""
    copy = tmp_path / "artifacts"
    shutil.copytree(trained, copy)
    return copy


def run_dir(artifacts: Path, name: str) -> Path:
    return next(p for p in (artifacts / "runs").iterdir() if p.name.endswith(f"-{name}"))


def replicate(artifacts: Path, source: str, name: str, seed: int) -> Path:
    """A copy of run ``source`` as run ``name``, its config the same but for train.seed."""
    number = len(list((artifacts / "runs").iterdir()))
    target = artifacts / "runs" / f"{number:05d}-{name}"
    shutil.copytree(run_dir(artifacts, source), target)
    config = json.loads((target / "config.json").read_text())
    config["train"]["seed"] = seed
    (target / "config.json").write_text(json.dumps(config))
    return target


def write_eval(run: Path, n: int = 1000, intervals: bool = True, **metrics: tuple[float, float]) -> None:
    """eval.json with each metric's (value, se), and a 95% interval value +- z se where ``intervals``."""
    result = {"model": {k: v for k, (v, _) in metrics.items()}, "real": None, "n": n, "n_floor": n}
    result["sampling"] = {"sampler": "dpmpp-2m-sde", "steps": 20, "seed": 0}
    if intervals:
        result["uncertainty"] = {
            "level": 0.95,
            "method": "bootstrap",
            "repeats": 1,
            "bootstrap": 200,
            "model": {
                k: {"se": s, "low": v - Z * s, "high": v + Z * s, "values": None} for k, (v, s) in metrics.items()
            },
            "real": None,
        }
    (run / "eval.json").write_text(json.dumps(result))


def compare(*args: str, artifacts: Path, ok: bool = True):
    result = runner.invoke(app, ["compare", *args, "--artifacts-dir", str(artifacts)])
    if ok:
        assert result.exit_code == 0, result.output
    return result


def as_json(*args: str, artifacts: Path) -> dict:
    return json.loads(compare(*args, "--json", artifacts=artifacts).output)


def rows(doc: dict, index: int = 0) -> dict[str, dict]:
    return {row["metric"]: row for row in doc["differences"][index]["metrics"]}


# ---------------------------------------------------------------------------- the statistics


def test_difference_of_two_estimates_is_the_normal_interval():
    d = difference({"value": 0.32, "se": 0.003}, {"value": 0.30, "se": 0.004})  # B - A
    assert d["diff"] == pytest.approx(-0.02) and d["se"] == pytest.approx(0.005)
    assert (d["low"], d["high"]) == pytest.approx((-0.02 - Z * 0.005, -0.02 + Z * 0.005))


def test_pooled_replicates_count_the_spread_between_seeds():
    p = pooled([0.30, 0.32, 0.34], [0.001, 0.001, 0.001])
    assert p["value"] == pytest.approx(0.32)
    assert p["between_seed_sd"] == pytest.approx(0.02)
    assert p["se"] == pytest.approx(0.02 / math.sqrt(3))  # the seeds spread far more than the sampling
    agree = pooled([0.30, 0.30], [0.01, 0.01])  # two runs that happen to agree: the sampling noise stays
    assert agree["se"] == pytest.approx(0.01 / math.sqrt(2))


def test_each_run_names_the_machine_it_was_trained_on(trained, tmp_path):
    line = describe_machine(torch.device("cpu")).line()  # as `train` prints it
    assert [r["machine"] for r in as_json("a", "b", artifacts=trained)["runs"]] == [line, line]
    compare("a", "b", "--html", str(tmp_path / "c.html"), artifacts=trained)
    assert html.escape(line) in (tmp_path / "c.html").read_text()


def test_replicates_are_the_configs_that_differ_only_in_the_seed():
    a = {"train.lr": 0.002, "train.seed": 0}
    assert replicate_groups([a, {**a, "train.seed": 1}, {**a, "train.lr": 0.001}, None, a]) == [0, 0, 1, 2, 0]


def test_seeds_evaluated_at_another_n_are_not_pooled(artifacts):
    replicate(artifacts, "a", "a1", 1)
    write_eval(run_dir(artifacts, "a"), n=1000, fid=(0.32, 0.004))
    write_eval(run_dir(artifacts, "a1"), n=10000, fid=(0.31, 0.001))
    doc = as_json("a", "a1", artifacts=artifacts)
    assert [r["group"] for r in doc["runs"]] == ["A", "B"] and doc["eval_settings"] == {"eval.n": [1000, 10000]}
    write_eval(run_dir(artifacts, "a1"), n=1000, fid=(0.31, 0.001))
    assert [r["group"] for r in as_json("a", "a1", artifacts=artifacts)["runs"]] == ["A", "A"]


def test_two_evaluations_of_one_run_are_compared_as_run_at_k(artifacts, data_dir, tmp_path):
    """`eval` keeps each evaluation in evals.jsonl; `compare RUN@1 RUN@2` sets them side by side
    and does not pool them; the report lists them."""
    flags = ["-n", "20", "--bootstrap", "20", "--data-dir", str(data_dir), "--artifacts-dir", str(artifacts)]
    for k, steps in ((1, "2"), (2, "3")):
        result = runner.invoke(app, ["eval", "--run", "a", "--steps", steps, *flags])
        assert result.exit_code == 0, result.output
        assert f"evaluation {k} of the run, 00000-a@{k} to `mnistdiff compare`" in result.output
    a = run_dir(artifacts, "a")
    kept = [json.loads(line) for line in (a / "evals.jsonl").read_text().splitlines()]
    assert [e["sampling"]["steps"] for e in kept] == [2, 3] and [e["evaluation"] for e in kept] == [1, 2]
    assert json.loads((a / "eval.json").read_text()) == kept[1]
    doc = as_json("a@1", "a@2", "b", artifacts=artifacts)
    assert [r["name"] for r in doc["runs"]] == ["00000-a@1", "00000-a@2", "00001-b"]
    assert [r["group"] for r in doc["runs"]] == ["A", "B", "C"] and doc["eval_settings"]["eval.steps"] == [2, 3, None]
    assert [r["metrics"]["fid"]["value"] for r in doc["runs"][:2]] == [e["model"]["fid"] for e in kept]
    assert doc["differences"][0]["label"] == "00000-a@2"
    assert as_json("a", "a@1", artifacts=artifacts)["runs"][0]["metrics"] == doc["runs"][1]["metrics"]  # eval.json: @2
    assert (
        "00000-a has no evaluation 3 (its evals.jsonl keeps 1 to 2)"
        in compare("a@3", "b", artifacts=artifacts, ok=False).output
    )
    odd = shutil.copytree(a, artifacts / "x@2")  # a folder whose path ends like RUN@K is that folder
    assert [r["name"] for r in as_json(str(odd), "a@1", artifacts=artifacts)["runs"]] == ["x@2", "00000-a@1"]
    compare("a@1", "a@2", "--html", str(tmp_path / "c.html"), artifacts=artifacts)
    assert "00000-a@2" in (tmp_path / "c.html").read_text()
    result = runner.invoke(app, ["report", "--run", "a", "--artifacts-dir", str(artifacts)])
    assert result.exit_code == 0, result.output
    page = (a / "report.html").read_text()
    assert "Every evaluation (2)" in page and "00000-a@1" in page and "00000-a@2" in page


def test_every_metric_of_eval_json_is_read_with_its_interval():
    cas = {"accuracy": 0.91, "se": 0.01, "low": 0.89, "high": 0.93, "n": 1000}
    evaluation = {
        "model": {"fid": 0.3, "kid_mean": 0.001, "kid_std": 0.002, "class_histogram": [1] * 10},
        "uncertainty": {"model": {"fid": {"se": 0.004, "low": 0.29, "high": 0.31, "values": [0.29, 0.31]}}},
        "cas": {"samples": cas, "real": {**cas, "accuracy": 0.98}},
        "nll": {"bpd": 1.5, "bpd_stderr": 0.01},
    }
    got = estimates(evaluation)
    assert set(got) == {"fid", "kid_mean", "cas", "nll_bpd"}  # the class histogram is not a metric
    assert got["fid"] == {"value": 0.3, "se": 0.004, "low": 0.29, "high": 0.31, "values": [0.29, 0.31]}
    assert got["kid_mean"] == {"value": 0.001, "se": None, "low": None, "high": None}  # kid_std is no se
    assert got["cas"] == {"value": 0.91, "se": 0.01, "low": 0.89, "high": 0.93}
    assert got["nll_bpd"] == pytest.approx({"value": 1.5, "se": 0.01, "low": 1.5 - Z * 0.01, "high": 1.5 + Z * 0.01})
    assert estimates(None) == {} and estimates({"model": "bad", "uncertainty": []}) == {}


# ---------------------------------------------------------------------------- the command


def test_compare_shows_exactly_the_flag_that_differs(artifacts):
    write_eval(run_dir(artifacts, "a"), fid=(0.32, 0.004))
    write_eval(run_dir(artifacts, "b"), fid=(0.31, 0.004))
    table = compare("a", "b", artifacts=artifacts).output
    assert "train.lr" in table and "0.002" in table and "0.001" in table
    assert "train.seed" not in table and "model.channels" not in table
    doc = as_json("a", "b", artifacts=artifacts)
    assert doc["config"] == {"train.lr": [0.002, 0.001]} and doc["eval_settings"] == {}
    assert [r["name"] for r in doc["runs"]] == ["00000-a", "00001-b"]
    assert [r["group"] for r in doc["runs"]] == ["A", "B"] and doc["compared"] == "groups"
    assert doc["runs"][0]["parent"] is None and doc["runs"][0]["steps"] == 2
    assert doc["runs"][0]["train_seconds"] > 0 and doc["runs"][0]["interval_method"] == "bootstrap"
    assert doc["runs"][1]["metrics"]["fid"] == pytest.approx(
        {"value": 0.31, "se": 0.004, "low": 0.31 - Z * 0.004, "high": 0.31 + Z * 0.004}
    )


def test_a_clear_difference_gets_a_verdict_and_an_overlapping_one_does_not(artifacts):
    write_eval(run_dir(artifacts, "a"), fid=(0.320, 0.003), precision=(0.86, 0.004), recall=(0.70, 0.01))
    write_eval(run_dir(artifacts, "b"), fid=(0.300, 0.003), precision=(0.80, 0.004), recall=(0.71, 0.01))
    got = rows(as_json("a", "b", artifacts=artifacts))
    assert got["fid"]["verdict"] == "better" and got["fid"]["diff"] == pytest.approx(-0.02)
    assert got["fid"]["high"] < 0 and got["fid"]["text"].startswith("00001-b is better on FID: -0.02, interval -0.0")
    assert got["precision"]["verdict"] == "worse"  # higher precision is better: 0.80 < 0.86
    assert got["recall"]["verdict"] == "no difference" and got["recall"]["low"] < 0 < got["recall"]["high"]
    assert "no difference that this N can see" in got["recall"]["text"]
    table = compare("a", "b", artifacts=artifacts).output
    assert "00001-b is better on FID" in table and "00001-b is worse on precision" in table
    assert "no difference that this N can see on recall" in table
    assert "0.3 +- 0.0059" in table  # the value with half its interval's width


def test_replicates_are_pooled_and_their_spread_widens_the_interval(artifacts):
    for name, seed in (("a1", 1), ("a2", 2)):
        replicate(artifacts, "a", name, seed)
    for name, fid in (("a", 0.30), ("a1", 0.32), ("a2", 0.34), ("b", 0.36)):
        write_eval(run_dir(artifacts, name), fid=(fid, 0.001))
    doc = as_json("a", "a1", "a2", "b", artifacts=artifacts)
    assert [r["group"] for r in doc["runs"]] == ["A", "A", "A", "B"]
    assert doc["config"] == {"train.lr": [0.002, 0.002, 0.002, 0.001], "train.seed": [0, 1, 2, 0]}
    group = doc["groups"][0]
    assert group["runs"] == ["00000-a", "00002-a1", "00003-a2"]
    assert group["metrics"]["fid"]["value"] == pytest.approx(0.32)
    assert group["metrics"]["fid"]["se"] == pytest.approx(0.02 / math.sqrt(3))  # not 0.001: the seeds spread
    fid = rows(doc)["fid"]
    assert doc["differences"][0]["against"] == "A" and fid["diff"] == pytest.approx(0.04)
    assert fid["se"] == pytest.approx(math.hypot(0.02 / math.sqrt(3), 0.001))
    assert fid["verdict"] == "worse"
    table = compare("a", "a1", "a2", "b", artifacts=artifacts).output
    assert "group A: replicates (the same config but for the seed), pooled: 00000-a, 00002-a1, 00003-a2" in table
    assert "00001-b is worse on FID: +0.04, interval 0.01728 to 0.06272" in table


def test_runs_marks_replicates_and_shows_the_fid_interval(artifacts):
    replicate(artifacts, "a", "a1", 1)
    write_eval(run_dir(artifacts, "a"), n=10000, fid=(0.3031, 0.004))
    write_eval(run_dir(artifacts, "b"), n=10000, intervals=False, fid=(0.3551, 0.004))
    result = runner.invoke(app, ["runs", "--artifacts-dir", str(artifacts)], terminal_width=80)
    assert result.exit_code == 0, result.output
    listed = {line.split()[0]: line for line in result.output.splitlines() if line.startswith(" 0000")}
    marks = [listed[name].split()[1] for name in ("00000-a", "00002-a1", "00001-b")]
    assert marks[:2] == ["A", "A"] and marks[2] != "A"  # b has no replicate: its row goes on with the date
    assert "A, B after a name: replicates (configs that differ only in the seed)" in result.output
    assert "0.303+-0.008 @ 10k" in listed["00000-a"] and "0.36 @ 10k" in listed["00001-b"]
    assert max(len(line) for line in result.output.splitlines()) <= 80


def test_replicates_alone_are_each_set_against_the_first(artifacts):
    replicate(artifacts, "a", "a1", 1)
    write_eval(run_dir(artifacts, "a"), fid=(0.300, 0.004))
    write_eval(run_dir(artifacts, "a1"), fid=(0.302, 0.004))
    doc = as_json("a", "a1", artifacts=artifacts)
    assert doc["compared"] == "runs" and doc["config"] == {"train.seed": [0, 1]}
    assert rows(doc)["fid"]["verdict"] == "no difference"


def test_an_old_eval_json_without_intervals_says_so(artifacts):
    write_eval(run_dir(artifacts, "a"), fid=(0.32, 0.004))
    write_eval(run_dir(artifacts, "b"), intervals=False, fid=(0.30, 0.004))
    doc = as_json("a", "b", artifacts=artifacts)
    assert doc["runs"][1]["metrics"]["fid"] == {"value": 0.30, "se": None, "low": None, "high": None}
    fid = rows(doc)["fid"]
    assert fid["verdict"] == "no interval" and fid["diff"] is None
    assert fid["text"] == "no interval for 00001-b on FID: run `mnistdiff eval --run 00001-b` to get one"
    assert "0.3 (no interval)" in compare("a", "b", artifacts=artifacts).output


def test_a_run_without_eval_says_how_to_get_one(artifacts):
    write_eval(run_dir(artifacts, "a"), fid=(0.32, 0.004))
    doc = as_json("a", "b", artifacts=artifacts)
    assert doc["runs"][1]["evaluated"] is False
    assert rows(doc)["fid"]["verdict"] == "no eval"
    assert "`mnistdiff eval --run 00001-b`" in rows(doc)["fid"]["text"]
    (run_dir(artifacts, "a") / "eval.json").unlink()
    (only,) = as_json("a", "b", artifacts=artifacts)["differences"][0]["metrics"]
    assert only["verdict"] == "no eval" and "mnistdiff eval --run 00000-a" in only["text"]


def test_evaluations_at_another_n_show_as_a_difference(artifacts):
    write_eval(run_dir(artifacts, "a"), n=1000, fid=(0.32, 0.004))
    write_eval(run_dir(artifacts, "b"), n=10000, fid=(0.31, 0.001))
    assert as_json("a", "b", artifacts=artifacts)["eval_settings"] == {"eval.n": [1000, 10000]}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["a"], "compare needs at least two runs (got 1)"),
        ([], "compare needs at least two runs (got 0)"),
        (["a", "nosuch"], "unknown run 'nosuch'"),
        (["a", "0"], "'0' is 00000-a again: name each run once"),
        (["a@1", "b"], "'a@1': 00000-a has no evaluation 1 (its evals.jsonl keeps none yet: `mnistdiff eval"),
        (["a", "nosuch@2"], "unknown run 'nosuch'"),
        (["a", "b", "--html", "{tmp}"], "is a folder; name the file to write in it, such as"),
        (["a", "b", "--html", "{tmp}/nosuch/c.html"], "/nosuch does not exist"),
        (["a", "b", "--html", "{tmp}/c.png"], "must end in .html or .htm"),
    ],
)
def test_bad_input_is_one_line(artifacts, tmp_path, args, message):
    result = compare(*(a.format(tmp=tmp_path) for a in args), artifacts=artifacts, ok=False)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and "Traceback" not in result.output, result.output
    assert lines[0].startswith("Error: ") and message in lines[0]


def test_html_holds_the_verdicts_curves_and_samples(artifacts, tmp_path):
    write_eval(run_dir(artifacts, "a"), fid=(0.320, 0.003))
    write_eval(run_dir(artifacts, "b"), fid=(0.300, 0.003))
    out = tmp_path / "compare.html"
    result = runner.invoke(app, ["compare", "a", "b", "--html", str(out), "--artifacts-dir", str(artifacts)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "00001-b is better on FID" in text and "train.lr" in text
    assert text.count("data:image/png;base64,") == 3  # the loss chart and two sample grids
    assert "http://" not in text and "https://" not in text
    assert compare_page(compare_runs(["a", "b"], artifacts)) == text  # the same runs, the same page


def test_the_index_marks_replicates_and_shows_the_fid_interval(artifacts):
    replicate(artifacts, "a", "a1", 1)
    write_eval(run_dir(artifacts, "a"), n=10000, fid=(0.3031, 0.004))
    result = runner.invoke(app, ["runs", "--html", "--artifacts-dir", str(artifacts)])
    assert result.exit_code == 0, result.output
    text = (artifacts / "index.html").read_text()
    assert '<th data-col="8" title="sort by this column">replicates</th>' in text
    assert text.count('<td data-sort="A">A</td>') == 2 and '<td data-sort="">-</td>' in text
    assert "0.303 +- 0.008 @ 10,000" in text
