"""`mnistdiff compare`: two or more runs side by side, and whether their differences are real.

For each run: the config fields that differ between the runs (and only those), its parent, its
training time and machine, and every metric of its ``eval.json`` with the 95% interval that
``eval`` recorded (``"uncertainty"``). Runs whose configs differ only in ``train.seed`` are
replicates: they form one group, whose value is the mean over its runs and whose standard error
adds the spread between training seeds (:func:`pooled`). Each group is then compared with the
first one (:func:`difference`), and the interval of the difference gives the verdict: better,
worse, or no difference that this N can see. When all the runs are replicates of one recipe,
each run is compared with the first, which shows whether the training seed alone moves a metric
further than the sampling noise.

:func:`compare_runs` returns the comparison as one JSON-ready dict (the shape ``compare --json``
prints; see docs/COMPARE.md).
"""

from __future__ import annotations

import json
import os
import string
from pathlib import Path
from typing import Any

from ..config import DEFAULT_ARTIFACTS_DIR, RunConfig
from ..errors import UserError
from ..evaluation.scoring import EVAL_FILE
from ..evaluation.uncertainty import INTERVAL_METRICS, LEVEL, difference, normal_interval, pooled, t_quantile
from ..io import JSON_MAX_BYTES, NotReadable, read_bounded
from ..runs.store import CONFIG, EVALS, load_config, read_evals, resolve_run
from ..runtime import Machine
from .charts import number
from .reader import RunFiles

LOWER_IS_BETTER = ("fid", "kid_mean", "nll_bpd")
SHORT_LABELS = {"fid": "FID", "kid_mean": "KID", "cas": "CAS", "nll_bpd": "NLL bits/dim"}  # else the key in words
# (key, label, higher is better): every metric compare reads, in the order it shows them
METRICS: list[tuple[str, str, bool]] = [
    (key, SHORT_LABELS.get(key, key.replace("_", " ")), key not in LOWER_IS_BETTER)
    for key in (*INTERVAL_METRICS, "cas", "nll_bpd")
]
HIGHER_IS_BETTER = {key: higher for key, _, higher in METRICS}
LABELS = {key: label for key, label, _ in METRICS}
SEED_FIELD = "train.seed"  # the one field of the config replicates may differ in
# eval settings that do not change what is measured: the sampling seed (a replicate's other seed)
# and how the samples were batched or launched
NOT_SETTINGS = ("eval.seed", "eval.batch_size", "eval.cuda_graphs")


def resolve_runs(
    runs: list[str], artifacts_dir: str | os.PathLike = DEFAULT_ARTIFACTS_DIR
) -> list[tuple[Path, int | None]]:
    """The run folders of ``runs`` (folders, names or numbers, as ``--run`` takes them), each with
    the evaluation that ``RUN@K`` names (K from 1, the run's first in evals.jsonl; None: eval.json):
    at least two, each named once."""
    if len(runs) < 2:
        raise UserError(f"compare needs at least two runs (got {len(runs)}): mnistdiff compare A B [C ...]")
    chosen: list[tuple[Path, int | None]] = []
    for run in runs:
        folder, k = _run_and_evaluation(run, artifacts_dir)
        same = next((f for f, j in chosen if f.resolve() == folder.resolve() and j == k), None)
        if same is not None:
            raise UserError(f"{run!r} is {same.name}{'' if k is None else f'@{k}'} again: name each run once")
        chosen.append((folder, k))
    return chosen


def _run_and_evaluation(run: str, artifacts_dir: str | os.PathLike) -> tuple[Path, int | None]:
    """``RUN`` as (its folder, None); ``RUN@K`` (K in ASCII digits) as (RUN's folder, K), K checked
    against the evaluations its evals.jsonl keeps."""
    name, at, k = run.rpartition("@")
    if not (at and name and k.isascii() and k.isdigit() and len(k) <= 9) or _is_run_folder(run):
        return resolve_run(run, artifacts_dir), None  # a run's folder may have "@" in its path
    folder = resolve_run(name, artifacts_dir)
    count = len(read_evals(folder))
    if not 1 <= int(k) <= count:
        kept = f"1 to {count}" if count > 1 else "only 1" if count else "none yet: `mnistdiff eval --run NAME` adds one"
        raise UserError(f"{run!r}: {folder.name} has no evaluation {int(k)} (its {EVALS} keeps {kept})")
    return folder, int(k)


