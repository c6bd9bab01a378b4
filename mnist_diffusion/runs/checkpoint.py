"""Resumable training state: one ``checkpoint.safetensors`` holding the model, EMA and optimizer
tensors and the RNG state, with everything else (step, EMA updates, optimizer settings, the plan,
the config) as JSON in its metadata, and a digest of the whole (:func:`artifacts.save_tensors`).
``checkpoint.json`` beside it is a copy of the metadata for people and for `mnistdiff runs`.

A checkpoint is verified before it is used: its digest (or, for a file without one, its sha256
in the run's manifest), every field and tensor a resume needs, every floating tensor finite, and
its config against the run's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..config import RunConfig
from ..errors import UserError
from ..io import DIGEST_KEY, atomic_write_json, load_tensors_and_metadata, save_tensors, sha256_file
from .store import CHECKPOINT, CHECKPOINT_META, check_same_network, manifest_entry

# Fields of the metadata a resume cannot do without, and their types.
REQUIRED_FIELDS: dict[str, type | tuple[type, ...]] = {
    "step": int,
    "ema_updates": int,
    "param_groups": list,
    "world_size": int,
}


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint: its metadata and tensors, not yet loaded into any module."""

    path: Path
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @property
    def step(self) -> int:
        return self.meta["step"]


def flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """An optimizer's state as flat tensors ``optim.{param}.{key}`` and its param groups as JSON."""
    state = opt.state_dict()
    tensors = {
        f"optim.{idx}.{key}": (value if torch.is_tensor(value) else torch.tensor(value))
        for idx, param_state in state["state"].items()
        for key, value in param_state.items()
    }
    groups = [{k: _json_value(v) for k, v in g.items()} for g in state["param_groups"]]
    return tensors, groups


def _json_value(value):
    """A param group's value as JSON: tuples as lists, a tensor learning rate as its number."""
    if torch.is_tensor(value):
        return value.item()
    return list(value) if isinstance(value, tuple) else value


def unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list[dict]) -> dict:
    """The inverse of :func:`flatten_optimizer`: a state dict for ``Optimizer.load_state_dict``."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in groups]
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    run_dir: Path,
    cfg: RunConfig,
    *,
    model: nn.Module,
    ema: nn.Module,
    opt: torch.optim.Optimizer,
    meta: dict[str, Any],
    device: torch.device,
) -> None:
    """Write ``checkpoint.safetensors`` and its readable copy ``checkpoint.json``. ``meta`` holds the
    loop's figures (step, ema_updates, loss, plan, ...); the config and versions are added here."""
    opt_tensors, groups = flatten_optimizer(opt)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    tensors.update(opt_tensors)
    tensors["rng.cpu"] = torch.get_rng_state()
    if device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    meta = {**meta, "param_groups": groups, "config": cfg.to_dict(), "mnist_diffusion_version": __version__}
    # One file holds tensors and their metadata, so they can never disagree.
    save_tensors(run_dir / CHECKPOINT, tensors, {"checkpoint": json.dumps(meta)})
    atomic_write_json(run_dir / CHECKPOINT_META, meta)


def read_checkpoint(run_dir: Path, cfg: RunConfig | None = None) -> Checkpoint:
    """The run's checkpoint, verified (see the module docstring); with ``cfg``, also checked to be
    of the same network and diffusion process. Anything wrong is a one-line UserError."""
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise UserError(f"run {run_dir.name} has no {CHECKPOINT} to resume from")
    tensors, metadata = load_tensors_and_metadata(path)  # checks the digest, where there is one
    if DIGEST_KEY not in metadata:  # written before checkpoints carried a digest: the manifest's sha256
        expected = manifest_entry(run_dir, CHECKPOINT)
        if expected is None or sha256_file(path) != expected:
            raise UserError(f"{path} cannot be verified: it has no digest and does not match the run's manifest")
    try:
        meta = json.loads(metadata["checkpoint"])
    except (KeyError, ValueError):
        raise UserError(f"{path} has no readable checkpoint metadata") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path}: its checkpoint metadata is not an object")
    for name, kind in REQUIRED_FIELDS.items():
        if not isinstance(meta.get(name), kind) or isinstance(meta.get(name), bool):
            raise UserError(f"{path} is incomplete: its metadata lacks a valid {name!r}")
    if not isinstance(meta.get("train_seconds", 0.0), int | float) or isinstance(meta.get("train_seconds"), bool):
        raise UserError(f"{path} is corrupt: its train_seconds is not a number")
    if meta["step"] < 0 or meta["world_size"] < 1:
        raise UserError(f"{path} is corrupt: step {meta['step']}, world size {meta['world_size']}")
    bad = next((name for name, t in sorted(tensors.items()) if t.is_floating_point() and not t.isfinite().all()), None)
    if bad is not None:  # a resume would carry them into every later step
        raise UserError(f"{path} is corrupt: its tensor {bad!r} holds NaN or infinite values")
    rng = tensors.get("rng.cpu")
    if rng is None or rng.dtype != torch.uint8 or rng.ndim != 1:
        raise UserError(f"{path} is incomplete: it lacks the CPU random state 'rng.cpu'")
    if not any(k.startswith("model.") for k in tensors) or not any(k.startswith("ema.") for k in tensors):
        raise UserError(f"{path} is incomplete: it lacks the model or EMA weights")
    groups = meta["param_groups"]
    if not groups or not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups):
        raise UserError(f"{path} is corrupt: its optimizer settings are unreadable")
    if meta["step"] > 0:  # after a step, AdamW holds a state for every parameter
        for i in (i for g in groups for i in g["params"]):
            if any(f"optim.{i}.{key}" not in tensors for key in ("step", "exp_avg", "exp_avg_sq")):
                raise UserError(f"{path} is incomplete: it lacks the optimizer state of parameter {i}")
    if cfg is not None and "config" in meta:
        try:
            saved = RunConfig.from_dict(meta["config"])
        except (ValueError, TypeError) as e:
            raise UserError(f"{path} has an unreadable config in its metadata: {e}") from None
        check_same_network(path, saved, cfg)
    return Checkpoint(path, meta, tensors)


def restore(
    checkpoint: Checkpoint, *, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer, device: torch.device
) -> None:
    """Load a verified checkpoint's weights, EMA, optimizer state and RNG state into the modules."""
    tensors, meta = checkpoint.tensors, checkpoint.meta
    model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    ema_state = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
    lrs = [g["lr"] for g in opt.param_groups]  # a tensor lr (the step on the device) stays a tensor
    try:
        model.load_state_dict(model_state)
        ema.load_state_dict(ema_state)
        opt.load_state_dict(unflatten_optimizer(tensors, meta["param_groups"]))
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        detail = " ".join(str(e).split())  # torch's message spans lines
        raise UserError(f"{checkpoint.path} does not match the run's config: {detail[:200]}") from None
    for group, lr in zip(opt.param_groups, lrs, strict=True):
        if torch.is_tensor(lr):
            lr.fill_(float(group["lr"]))
            group["lr"] = lr
    torch.set_rng_state(tensors["rng.cpu"])
    if device.type == "cuda" and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)
