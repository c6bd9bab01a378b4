"""Checkpoints, weights metadata, the manifest and the metrics log as untrusted input: each
missing piece named in one line, and fuzzed copies (damaged bytes, ill-typed metadata, missing or
reshaped tensors) that give either the right result or one UserError line, never a traceback."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import tiny_config
from hypothesis import strategies as st
from safetensors import safe_open
from test_readers import corrupted, fuzz, read

from mnist_diffusion.errors import UserError
from mnist_diffusion.io import save_tensors
from mnist_diffusion.nets.unet import build_model
from mnist_diffusion.runs.checkpoint import read_checkpoint, restore
from mnist_diffusion.runs.store import (
    MANIFEST,
    is_finished,
    keep_metrics_until,
    load_config,
    load_weights_into,
    manifest_entry,
    read_metrics,
    verify_manifest,
)
from mnist_diffusion.training.recipe import make_ema

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    """A tiny finished run (conftest's): 4 steps, so the checkpoint holds AdamW's state for every parameter."""
    return tiny_run[1]


def copy_of(run_dir, tmp_path):
    target = tmp_path / run_dir.name
    shutil.copytree(run_dir, target)
    return target


def tensors_and_meta(path):
    with safe_open(path, framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def rewrite(run_dir, tensors, meta):
    """A checkpoint with these tensors and metadata, with a valid digest: only its content is wrong."""
    save_tensors(run_dir / "checkpoint.safetensors", tensors, {"checkpoint": json.dumps(meta)})


def restore_into_fresh_modules(run_dir):
    cfg = load_config(run_dir)
    model = build_model(cfg.model)
    ema = make_ema(model, cfg)
    opt = torch.optim.AdamW(model.parameters())
    restore(read_checkpoint(run_dir, cfg), model=model, ema=ema, opt=opt, device=torch.device("cpu"))
    return model


@pytest.mark.parametrize(
    "damage,needle",
    [
        (lambda t, m: t.pop("rng.cpu"), "lacks the CPU random state 'rng.cpu'"),
        (lambda t, m: m.pop("step"), "lacks a valid 'step'"),
        (lambda t, m: m.pop("ema_updates"), "lacks a valid 'ema_updates'"),
        (lambda t, m: m.update(step="3"), "lacks a valid 'step'"),
        (lambda t, m: m.update(step=-1), "step -1"),
        (lambda t, m: m.update(param_groups=[1]), "optimizer settings are unreadable"),
        (lambda t, m: t.pop("optim.2.exp_avg"), "optimizer state of parameter 2"),
        (lambda t, m: [t.pop(k) for k in list(t) if k.startswith("ema.")], "lacks the model or EMA weights"),
        (lambda t, m: m["config"]["diffusion"].update(prediction="eps"), "diffusion.prediction = 'eps'"),
        (lambda t, m: m.update(train_seconds="a while"), "train_seconds is not a number"),
    ],
)
def test_an_incomplete_checkpoint_is_refused_in_one_line(run_dir, tmp_path, damage, needle):
    run = copy_of(run_dir, tmp_path)
    tensors, metadata = tensors_and_meta(run / "checkpoint.safetensors")
    meta = json.loads(metadata["checkpoint"])
    damage(tensors, meta)
    rewrite(run, tensors, meta)
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(")", r"\)")) as e:
        restore_into_fresh_modules(run)
    assert "\n" not in str(e.value)


def test_a_bit_flipped_checkpoint_is_refused(run_dir, tmp_path):
    run = copy_of(run_dir, tmp_path)
    data = bytearray((run / "checkpoint.safetensors").read_bytes())
    data[-100] ^= 0x01  # one bit of one weight
    (run / "checkpoint.safetensors").write_bytes(bytes(data))
    with pytest.raises(UserError, match="does not match the digest it was written with"):
        read_checkpoint(run)


def test_a_checkpoint_without_a_digest_is_checked_against_the_manifest(run_dir, tmp_path):
    from safetensors.torch import save_file

    run = copy_of(run_dir, tmp_path)
    tensors, metadata = tensors_and_meta(run / "checkpoint.safetensors")
    save_file(tensors, run / "checkpoint.safetensors", {"checkpoint": metadata["checkpoint"]})  # as older versions
    with pytest.raises(UserError, match="cannot be verified"):
        read_checkpoint(run)
    from mnist_diffusion.runs.store import write_manifest

    write_manifest(run)
    assert read_checkpoint(run).step == 4


def test_fuzz_checkpoint_bytes(run_dir, tmp_path):
    run = copy_of(run_dir, tmp_path)
    blob = (run / "checkpoint.safetensors").read_bytes()
    reference = restore_into_fresh_modules(run).state_dict()

    def check(data: bytes):
        (run / "checkpoint.safetensors").write_bytes(data)
        model = read(lambda: restore_into_fresh_modules(run))
        if model is not None:  # damage that reads back must have changed nothing that matters
            assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())

    assert fuzz(corrupted(blob, head=2048), check, examples=100) == 100


def test_fuzz_checkpoint_metadata_and_tensors(run_dir, tmp_path):
    run = copy_of(run_dir, tmp_path)
    tensors, metadata = tensors_and_meta(run / "checkpoint.safetensors")
    meta = json.loads(metadata["checkpoint"])
    names = sorted(tensors)
    edits = st.one_of(
        st.tuples(st.just("meta"), st.sampled_from(sorted(meta)), JSON_VALUES),
        st.tuples(st.just("drop-meta"), st.sampled_from(sorted(meta)), st.none()),
        st.tuples(st.just("drop-tensor"), st.sampled_from(names), st.none()),
        st.tuples(st.just("reshape"), st.sampled_from(names), st.sampled_from([(0,), (1,), (2, 2), (7, 3, 1)])),
        st.tuples(st.just("retype"), st.sampled_from(names), st.sampled_from([torch.float16, torch.int64, torch.bool])),
    )

    def check(edit):
        kind, key, value = edit
        t, m = dict(tensors), json.loads(json.dumps(meta))
        if kind == "meta":
            m[key] = value
        elif kind == "drop-meta":
            m.pop(key)
        elif kind == "drop-tensor":
            t.pop(key)
        elif kind == "reshape":
            t[key] = torch.zeros(value)
        else:
            t[key] = t[key].to(value)
        rewrite(run, t, m)
        read(lambda: restore_into_fresh_modules(run))

    assert fuzz(edits, check, examples=80) == 80


def test_fuzz_weights_metadata(run_dir, tmp_path):
    cfg = tiny_config()
    state = build_model(cfg.model).state_dict()
    config = cfg.to_dict()
    path = tmp_path / "model.safetensors"
    edits = st.tuples(st.sampled_from(["model", "diffusion", "train", "preset"]), st.text(max_size=12), JSON_VALUES)

    def check(edit):
        section, key, value = edit
        c = json.loads(json.dumps(config))
        if isinstance(c[section], dict):
            c[section][key if key and section != "preset" else next(iter(c[section]))] = value
        else:
            c[section] = value
        save_tensors(path, state, {"config": json.dumps(c)})
        read(lambda: load_weights_into(build_model(cfg.model), path, cfg))

    assert fuzz(edits, check, examples=150) == 150


def test_fuzz_manifest_and_metrics(run_dir, tmp_path):
    run = copy_of(run_dir, tmp_path)
    manifest = (run / MANIFEST).read_bytes()
    metrics = (run / "metrics.jsonl").read_bytes()
    assert is_finished(run) and set(verify_manifest(run).values()) == {"ok"}

    def check(data: tuple[bytes, bytes]):
        (run / MANIFEST).write_bytes(data[0])
        (run / "metrics.jsonl").write_bytes(data[1])
        status = read(lambda: verify_manifest(run))
        assert status is None or set(status.values()) <= {"ok", "changed", "missing", "unlisted"}
        assert isinstance(is_finished(run), bool)
        assert manifest_entry(run, "model.safetensors") in (None, *[v for v in [read_sha(data[0])] if v])
        records = read_metrics(run)
        assert all(isinstance(r, dict) for r in records)
        keep_metrics_until(run, 2)
        assert all(isinstance(r.get("step"), int) and r["step"] <= 2 for r in read_metrics(run))

    assert fuzz(st.tuples(corrupted(manifest), corrupted(metrics)), check, examples=150) == 150


def read_sha(manifest: bytes):
    try:
        entry = json.loads(manifest)["files"]["model.safetensors"]["sha256"]
    except (ValueError, KeyError, TypeError):
        return None
    return entry if isinstance(entry, str) else None