def _is_run_folder(path: str) -> bool:
    try:
        return (Path(path) / CONFIG).is_file()
    except (OSError, ValueError):  # a name too long for the file system, or holding a NUL
        return False


def flat_config(cfg: RunConfig | None) -> dict[str, Any] | None:
    """A run's config as ``{"preset": ..., "model.channels": ..., "train.seed": ...}`` (lists for
    tuples, as config.json writes them); None for None (an unreadable config.json)."""
    if cfg is None:
        return None
    flat: dict[str, Any] = {}
    for key, value in cfg.to_dict().items():
        if isinstance(value, dict):
            flat.update({f"{key}.{name}": _plain(v) for name, v in value.items()})
        else:
            flat[key] = _plain(value)
    return flat


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def eval_settings(run: RunFiles) -> dict[str, Any]:
    """What the run's eval.json was measured with, as ``{"eval.n": N, "eval.sampler": ...}``:
    metrics taken at another N or with another sampler differ for that reason too."""
    ev = run.eval or {}
    settings = {"eval.n": ev.get("n")} if ev else {}
    sampling = ev.get("sampling")
    if isinstance(sampling, dict):
        settings.update({f"eval.{k}": _plain(v) for k, v in sampling.items() if k != "guidance_text"})
    return settings


def differing(rows: list[dict[str, Any] | None]) -> dict[str, list[Any]]:
    """The fields whose values are not all the same, each with one value per run (None where a
    run has no such field or no readable config)."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in (row or {}) if k not in keys]
    out = {}
    for key in keys:
        values = [None if row is None else row.get(key) for row in rows]
        if any(v != values[0] for v in values):
            out[key] = values
    return out


def replicate_groups(configs: list[dict[str, Any] | None]) -> list[int]:
    """The group of each run, numbered from 0 in order of first appearance: runs whose configs are
    the same but for ``train.seed`` share a group; a run without a readable config is alone."""
    keys: list[Any] = []
    groups = []
    for i, cfg in enumerate(configs):
        key = ("unreadable", i) if cfg is None else sorted((k, repr(v)) for k, v in cfg.items() if k != SEED_FIELD)
        if key not in keys:
            keys.append(key)
        groups.append(keys.index(key))
    return groups


def replicate_marks(run_dirs: list[Path]) -> dict[str, str]:
    """A letter for each run that has replicates among ``run_dirs`` (the same config but for the
    seed), the same for all of them: "A" for the first such group, "B" for the next. Runs without
    replicates are left out."""
    configs = []
    for run_dir in run_dirs:
        try:
            configs.append(flat_config(load_config(run_dir)))
        except UserError:
            configs.append(None)
    groups = replicate_groups(configs)
    shared = sorted({g for g in groups if groups.count(g) > 1})
    return {d.name: group_letter(shared.index(g)) for d, g in zip(run_dirs, groups, strict=True) if g in shared}


def fid_estimate(run_dir: Path) -> dict[str, Any] | None:
    """The FID of the run's eval.json with its interval (:func:`estimates`), or None (no eval.json,
    or an unreadable one: `runs` says why)."""
    try:
        ev = json.loads(read_bounded(run_dir / EVAL_FILE, JSON_MAX_BYTES, "a JSON file"))
    except (OSError, ValueError, RecursionError, NotReadable):
        return None
    return estimates(ev if isinstance(ev, dict) else None).get("fid")


def group_letter(index: int) -> str:
    """0 -> "A", 25 -> "Z", 26 -> "AA"."""
    letters = string.ascii_uppercase
    return letters[index] if index < 26 else group_letter(index // 26 - 1) + letters[index % 26]


def estimates(ev: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Every metric of an eval.json as ``{"value", "se", "low", "high"}`` (``se``, ``low`` and
    ``high`` None where it recorded no interval: an eval.json older than ``"uncertainty"``)."""
    if not ev:
        return {}
    model = ev.get("model") if isinstance(ev.get("model"), dict) else {}
    uncertainty = ev.get("uncertainty") if isinstance(ev.get("uncertainty"), dict) else {}
    intervals = uncertainty.get("model") if isinstance(uncertainty.get("model"), dict) else {}
    found = {}
    for key, _, _ in METRICS:
        value = number(model.get(key))
        if value is not None:
            found[key] = _estimate(value, intervals.get(key))
    cas = ev.get("cas")
    samples = cas.get("samples") if isinstance(cas, dict) else None
    if isinstance(samples, dict) and number(samples.get("accuracy")) is not None:
        found["cas"] = _estimate(number(samples["accuracy"]), samples)
    nll = ev.get("nll")
    if isinstance(nll, dict) and number(nll.get("bpd")) is not None:
        se = number(nll.get("bpd_stderr"))
        bounds = normal_interval(nll["bpd"], se) if se is not None else None
        found["nll_bpd"] = _estimate(number(nll["bpd"]), bounds)
    return found


