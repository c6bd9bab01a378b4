"""The benchmark scripts: bench_speed.py end to end on the CPU, with the tiniest settings on the
fake MNIST; bench_cpu.py's variants and table; profile_step.py's parts, FLOPs and variants; and
what they share."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_bench_speed_writes_json_and_table(tmp_path, data_dir):
    out = tmp_path / "speed.json"
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- bench:cpu:start -->\nold\n<!-- bench:cpu:end -->\nafter\n")
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "bench_speed.py"),
        "--device",
        "cpu",
        "--presets",
        "default",
        "--data-dir",
        str(data_dir),
        "--batch-size",
        "8",
        "--windows",
        "2",
        "--window-steps",
        "2",
        "--warmup-steps",
        "2",
        "--sample-batch",
        "4",
        "--sample-seconds",
        "0.01",
        "--full-epochs",
        "--epochs",
        "1",
        "--full-samples",
        "4",
        "--out",
        str(out),
        "--readme",
        str(readme),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)  # a hang guard, not a speed test
    assert proc.returncode == 0, proc.stderr[-3000:]

    results = json.loads(out.read_text())
    assert {"date", "command", "machine", "settings", "train", "sample", "full_epochs", "peak_memory"} <= set(results)
    assert results["machine"]["cores"] >= 1 and results["machine"]["torch"]
    train = results["train"]["default"]
    assert train["batch_size"] == 8 and train["window_steps"] == 2 and len(train["window_images_per_sec"]) == 2
    for key in (
        "images_per_sec",
        "step_ms",
        "network_ms",
        "network_share",
        "overhead_ms",
        "network_share_direct",
        "checkpoint_ms",
        "guard_ms",
        "guard_share",
        "state_check_ms",
        "peak_memory_mib",
    ):
        assert train[key] > 0, key
    runs = results["sample"]["default"]["runs"]
    assert [(r["sampler"], r["evaluations"]) for r in runs] == [
        ("ddim", 20),
        ("dpmpp-2m", 20),
        ("ddpm", 1000),
        ("ddim", 1000),
    ]
    assert all(r["images_per_sec"] > 0 and 2 <= r["evaluations_timed"] <= r["evaluations"] for r in runs)
    assert runs[2]["extrapolated"]  # 1000 evaluations do not fit in 0.01 s
    assert list(results["full_epochs"]) == ["eager"]  # the CPU has no CUDA graphs
    full = results["full_epochs"]["eager"]
    assert full["epochs"] == 1 and full["steps"] == 512 // 8 and full["train_seconds"] > 0
    assert full["samples"] == 4 and full["sample_seconds"] > 0
    assert results["peak_memory"]["mib"] > 0

    table = out.with_suffix(".md").read_text()
    assert "| default | 8 |" in table and "dpmpp-2m" in table and "full run (eager)" in table
    assert table in proc.stdout
    text = readme.read_text()
    assert text.startswith("before\n<!-- bench:cpu:start -->\n") and text.endswith("<!-- bench:cpu:end -->\nafter\n")
    assert "old" not in text and "| default | 8 |" in text


def test_checkpoints_per_run_counts_the_saves_of_the_run_plan():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_speed

    from mnist_diffusion.training.plan import CHECKPOINT_EVERY, StepPlan

    assert CHECKPOINT_EVERY > 150  # so these plans save at epoch ends and their last step alone
    plan = StepPlan(steps_per_epoch=64, total_steps=150, stop_step=150, guide_step=-1, check_every=1)
    assert bench_speed.checkpoints_per_run(plan) == 4  # before step 1, after steps 64, 128 and 150
    stopped_early = StepPlan(steps_per_epoch=64, total_steps=150, stop_step=100, guide_step=-1, check_every=1)
    assert bench_speed.checkpoints_per_run(stopped_early) == 3  # before step 1, after steps 64 and 100
    long = StepPlan(
        steps_per_epoch=CHECKPOINT_EVERY + 1,
        total_steps=3 * CHECKPOINT_EVERY,
        guide_step=-1,
        stop_step=3 * CHECKPOINT_EVERY,
        check_every=1,
    )
    # before step 1; every CHECKPOINT_EVERY steps (the third is the last step); the epochs' ends, 2 of them
    assert bench_speed.checkpoints_per_run(long) == 1 + 3 + 2


def test_benchmarks_share_helpers_through_common_alone():
    scripts = {path.stem for path in (ROOT / "benchmarks").glob("*.py")}
    assert "common" in scripts
    for path in (ROOT / "benchmarks").glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
        imported |= {
            node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
        }
        assert imported & scripts <= {"common"}, f"{path.name} imports {sorted(imported & scripts - {'common'})}"


def test_bench_cpu_variants_and_table(monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_cpu

    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")  # a user's own settings never leak into a variant
    monkeypatch.setenv("MNISTDIFF_CHANNELS_LAST", "0")
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "1")  # the parent's own tuning neither
    default, tuned = bench_cpu.variant_env("default", 2), bench_cpu.variant_env("tuned", 2)
    assert default["MNISTDIFF_ALLOCATOR"] == "system" and "MNISTDIFF_ALLOCATOR" not in tuned
    assert "THP_MEM_ALLOC_ENABLE" not in default and "THP_MEM_ALLOC_ENABLE" not in tuned  # the tool decides
    assert bench_cpu.variant_env("no-thp", 2)["THP_MEM_ALLOC_ENABLE"] == "0"
    nchw = bench_cpu.variant_env("nchw", 2)  # the tool as it was: NCHW sampling; the layout's share alone
    assert default["MNISTDIFF_CHANNELS_LAST"] == nchw["MNISTDIFF_CHANNELS_LAST"] == "0"
    assert "MNISTDIFF_CHANNELS_LAST" not in tuned and "MNISTDIFF_ALLOCATOR" not in nchw
    assert "MALLOC_ARENA_MAX" not in default and bench_cpu.variant_env("threads-1", 2)["OMP_NUM_THREADS"] == "1"
    assert "ATEN_CPU_CAPABILITY" not in tuned
    avx2 = bench_cpu.variant_env("tuned", 2, isa="avx2")
    assert avx2["ATEN_CPU_CAPABILITY"] == "avx2" and avx2["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    monkeypatch.setattr(bench_cpu, "LIBS", {"jemalloc": ["/nonexistent/libjemalloc.so.2"]})
    assert bench_cpu.variant_env("jemalloc", 2) is None  # not installed: skipped

    def run(wall, rate, gflops=100.0):
        return {
            "threads": 2,
            "matmul_gflops": gflops,
            "peak_rss_mib": 1000.0,
            "precision": "fp32",
            "isa": "AVX2",
            "huge_pages_mib": [0.0, 512.0],
            "sample": {"wall_s": wall, "sys_s": wall / 10},
            "train": {"images_per_sec": rate},
        }

    results = {
        "machine": {
            "device": "cpu",
            "cpu": "x",
            "cores": 2,
            "torch_threads": 2,
            "gpu": None,
            "torch": "2",
            "mnist_diffusion": "0",
            "git_commit": None,
        },
        "date": "d",
        "command": "c",
        "step_mflop_per_image": 400.0,
        "variants": {"default": run(100.0, 100.0), "tuned": run(50.0, 125.0)},
    }
    table = bench_cpu.markdown(results)
    assert "| tuned | 2 | 50.0 | 10% | 2.00x | 125.0 | 50% | 1.25x | 0 / 512 | 1000 |" in table
    assert "matrix rate (GFLOP/s), measured in the children: fp32 100; kernels: AVX2;" in table
    # Three rounds: medians per variant, and each round's ratio to the first variant, whose median
    # is not the ratio of the medians when the host's pace moves between rounds.
    rounds = [
        {"default": run(100.0, 100.0), "tuned": run(50.0, 110.0)},
        {"default": run(200.0, 50.0, gflops=50.0), "tuned": run(150.0, 60.0)},
        {"default": run(100.0, 100.0), "tuned": run(80.0, 130.0)},
    ]
    summary = bench_cpu.summarize(rounds)
    assert summary["tuned"]["train"]["images_per_sec"] == 110.0 and summary["tuned"]["sample"]["wall_s"] == 80.0
    assert summary["default"]["matmul_gflops"] == 100.0 and summary["tuned"]["runs"] == 3
    assert summary["tuned"]["vs_first"]["train"] == pytest.approx(1.2)  # of 1.1, 1.2 and 1.3
    assert summary["tuned"]["vs_first"]["sample"] == pytest.approx(4 / 3)  # of 2, 4/3 and 1.25
    assert summary["default"]["vs_first"] == {"sample": 1.0, "train": 1.0}
    table = bench_cpu.markdown({**results, "variants": summary})
    assert "| tuned | 2 | 80.0 | 10% | 1.33x | 110.0 | 44% | 1.20x | 0 / 512 | 1000 |" in table
    assert "medians of 3 runs per variant" in table


def test_profile_step_parts_flops_and_variants(tmp_path, data_dir):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import profile_step
    import torch

    from mnist_diffusion.config import PRESETS
    from mnist_diffusion.nets.unet import build_model
    from mnist_diffusion.training.speed import step_flops_per_image

    part_of = profile_step.part_of
    assert part_of("aten::convolution_backward") == part_of("aten::mkldnn_convolution") == "convolutions"
    assert part_of("aten::native_group_norm_backward") == "GroupNorm" and part_of("aten::silu_backward") == "SiLU"
    assert part_of("aten::bmm") == part_of("aten::_softmax") == "attention"
    assert part_of("aten::addmm") == part_of("aten::mm") == "linear layers"
    assert part_of("aten::_fused_adamw_") == "AdamW" and part_of("aten::lerp_") == "EMA"
    assert part_of("aten::linalg_vector_norm") == "gradient clipping" and part_of("aten::copy_") == "other"
    cfg = PRESETS["default"]
    flops = profile_step.flops_by_part(cfg)
    assert sum(flops.values()) == step_flops_per_image(cfg) * cfg.train.batch_size  # every FLOP in some part
    assert flops["convolutions"] > 0.9 * sum(flops.values()) and flops["attention"] > 0
    # the share against the rate of each block's own round: 24 GFLOP in 0.2 s at 100 GFLOP/s is 120%,
    # in 0.1 s at 300 GFLOP/s 80%; the median of the two is 100%
    assert profile_step.paired_share(24.0, {"blocks_ms": [200.0, 100.0]}, [100.0, 300.0]) == pytest.approx(1.0)
    assert profile_step.paired_share(24.0, {"blocks_ms": [200.0]}, []) is None
    assert profile_step.variant_parts("eager") == set()
    assert profile_step.variant_parts("compile+channels-last+no-norm") == {"compile", "channels-last", "no-norm"}
    assert profile_step.variant_parts("compile+fast") is None and profile_step.variant_parts("eager+compile") is None
    bound = profile_step.make_learner(cfg, "no-norm", steps_per_epoch=8)
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in bound.model.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in build_model(cfg.model).modules())  # left as it was

    out = tmp_path / "profile.json"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "profile_step.py"),
        "--data-dir",
        str(data_dir),
        "--batch-size",
        "8",
        "--profile-steps",
        "2",
        "--variants",
        "eager,channels-last,no-norm",
        "--rounds",
        "2",
        "--block",
        "1",
        "--precision",
        "fp32",
        "--isa",
        "avx2",
        "--onednn",
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)  # a hang guard, not a speed test
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    if platform.machine() in ("x86_64", "AMD64"):
        assert results["isa"] == "AVX2"  # started again with the kernels kept to AVX2
        # one step's 27 convolutions, forward and backward, through oneDNN, and its reorders to and from NCHW
        assert results["onednn"]["convolution"]["calls"] >= 27 and results["onednn"]["reorder"]["calls"] > 0
        assert "onednn_verbose" not in proc.stdout  # its log was read, not printed
    assert results["precision"] == "fp32" and results["batch"] == 8
    assert results["parts"]["convolutions"]["ms"] > 0 and results["parts"]["SiLU"]["ms"] > 0
    assert set(results["variants"]) == {"eager", "channels-last", "no-norm"}  # the JSON keeps its keys sorted
    assert results["variants"]["eager"]["speed_vs_first"] == 1.0
    assert len(results["variants"]["channels-last"]["blocks_ms"]) == 2
    rates = results["rounds_matmul_gflops"]  # measured again in each round, not read from a cache
    assert len(rates) == 2 and min(rates) > 0 and rates[0] != rates[1]
    table = out.with_suffix(".md").read_text()
    assert "| convolutions |" in table and "| channels-last |" in table and table in proc.stdout
    assert "| of the rate beside it |" in table


def _bench_quality(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_quality.py"), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)  # a hang guard


def test_bench_quality_trains_the_settings_given_and_scores_them(tmp_path, data_dir):
    tiny = ["channels=8", "channel_mult=1,2,2", "batch_size=16", "timesteps=50", "warmup_steps=1", "ema_decay=0.9"]
    proc = _bench_quality(
        "--label", "tiny", "--steps", 3, "--seed", 1, "-n", 20, *[a for s in tiny for a in ("--set", s)],
        "--data-dir", data_dir, "--artifacts-dir", tmp_path / "a", "--out", tmp_path / "out",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "tiny-s1.json").read_text())
    assert result["steps"] == 3 and result["seed"] == 1 and result["num_samples"] == 20
    assert result["settings"] == {
        "channels": 8, "channel_mult": [1, 2, 2], "batch_size": 16, "timesteps": 50, "warmup_steps": 1, "ema_decay": 0.9
    }  # fmt: skip
    cfg = json.loads((Path(result["run"]) / "config.json").read_text())  # what was trained is what was asked
    assert cfg["model"]["channels"] == 8 and cfg["model"]["channel_mult"] == [1, 2, 2]
    assert cfg["diffusion"]["timesteps"] == 50 and cfg["train"]["ema_decay"] == 0.9
    assert (cfg["train"]["seed"], cfg["train"]["steps"], cfg["preset"]) == (1, 3, "default")
    scored = json.loads((Path(result["run"]) / "eval.json").read_text())
    assert scored["n"] == 20 and result["eval"]["fid"] == scored["model"]["fid"]
    assert result["eval"]["fid_low"] < result["eval"]["fid_high"] and result["eval"]["floor_fid"] > 0
    assert result["machine"]["cpu"] and result["train_seconds"] > 0
    assert (tmp_path / "out" / "tiny-s1.md").read_text().startswith("| tiny | 1 | 3 |")


def test_equal_time_scales_the_steps_by_the_timed_ratio():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_quality
    from conftest import tiny_config

    from mnist_diffusion.training.speed import step_flops_per_image

    base = tiny_config()
    wider = dataclasses.replace(base, model=dataclasses.replace(base.model, channels=16))
    timing = bench_quality.equal_time_steps(base, wider, 100, windows=3, per_window=1)
    assert [len(v) for v in timing["step_seconds"].values()] == [3, 3] and timing["base_steps"] == 100
    rounds = timing["step_seconds"]
    assert timing["median_seconds"] == pytest.approx({name: sorted(v)[1] for name, v in rounds.items()})
    # each round times both on the same machine: the median of the rounds' ratios scales the steps
    ratios = sorted(a / b for a, b in zip(rounds["base"], rounds["changed"], strict=True))
    assert timing["ratio"] == pytest.approx(ratios[1]) and timing["steps"] == round(100 * timing["ratio"])
    # the arithmetic beside the times: counted, so the wider network's is the larger
    mflop = timing["step_mflop_per_image"]
    assert mflop == {"base": step_flops_per_image(base) / 1e6, "changed": step_flops_per_image(wider) / 1e6}
    assert mflop["changed"] > 2 * mflop["base"]


def test_equal_time_trains_the_scaled_steps(tmp_path, data_dir):
    tiny = ["channels=16", "channel_mult=1,2,2", "batch_size=16", "timesteps=50", "warmup_steps=1"]
    proc = _bench_quality(
        "--label", "wide", "--steps", 4, "--equal-time", "-n", 20, *[a for s in tiny for a in ("--set", s)],
        "--data-dir", data_dir, "--artifacts-dir", tmp_path / "a", "--out", tmp_path / "out",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "wide-s0.json").read_text())
    timing = result["equal_time"]
    assert timing["base_steps"] == 4 and result["steps"] == timing["steps"] >= 1
    cfg = json.loads((Path(result["run"]) / "config.json").read_text())
    assert cfg["train"]["steps"] == timing["steps"]  # the run's plan is the scaled one
    assert f"4 steps of the preset are {timing['steps']:,} of the change" in proc.stderr


def test_equal_time_needs_steps(tmp_path):
    proc = _bench_quality("--label", "x", "--time-budget", 60, "--equal-time", "--artifacts-dir", tmp_path)
    assert proc.returncode == 2 and "--equal-time scales --steps: give --steps" in proc.stderr


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("nonsense=1", "--set takes FIELD=VALUE with FIELD one of"),
        ("lr", "--set takes FIELD=VALUE"),
        ("lr=fast", "--set lr takes a float (got 'fast')"),
        ("attention=maybe", "--set attention takes a bool"),
        ("lr=-1", "learning rate must be positive"),
    ],
)
def test_bench_quality_refuses_a_bad_setting_in_one_line(tmp_path, setting, message):
    proc = _bench_quality("--label", "x", "--steps", 1, "--set", setting, "--artifacts-dir", tmp_path)
    assert proc.returncode == 2 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()
