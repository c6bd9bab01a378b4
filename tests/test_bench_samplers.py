"""benchmarks/bench_samplers.py: its row plan, DDPM ratios and recommendation, then the script end
to end on a 2-step tiny run and the fake MNIST."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_samplers as bs  # noqa: E402


def test_plan_runs_ddpm_once_at_t_and_uses_n_1000_for_full_length_rows():
    plan = bs.plan_rows(["ddpm", "ddim", "dpmpp-2m"], [10, 20, 1000], 1000, n=10_000, n_1000=2000)
    rows = {(r.sampler, r.evaluations, r.n) for r in plan}
    assert rows == {
        ("ddpm", 1000, 2000),
        ("ddim", 1000, 2000),
        ("dpmpp-2m", 1000, 2000),
        ("ddim", 10, 10_000),
        ("ddim", 20, 10_000),
        ("dpmpp-2m", 10, 10_000),
        ("dpmpp-2m", 20, 10_000),
        ("ddim", 10, 2000),
        ("ddim", 20, 2000),
        ("dpmpp-2m", 10, 2000),
        ("dpmpp-2m", 20, 2000),  # vs DDPM
    }
    costs = [r.evaluations * r.n for r in plan]
    assert costs == sorted(costs)  # cheapest first

    first = bs.plan_rows(["ddpm", "ddim", "dpmpp-2m"], [10, 20, 1000], 1000, n=10_000, n_1000=2000, ddpm_first=True)
    assert (first[0].sampler, first[0].evaluations) == ("ddpm", 1000) and set(first) == set(plan)
    assert [r.evaluations * r.n for r in first[1:]] == sorted(r.evaluations * r.n for r in first[1:])

    seed_preset = bs.plan_rows(["ddpm", "dpmpp-2m"], [10, 1000], 300, n=100, n_1000=100, compare=True)
    assert [(r.sampler, r.evaluations, r.n) for r in seed_preset] == [("dpmpp-2m", 10, 100), ("ddpm", 300, 100)]
    no_ddpm = bs.plan_rows(["ddim"], [10, 1000], 1000, n=100, n_1000=20)
    assert [(r.evaluations, r.n) for r in no_ddpm] == [(10, 100), (1000, 20)]  # nothing to compare with


def test_ratios_targets_and_recommendation_stay_within_one_n():
    def row(sampler, evaluations, n, fid):
        return {"sampler": sampler, "evaluations": evaluations, "n": n, "fid": fid}

    rows = [
        row("ddpm", 1000, 100, 10.0),
        row("dpmpp-2m", 10, 100, 12.5),
        row("dpmpp-2m", 20, 100, 11.5),
        row("ddim", 50, 100, 10.5),
        row("dpmpp-2m", 20, 500, 4.0),
        row("ddim", 10, 500, 9.0),
    ]
    bs.compare_with_ddpm(rows)
    ddpm, d10, d20, ddim50, d20_big, _ = rows
    assert ddpm["fid_vs_ddpm"] == 1.0 and ddpm["meets_target"] is None
    assert d10["fid_vs_ddpm"] == 1.25 and d10["target"] == 1.30 and d10["meets_target"] is True
    assert d20["fid_vs_ddpm"] == 1.15 and d20["target"] == 1.10 and d20["meets_target"] is False
    assert ddim50["target"] is None and ddim50["meets_target"] is None
    assert d20_big["fid_vs_ddpm"] is None and d20_big["meets_target"] is None  # no DDPM row at N = 500
    assert "✗ (≤ 1.10)" in bs.ratio_cell(d20) and bs.ratio_cell(d20_big) == "-"

    recs = bs.recommend(rows)
    assert [(r["n"], r["sampler"], r["evaluations"]) for r in recs] == [(500, "dpmpp-2m", 20), (100, "ddim", 50)]
    assert recs[1]["best"] == {"sampler": "ddpm", "evaluations": 1000, "fid": 10.0}


def test_output_paths_keep_dots_in_the_stem():
    assert bs.output_paths(Path("r/sweep-0.4"))[".json"] == Path("r/sweep-0.4.json")
    assert bs.output_paths(Path("r/samplers.md")) == {e: Path("r/samplers" + e) for e in (".json", ".md", ".png")}


def test_guidance_label_names_every_guidance_used():
    def label(auto=1.0, labels=1.0, clusters=1.0):
        return bs.guidance_label(
            {"settings": {"sampling": {"guidance": dict(auto=auto, labels=labels, clusters=clusters)}}}
        )

    assert label(auto=2.0, clusters=1.6) == "autoguidance 2 + cluster guidance 1.6"  # the default preset
    assert label(auto=2.0) == "autoguidance 2"
    assert label(labels=2.0) == "label guidance 2"
    assert label() == ""


def test_bench_samplers_end_to_end(tmp_path, data_dir, tiny_run):
    artifacts, run_dir = tiny_run
    out = tmp_path / "results" / "samplers"
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- bench:samplers:start -->\nold\n<!-- bench:samplers:end -->\nafter\n")
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "bench_samplers.py"),
        "--artifacts-dir",
        str(artifacts),
        "--cluster-guidance",
        "1",
        "--data-dir",
        str(data_dir),
        "--device",
        "cpu",
        "--n",
        "20",
        "--n-1000",
        "12",
        "--evaluations",
        "2,5,100",
        "--batch-size",
        "8",
        "--out",
        str(out),
        "--readme",
        str(readme),
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)  # a hang guard, not a speed test
    assert proc.returncode == 0, proc.stderr[-3000:]

    results = json.loads(out.with_suffix(".json").read_text())
    assert {"date", "command", "machine", "settings", "run", "plan", "rows", "recommendation"} <= set(results)
    assert results["machine"]["cores"] >= 1 and results["run"]["timesteps"] == 50
    assert results["run"]["name"] == run_dir.name and results["run"]["trained_steps"] == 4
    rows = {(r["sampler"], r["evaluations"], r["n"]): r for r in results["rows"]}
    assert set(rows) == {
        ("ddpm", 50, 12),
        *((s, e, n) for s in ("ddim", "dpmpp-2m", "dpmpp-2m-sde") for e in (2, 5) for n in (20, 12)),
    }  # 100 > T is skipped; the rows at N = 12 compare with DDPM
    assert len(results["plan"]) == len(results["rows"])
    for r in rows.values():
        assert r["fid"] >= 0 and r["floor_fid"] >= 0 and r["floor_n"] == r["n"]
        assert r["sample_seconds"] > 0 and r["images_per_sec"] > 0
        for key in ("kid_mean", "precision", "recall"):
            assert key in r
        assert (r["fid_vs_ddpm"] is None) == (r["n"] == 20)
    assert rows[("ddpm", 50, 12)]["fid_vs_ddpm"] == 1.0
    assert rows[("ddim", 2, 20)]["floor_fid"] != rows[("ddim", 2, 12)]["floor_fid"]  # a floor per N
    assert [r["n"] for r in results["recommendation"]] == [20, 12]

    table = out.with_suffix(".md").read_text()
    assert "| ddpm | 50 | 12 |" in table and "| dpmpp-2m | 5 | 20 |" in table and "recommendation (N = 20)" in table
    assert table in proc.stdout
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = readme.read_text()
    assert text.startswith("before\n<!-- bench:samplers:start -->\n")
    assert text.endswith("<!-- bench:samplers:end -->\nafter\n")
    assert "old" not in text and "| ddpm | 50 | 12 |" in text