def _estimate(value: float, interval: Any) -> dict[str, Any]:
    """``{"value", "se", "low", "high"}``, and ``"values"`` where the interval comes from repeats
    (eval --repeats K): the per-repeat values, which a difference of two such runs uses."""
    parts = {k: number(interval.get(k)) if isinstance(interval, dict) else None for k in ("se", "low", "high")}
    if None in parts.values():
        return {"value": value, **dict.fromkeys(parts)}
    values = interval.get("values")
    repeats = [number(v) for v in values] if isinstance(values, list) else []
    if len(repeats) > 1 and None not in repeats:
        return {"value": value, **parts, "values": repeats}
    return {"value": value, **parts}


def run_record(run: RunFiles, group: str) -> dict[str, Any]:
    """What compare says of one run: its name, folder, group, parent, training time, machine and
    evaluation (N, how its intervals were made) and its metrics."""
    info = run.info or {}
    parent = info.get("parent")
    ev = run.eval
    uncertainty = ev.get("uncertainty") if ev and isinstance(ev.get("uncertainty"), dict) else None
    return {
        "name": run.name,
        "path": str(run.dir),
        "group": group,
        "created": info.get("created") if isinstance(info.get("created"), str) else None,
        "parent": parent if isinstance(parent, dict) else None,
        "train_seconds": run.meta("train_seconds"),
        "steps": run.summary.step,
        "machine": machine_text(info.get("machine")),
        "evaluated": ev is not None,
        "n": ev.get("n") if ev else None,
        "interval_method": uncertainty.get("method") if uncertainty else None,
        "metrics": estimates(ev),
    }


def machine_text(machine: Any) -> str | None:
    """run.json's ``machine`` (:meth:`Machine.to_dict`, or a line of text) in the words `train` and
    the benchmarks use, or None where it is missing or not this version's record."""
    if isinstance(machine, str):
        return machine
    if not isinstance(machine, dict):
        return None
    try:
        return Machine(**{**machine, "vector_units": tuple(machine.get("vector_units") or ())}).line()
    except TypeError:  # fields this version's Machine does not have, or lacks
        return None


def compare_runs(runs: list[str], artifacts_dir: str | os.PathLike = DEFAULT_ARTIFACTS_DIR) -> dict[str, Any]:
    """Compare the runs named by ``runs`` (at least two): the JSON document ``compare --json`` prints."""
    files = [RunFiles(folder, k) for folder, k in resolve_runs(runs, artifacts_dir)]
    configs = [flat_config(run.cfg) for run in files]
    settings = [eval_settings(run) for run in files]
    # replicates: the same recipe, evaluated alike; only the training and sampling seeds differ
    numbers = replicate_groups(
        [
            None if c is None else {**c, **{k: v for k, v in s.items() if k not in NOT_SETTINGS}}
            for c, s in zip(configs, settings, strict=True)
        ]
    )
    letters = [group_letter(g) for g in numbers]
    records = [run_record(run, letter) for run, letter in zip(files, letters, strict=True)]
    groups = [
        _group(group_letter(g), [r for r, n in zip(records, numbers, strict=True) if n == g])
        for g in sorted(set(numbers))
    ]
    if len(groups) > 1:
        subjects = [(g["name"], g["label"], g["metrics"]) for g in groups]
    else:  # replicates of one recipe: each run against the first shows what the seed alone does
        subjects = [(r["name"], r["name"], _as_single(r)) for r in records]
    reference = subjects[0]
    differences = [_compare(s, reference, records) for s in subjects[1:]]
    return {
        "level": LEVEL,
        "runs": records,
        "config": differing(configs),
        "eval_settings": differing(settings),
        "groups": groups,
        "compared": "groups" if len(groups) > 1 else "runs",
        "differences": differences,
        "problems": {run.name: run.problems for run in files if run.problems},
    }


