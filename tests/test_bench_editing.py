"""benchmarks/bench_editing.py end to end on the tiny run and the fake MNIST, with a few digits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_editing_end_to_end(tmp_path, data_dir, tiny_run):
    artifacts, run_dir = tiny_run
    out = tmp_path / "results" / "editing"
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- bench:editing:start -->\nold\n<!-- bench:editing:end -->\nafter\n")
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "bench_editing.py"),
        "--artifacts-dir",
        str(artifacts),
        "--data-dir",
        str(data_dir),
        "--device",
        "cpu",
        "--n",
        "6",
        "--n-invert",
        "3",
        "--masks",
        "left,center",
        "--steps",
        "4",
        "--jumps",
        "2",
        "--resample",
        "2",
        "--invert-steps",
        "4,10,100",
        "--batch-size",
        "4",
        "--out",
        str(out),
        "--readme",
        str(readme),
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)  # a hang guard, not a speed test
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipping 100 inversion steps" in proc.stderr

    results = json.loads(out.with_suffix(".json").read_text())
    assert results["run"]["name"] == run_dir.name and results["machine"]["cores"] >= 1
    assert [r["mask"] for r in results["completion"]] == ["left", "center"]
    for r in results["completion"]:
        assert r["n"] == 6 and 0 <= r["accuracy"] <= 1 and 0 <= r["floor"] <= 1 and r["seconds"] > 0
    assert 0 <= results["ceiling"] <= 1 and results["inpainting"]["steps"] == 4
    assert results["inpainting"]["sampling"]["sampler"] == "ddim" and results["inpainting"]["spacing"] == 1.0
    rows = results["inversion"]
    assert [(r["steps"], r["n"]) for r in rows] == [(4, 3), (10, 3)] and not results["cut_short"]
    assert rows[1]["psnr"] > rows[0]["psnr"] > 0  # more steps, a closer reconstruction

    table = out.with_suffix(".md").read_text()
    assert "| left |" in table and "| center |" in table and "| 10 | 3 |" in table
    assert table in proc.stdout
    text = readme.read_text()
    assert text.startswith("before\n<!-- bench:editing:start -->\n")
    assert text.endswith("<!-- bench:editing:end -->\nafter\n")
    assert "old" not in text and "| left |" in text