def _group(name: str, members: list[dict[str, Any]]) -> dict[str, Any]:
    """A group of replicates: its runs, and each metric pooled over those of them that have it
    (a run alone keeps its own interval, as eval recorded it)."""
    metrics = {}
    for key, _, _ in METRICS:
        have = [r["metrics"][key] for r in members if key in r["metrics"]]
        if len(have) == 1:
            metrics[key] = {**have[0], "between_seed_sd": None, "runs": 1}
        elif have:  # where a run recorded no interval, the spread between the runs is the whole of it
            pool = pooled([e["value"] for e in have], [0.0 if e["se"] is None else e["se"] for e in have])
            q = t_quantile(LEVEL, len(have) - 1)  # few runs: Student's t, not the normal quantile
            value, se = pool["value"], pool["se"]
            interval = {"low": value - q * se, "high": value + q * se}
            metrics[key] = {"value": value, "se": se, **interval, "between_seed_sd": pool["between_seed_sd"]}
            # the runs' values: a difference of two groups counts their few degrees of freedom (Welch)
            metrics[key].update(runs=len(have), values=[e["value"] for e in have])
    label = members[0]["name"] if len(members) == 1 else f"group {name} ({len(members)} runs)"
    return {"name": name, "label": label, "runs": [r["name"] for r in members], "metrics": metrics}


def _as_single(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {key: {**e, "runs": 1, "between_seed_sd": None} for key, e in record["metrics"].items()}


def _compare(subject: tuple, reference: tuple, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Each metric of ``subject`` against ``reference`` (name, label, metrics), with a verdict."""
    name, label, metrics = subject
    ref_name, ref_label, ref_metrics = reference
    rows = []
    for key, metric_label, higher in METRICS:
        mine, theirs = metrics.get(key), ref_metrics.get(key)
        if mine is None and theirs is None:
            continue
        row = {"metric": key, "diff": None, "se": None, "low": None, "high": None}
        missing = _missing(name, label, mine, records, metric_label) or _missing(
            ref_name, ref_label, theirs, records, metric_label
        )
        if missing:
            row.update(verdict=missing[0], text=missing[1])
        else:
            d = difference(theirs, mine)  # the subject minus the first
            row.update(d)
            row.update(_verdict(d, label, metric_label, higher))
        rows.append(row)
    if not rows:  # neither side has any metric
        unevaluated = [r["name"] for r in records if not r["evaluated"] and {r["name"], r["group"]} & {ref_name, name}]
        what = " and ".join(f"`mnistdiff eval --run {r}`" for r in unevaluated) or "`mnistdiff eval`"
        text = f"no metrics to compare: run {what}"
        rows.append(
            {"metric": None, "diff": None, "se": None, "low": None, "high": None, "verdict": "no eval", "text": text}
        )
    return {"subject": name, "label": label, "against": ref_name, "against_label": ref_label, "metrics": rows}


def _missing(
    name: str, label: str, estimate: dict[str, Any] | None, records: list[dict[str, Any]], metric: str
) -> tuple[str, str] | None:
    """("no eval" | "no value" | "no interval", what to run) where a side (a run or a group, called
    ``label``) cannot be compared on ``metric``, else None."""
    runs = [r["name"] for r in records if r["name"] == name or r["group"] == name]
    if estimate is None:
        unevaluated = [r for r in runs if not next(x for x in records if x["name"] == r)["evaluated"]]
        if unevaluated:
            return "no eval", f"no eval of {unevaluated[0]}: run `mnistdiff eval --run {unevaluated[0]}`"
        return "no value", f"{label} has no {metric}"
    if estimate["se"] is None:
        return "no interval", f"no interval for {label} on {metric}: run `mnistdiff eval --run {runs[0]}` to get one"
    return None


def _verdict(d: dict[str, float], label: str, metric: str, higher: bool) -> dict[str, str]:
    interval = f"{_number(d['diff'], signed=True)}, interval {_number(d['low'])} to {_number(d['high'])}"
    if d["low"] <= 0 <= d["high"]:
        return {"verdict": "no difference", "text": f"no difference that this N can see on {metric}: {interval}"}
    better = (d["diff"] > 0) == higher
    word = "better" if better else "worse"
    return {"verdict": word, "text": f"{label} is {word} on {metric}: {interval}"}


def _number(x: float, *, signed: bool = False) -> str:
    """Four significant digits, enough to tell FID 0.303 from 0.317."""
    text = f"{x:+.4g}" if signed else f"{x:.4g}"
    return text
