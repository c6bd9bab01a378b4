"""Every file the tool reads gives a correct result or one ``UserError`` line, never a traceback.

Property-based fuzzing (hypothesis, the same examples every run) of damaged and ill-typed copies
of valid files, for each reader: ``load_samples`` (.npy, .safetensors, a PNG grid, a PNG folder),
``load_tensors``, ``load_config`` and ``summarize_runs``. A result that does come back is checked
against an independent reading of the same bytes. Then explicit cases for every dtype, byte order
and PNG mode, and the two CLI paths: ``eval --samples`` and ``runs``.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from typer.testing import CliRunner

from mnist_diffusion.cli import app
from mnist_diffusion.config import RunConfig
from mnist_diffusion.errors import UserError
from mnist_diffusion.io import (
    NotReadable,
    check_output,
    load_tensors,
    load_tensors_and_metadata,
    read_bounded,
    save_tensors,
    sha256_file,
)
from mnist_diffusion.pictures.grids import grid_image, load_samples, save_grid
from mnist_diffusion.pictures.inputs import read_digit
from mnist_diffusion.runs.checkpoint import read_checkpoint
from mnist_diffusion.runs.store import load_config, resolve_run, verify_manifest, write_manifest
from mnist_diffusion.runs.summary import summarize_runs

runner = CliRunner()

SAMPLES = ((torch.arange(5 * 28 * 28) * 7) % 251 + 1).to(torch.uint8).reshape(5, 1, 28, 28)  # no black tile
UNIT = SAMPLES.float() / 255  # (5, 1, 28, 28) in [0, 1], exact as uint8
HUGE = [2**31, 2**32 - 1, 2**62, 2**63 - 1, 2**64 - 1, 10**12]
INT64 = 2**63


# ----------------------------------------------------------------------------- helpers


def read(fn) -> Any:
    """``fn()``'s result, or None where it raised a one-line UserError. Any other exception fails."""
    try:
        return fn()
    except UserError as e:
        assert str(e) and "\n" not in str(e), repr(str(e))
        return None


def fuzz(strategy: st.SearchStrategy, check, *, examples: int) -> int:
    """Run ``check`` on ``examples`` values of ``strategy`` (the same ones every run); return how
    many it tried."""
    tried = 0

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(strategy)
    def run(value):
        nonlocal tried
        tried += 1
        check(value)

    run()
    return tried


def corrupted(blob: bytes, head: int = 128) -> st.SearchStrategy[bytes]:
    """Damaged copies of ``blob``: cut short, bits flipped, bytes replaced, or a 64-bit size field
    overwritten with a huge number. Half the damage lands in the first ``head`` bytes (the header)."""
    n = len(blob)
    spot = st.one_of(st.integers(0, min(n, head) - 1), st.integers(0, n - 1))

    def flip(spots: list[tuple[int, int]]) -> bytes:
        out = bytearray(blob)
        for i, bit in spots:
            out[i] ^= 1 << bit
        return bytes(out)

    def splice(args: tuple[int, bytes, int]) -> bytes:
        i, junk, drop = args
        return blob[:i] + junk + blob[i + drop :]

    def oversize(args: tuple[int, int, str]) -> bytes:
        i, value, order = args
        return blob[:i] + value.to_bytes(8, order) + blob[i + 8 :]  # type: ignore[arg-type]

    return st.one_of(
        st.integers(0, n - 1).map(lambda k: blob[:k]),
        st.lists(st.tuples(spot, st.integers(0, 7)), min_size=1, max_size=8).map(flip),
        st.tuples(spot, st.binary(max_size=16), st.integers(0, 16)).map(splice),
        st.tuples(spot, st.sampled_from(HUGE), st.sampled_from(["little", "big"])).map(oversize),
    )


def assert_images(x: torch.Tensor) -> None:
    assert x.dtype == torch.float32 and x.ndim == 4 and tuple(x.shape[1:]) == (1, 28, 28) and len(x) >= 1
    assert torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1


def expected_images(a: np.ndarray | torch.Tensor) -> torch.Tensor | None:
    """What load_samples must return for an array, by the documented contract; None: refused."""
    t = a if isinstance(a, torch.Tensor) else None
    if t is None:
        if not (a.dtype.kind == "f" or a.dtype == np.uint8):
            return None
        with np.errstate(over="ignore"):
            t = torch.from_numpy(a.astype(np.float32) if a.dtype.kind == "f" else a.astype(np.uint8))
    if not (t.dtype == torch.uint8 or t.is_floating_point()) or t.dtype == getattr(torch, "float4_e2m1fn_x2", None):
        return None
    if not ((t.ndim == 3 and tuple(t.shape[1:]) == (28, 28)) or (t.ndim == 4 and tuple(t.shape[1:]) == (1, 28, 28))):
        return None
    if len(t) == 0:
        return None
    x = t.float() / 255 if t.dtype == torch.uint8 else t.float()
    if not torch.isfinite(x).all() or x.min() < -1e-6 or x.max() > 1 + 1e-6:
        return None
    return x.reshape(-1, 1, 28, 28).clamp(0, 1)


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_size(width: int, height: int, bit_depth: int = 8, idat: bytes = b"") -> bytes:
    """A greyscale PNG whose header claims ``width`` x ``height`` pixels, with valid checksums."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    chunks = png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(idat)) + png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


GRID_PNG = png_bytes(grid_image(UNIT))  # one row of 5 tiles, 32 x 152


# ----------------------------------------------------------------------------- fuzzing: samples


def test_fuzz_npy(tmp_path):
    path = tmp_path / "s.npy"

    def check(blob: bytes) -> None:
        path.write_bytes(blob)
        got = read(lambda: load_samples(path))
        if got is not None:  # then numpy reads the same bytes to the same images
            assert torch.equal(got, expected_images(np.load(path, allow_pickle=False)))

    assert fuzz(corrupted(npy_bytes(UNIT.numpy())), check, examples=300) >= 250


SHAPES = st.one_of(
    st.sampled_from([(3, 28, 28), (2, 1, 28, 28), (0, 28, 28), (1, 28, 28)]),
    hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=3),
)
DTYPES = st.one_of(
    hnp.scalar_dtypes(),  # bool, ints, floats, complex, datetimes
    hnp.floating_dtypes(sizes=(16, 32, 64), endianness="?"),
    hnp.integer_dtypes(endianness="?"),
    hnp.unsigned_integer_dtypes(sizes=8),
    hnp.byte_string_dtypes(max_len=3),
    hnp.unicode_string_dtypes(max_len=3),
    hnp.array_dtypes(max_size=2),  # structured
)


def _arrays(dtype: np.dtype) -> st.SearchStrategy[np.ndarray]:
    elements = None
    if dtype.kind == "f":  # mostly in [0, 1], sometimes anything (NaN, inf, huge)
        elements = st.one_of(hnp.from_dtype(dtype, min_value=0, max_value=1), hnp.from_dtype(dtype))
    return hnp.arrays(dtype, SHAPES, elements=elements)


@pytest.mark.filterwarnings("ignore:Stored array in format 3.0")  # unicode field names of a structured dtype
def test_fuzz_npy_dtypes_and_shapes(tmp_path):
    path = tmp_path / "a.npy"

    def check(a: np.ndarray) -> None:
        np.save(path, a)
        got, expected = read(lambda: load_samples(path)), expected_images(a)
        assert (got is None) == (expected is None), (a.dtype, a.shape)
        if got is not None:
            assert torch.equal(got, expected)

    assert fuzz(DTYPES.flatmap(_arrays), check, examples=150) >= 120


def test_fuzz_safetensors_samples(tmp_path):
    path = tmp_path / "s.safetensors"

    def check(blob: bytes) -> None:
        path.write_bytes(blob)
        got = read(lambda: load_samples(path))
        if got is not None:  # then safetensors' own parser reads the same images from the bytes
            tensors = safetensors_load(blob)
            candidates = [tensors["samples"]] if "samples" in tensors else list(tensors.values())
            assert any(torch.equal(got, x) for x in map(expected_images, candidates) if x is not None)

    blob = safetensors_save({"samples": UNIT, "other": torch.zeros(3)}, metadata={"note": "x"})
    assert fuzz(corrupted(blob), check, examples=300) >= 250


TORCH_DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.uint8,
    torch.bool,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.complex64,
    torch.float8_e4m3fn,
]


def test_fuzz_safetensors_dtypes_and_shapes(tmp_path):
    path = tmp_path / "t.safetensors"
    values = st.one_of(
        hnp.arrays(np.float32, SHAPES, elements=st.floats(0, 1, width=32)),
        hnp.arrays(np.float64, SHAPES),  # NaN, inf, huge
        hnp.arrays(np.uint8, SHAPES),
    )

    def check(args: tuple[np.ndarray, torch.dtype]) -> None:
        a, dtype = args
        t = torch.from_numpy(a).to(dtype)
        path.write_bytes(safetensors_save({"samples": t}))
        got, expected = read(lambda: load_samples(path)), expected_images(t)
        assert (got is None) == (expected is None), (dtype, a.shape)
        if got is not None:
            assert torch.equal(got, expected)

    assert fuzz(st.tuples(values, st.sampled_from(TORCH_DTYPES)), check, examples=200) >= 150


def _with_size(blob: bytes, size: tuple[int, int]) -> bytes:
    """The PNG ``blob`` with its header rewritten to claim ``size`` (width, height), checksum fixed."""
    ihdr = bytearray(blob[16:29])
    ihdr[0:8] = struct.pack(">II", *size)
    return blob[:8] + png_chunk(b"IHDR", bytes(ihdr)) + blob[33:]


def test_fuzz_png_grid(tmp_path):
    path = tmp_path / "grid.png"
    original = np.asarray(Image.open(io.BytesIO(GRID_PNG)))
    sizes = st.tuples(st.one_of(st.integers(0, 400), st.integers(0, 2**31 - 1)), st.integers(0, 2**31 - 1))

    def check(blob: bytes) -> None:
        path.write_bytes(blob)
        got = read(lambda: load_samples(path))
        if got is None:
            return
        assert_images(got)
        with Image.open(path) as img:  # damage Pillow reads past (an ancillary chunk): the same images
            if img.mode == "L" and np.array_equal(np.asarray(img), original):
                assert torch.equal(got, UNIT)

    strategy = st.one_of(corrupted(GRID_PNG, head=64), sizes.map(lambda size: _with_size(GRID_PNG, size)))
    assert fuzz(strategy, check, examples=300) >= 250


def test_fuzz_png_folder(tmp_path):
    tiles = [png_bytes(Image.fromarray(SAMPLES[i, 0].numpy(), mode="L")) for i in range(3)]

    def check(blob: bytes) -> None:
        for i, tile in enumerate(tiles):
            (tmp_path / f"{i}.png").write_bytes(blob if i == 1 else tile)
        got = read(lambda: load_samples(tmp_path))
        if got is not None:
            assert_images(got)
            assert len(got) == 3 and torch.equal(got[[0, 2]], UNIT[[0, 2]])

    assert fuzz(corrupted(tiles[1], head=64), check, examples=150) >= 120


def test_fuzz_load_tensors(tmp_path):
    path = tmp_path / "w.safetensors"
    blob = safetensors_save({"w": torch.randn(4, 3), "b": torch.arange(5)}, metadata={"config": "{}"})

    def check(data: bytes) -> None:
        path.write_bytes(data)
        got = read(lambda: load_tensors(path))
        if got is not None:
            expected = safetensors_load(data)
            assert got.keys() == expected.keys()
            for k in got:
                torch.testing.assert_close(got[k], expected[k], rtol=0, atol=0, equal_nan=True)

    assert fuzz(corrupted(blob), check, examples=200) >= 150


# ----------------------------------------------------------------------------- fuzzing: config and runs


DEFAULTS = RunConfig().to_dict()
FIELDS = [("preset",), ("model",), ("train",), ("extra",), ("model", "extra")] + [
    (section, name) for section, fields in DEFAULTS.items() if isinstance(fields, dict) for name in fields
]
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([INT64, -INT64 - 1, 10**400, 3, 0, -1])
    | st.floats()
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
EDITS = st.tuples(st.sampled_from(FIELDS), st.one_of(JSON_VALUES, st.just("<delete>")))


def edited(data: dict[str, Any], edit: tuple[tuple[str, ...], Any]) -> dict[str, Any]:
    """A deep copy of ``data`` with the value at ``path`` replaced (or deleted)."""
    path, value = edit
    out = json.loads(json.dumps(data))
    parent = out
    for key in path[:-1]:
        if not isinstance(parent.get(key), dict):
            return out
        parent = parent[key]
    if value == "<delete>":
        parent.pop(path[-1], None)
    else:
        parent[path[-1]] = value
    return out


def assert_well_typed(cfg: RunConfig, data: dict[str, Any]) -> None:
    """Every field has its default's type (bools are not ints, floats are finite, tuples hold ints)
    and the value the file holds (defaults for what it leaves out)."""
    assert isinstance(cfg.preset, str) and cfg.preset == data.get("preset", "custom")
    for section, fields in cfg.to_dict().items():
        if section == "preset":
            continue
        for name, value in fields.items():
            default = DEFAULTS[section][name]
            written = data.get(section, {}).get(name, default)
            if isinstance(default, tuple):
                assert all(type(v) is int for v in value) and value == tuple(written)
            elif isinstance(default, float):
                assert type(value) is float and math.isfinite(value) and value == written
            else:
                assert type(value) is type(default) and value == written


def test_fuzz_config(tmp_path):
    path = tmp_path / "config.json"
    valid = json.dumps(DEFAULTS, indent=2).encode()

    def check(change: bytes | tuple) -> None:
        blob = change if isinstance(change, bytes) else json.dumps(edited(DEFAULTS, change)).encode()
        path.write_bytes(blob)
        cfg = read(lambda: load_config(tmp_path))
        if cfg is not None:
            assert_well_typed(cfg, json.loads(blob))

    assert fuzz(st.one_of(corrupted(valid, head=len(valid)), EDITS), check, examples=400) >= 350


CHECKPOINT_JSON = {"step": 40, "loss": 0.0512, "epoch": 0.1, "mnist_diffusion_version": "0"}
EVAL_JSON = {"n": 10_000, "model": {"fid": 3.25, "kid_mean": 0.001}, "real": None}
RUN_FILES = {
    "config.json": DEFAULTS,
    "checkpoint.json": CHECKPOINT_JSON,
    "eval.json": EVAL_JSON,
    "manifest.json": {"files": {}, "mnist_diffusion_version": "0"},
}
RUN_FIELDS = [("step",), ("loss",), ("model",), ("model", "fid"), ("n",), ("files",)]


def _is_int(v: Any, lo: int) -> bool:
    return type(v) is int and lo <= v < INT64


def _is_number(v: Any, finite: bool) -> bool:
    return (type(v) is float and (math.isfinite(v) or not finite)) or (type(v) is int and abs(v) < INT64)


def expected_run(files: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The fields summarize_runs must report for these (parsed) checkpoint.json and eval.json, and
    whether they are readable, by an independent reading of the contract."""
    meta, report = files["checkpoint.json"], files["eval.json"]
    out = {"step": None, "final_loss": None, "fid": None, "fid_n": None}
    ok = True
    if (
        isinstance(meta, dict)
        and _is_int(meta.get("step"), 0)
        and (meta.get("loss") is None or _is_number(meta["loss"], finite=False))
    ):
        out["step"], out["final_loss"] = meta["step"], meta.get("loss")
    else:
        ok = False
    model = report.get("model") if isinstance(report, dict) else None
    if isinstance(model, dict) and _is_number(model.get("fid"), finite=True) and _is_int(report.get("n"), 1):
        out["fid"], out["fid_n"] = model["fid"], report["n"]
    else:
        ok = False
    return out, ok


RUN_CHANGES = st.one_of(
    st.sampled_from(sorted(RUN_FILES)).flatmap(  # a file's bytes damaged
        lambda name: st.tuples(st.just(name), corrupted(json.dumps(RUN_FILES[name]).encode(), 64))
    ),
    st.tuples(  # a field of a file given another JSON value
        st.sampled_from(["checkpoint.json", "eval.json", "manifest.json"]),
        st.tuples(st.sampled_from(RUN_FIELDS), JSON_VALUES),
    ),
)


def _two_runs(tmp_path: Path) -> tuple[Path, Path]:
    """Two sound run folders, 00000-good and 00001-bad, under ``tmp_path``."""
    good, bad = tmp_path / "runs" / "00000-good", tmp_path / "runs" / "00001-bad"
    for run in (good, bad):
        run.mkdir(parents=True)
        for name, data in RUN_FILES.items():
            (run / name).write_text(json.dumps(data))
    return good, bad


def _damage(run: Path, change: tuple[str, bytes | tuple]) -> bytes:
    """Write the run's files, one of them changed; return that file's new bytes."""
    name, damage = change
    blob = damage if isinstance(damage, bytes) else json.dumps(edited(RUN_FILES[name], damage)).encode()
    for n, data in RUN_FILES.items():
        (run / n).write_bytes(blob if n == name else json.dumps(data).encode())
    return blob


def test_fuzz_runs(tmp_path):
    good, bad = _two_runs(tmp_path)

    def check(change: tuple[str, bytes | tuple]) -> None:
        name, blob = change[0], _damage(bad, change)
        first, second = summarize_runs(tmp_path)
        assert first.name == good.name and first.problem is None and first.fid == 3.25 and first.step == 40
        assert second.name == bad.name
        try:
            parsed = json.loads(blob)
        except (ValueError, RecursionError):
            parsed = None
        if name == "manifest.json":  # not read by `runs`: no harm
            assert second.problem is None and second.fid == 3.25
        elif name == "config.json":
            assert (second.problem is None) == (second.preset is not None)
        elif parsed is None:
            assert second.problem and second.problem.startswith(name)
        else:
            values, ok = expected_run({**RUN_FILES, name: parsed})
            assert (second.problem is None) == ok, (second.problem, parsed)
            if ok:
                for key, value in values.items():
                    got = getattr(second, key)
                    assert got == value or (math.isnan(got) and math.isnan(value)), (key, got, value)

    assert fuzz(RUN_CHANGES, check, examples=300) >= 250


def test_fuzz_runs_command(tmp_path):
    good, bad = _two_runs(tmp_path)

    def check(change: tuple[str, bytes | tuple]) -> None:
        _damage(bad, change)
        result = runner.invoke(app, ["runs", "--artifacts-dir", str(tmp_path)])
        assert result.exit_code == 0 and "Traceback" not in result.output, result.output
        assert good.name in result.output and bad.name in result.output
        unreadable = summarize_runs(tmp_path)[1].problem is not None
        assert ("unreadable" in result.output) == unreadable, result.output

    assert fuzz(RUN_CHANGES, check, examples=80) >= 60


# ----------------------------------------------------------------------------- explicit: arrays


@pytest.mark.parametrize("dtype", ["<f4", ">f4", "<f2", ">f2", "<f8", ">f8", "float32", np.longdouble, "uint8", ">u1"])
def test_npy_float_and_uint8_in_any_byte_order_round_trip(tmp_path, dtype):
    source = SAMPLES.numpy() if np.dtype(dtype).kind == "u" else UNIT.numpy()
    a = source.astype(dtype)
    np.save(tmp_path / "a.npy", a)
    got = load_samples(tmp_path / "a.npy")
    want = UNIT if np.dtype(dtype).kind == "u" else torch.from_numpy(a.astype(np.float32))
    assert torch.equal(got, want)
    if np.dtype(dtype).itemsize >= 4:  # float32 and wider, in either byte order: exactly the samples
        assert torch.equal(got, UNIT)


REFUSED_ARRAYS = {
    "bool": (lambda: SAMPLES.numpy() > 100, "uint8"),
    "int8": (lambda: SAMPLES.numpy().astype(np.int8), "uint8"),
    "int16": (lambda: SAMPLES.numpy().astype(np.int16), "uint8"),
    "int32": (lambda: SAMPLES.numpy().astype(np.int32), "uint8"),
    "int64": (lambda: SAMPLES.numpy().astype(np.int64), "uint8"),
    "uint16": (lambda: SAMPLES.numpy().astype(np.uint16), "uint8"),
    "uint32": (lambda: SAMPLES.numpy().astype(np.uint32), "uint8"),
    "uint64": (lambda: SAMPLES.numpy().astype(np.uint64), "uint8"),
    "big-endian int32": (lambda: SAMPLES.numpy().astype(">i4"), "uint8"),
    "complex64": (lambda: UNIT.numpy().astype(np.complex64), "complex64"),
    "complex128": (lambda: UNIT.numpy().astype(np.complex128), "complex128"),
    "unicode": (lambda: np.full((2, 28, 28), "a"), "floats in"),
    "bytes": (lambda: np.full((2, 28, 28), b"a"), "floats in"),
    "structured": (lambda: np.zeros((2, 28, 28), dtype=[("x", "<f4")]), "structured"),
    "datetime": (lambda: np.zeros((2, 28, 28), dtype="datetime64[s]"), "datetime64"),
    "0-d": (lambda: np.array(0.5, np.float32), r"shape .* got \(\)"),
    "1-d": (lambda: np.zeros(784, np.float32), "shape"),
    "5-d": (lambda: np.zeros((1, 1, 1, 28, 28), np.float32), "shape"),
    "empty": (lambda: np.zeros((0, 28, 28), np.float32), "no images"),
    "nan": (lambda: np.full((2, 28, 28), np.nan, np.float32), "NaN"),
    "inf": (lambda: np.full((2, 28, 28), np.inf, np.float16), "infinite"),
    "-inf": (lambda: np.full((2, 28, 28), -np.inf, ">f8"), "infinite"),
    "above 1": (lambda: UNIT.numpy() * 1.5, r"expected \[0, 1\]"),
}


@pytest.mark.parametrize("name", REFUSED_ARRAYS)
def test_npy_refused_with_one_line(tmp_path, name):
    make, needle = REFUSED_ARRAYS[name]
    np.save(tmp_path / "a.npy", make())
    with pytest.raises(UserError, match=needle) as e:
        load_samples(tmp_path / "a.npy")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "shape, needle",
    [
        ("(99999999999, 28, 28)", "not a plain numpy array"),
        ("(9, 28, 28)", "not a plain numpy array"),
        ("(-1, 28, 28)", "not a plain numpy array"),
        ("(2**70, 28)", "not a plain numpy array"),
    ],
)
def test_npy_header_claiming_more_than_the_file_holds(tmp_path, shape, needle):
    blob = npy_bytes(UNIT.numpy())
    header_len = struct.unpack("<H", blob[8:10])[0]
    header = blob[10 : 10 + header_len].replace(b"(5, 1, 28, 28)", shape.encode())
    header = header.rstrip(b" \n").ljust(header_len - 1) + b"\n"  # same length: the data stays where it was
    (tmp_path / "a.npy").write_bytes(blob[:10] + header + blob[10 + header_len :])
    with pytest.raises(UserError, match=needle):
        load_samples(tmp_path / "a.npy")


def test_npz_archive_named_npy(tmp_path):
    np.savez(tmp_path / "a.npz", samples=UNIT.numpy())
    (tmp_path / "a.npz").rename(tmp_path / "a.npy")
    with pytest.raises(UserError, match="npz archive"):
        load_samples(tmp_path / "a.npy")


@pytest.mark.parametrize(
    "dtype",
    [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.uint8, torch.float8_e4m3fn, torch.float8_e5m2],
)
def test_safetensors_float_and_uint8_round_trip(tmp_path, dtype):
    t = SAMPLES if dtype == torch.uint8 else UNIT.to(dtype)
    (tmp_path / "s.safetensors").write_bytes(safetensors_save({"samples": t}))
    got = load_samples(tmp_path / "s.safetensors")
    assert torch.equal(got, UNIT if dtype in (torch.uint8, torch.float32, torch.float64) else t.float())


@pytest.mark.parametrize(
    "dtype", ["bool", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64", "complex64", "float4_e2m1fn_x2"]
)
def test_safetensors_refused_dtypes(tmp_path, dtype):
    if not hasattr(torch, dtype):
        pytest.skip(f"this torch has no {dtype}")
    t = SAMPLES.view(torch.float4_e2m1fn_x2) if dtype == "float4_e2m1fn_x2" else SAMPLES.to(getattr(torch, dtype))
    (tmp_path / "s.safetensors").write_bytes(safetensors_save({"samples": t}))
    with pytest.raises(UserError, match="uint8|float32") as e:
        load_samples(tmp_path / "s.safetensors")
    assert "\n" not in str(e.value)


def _header(obj: Any, claimed_len: int | None = None) -> bytes:
    text = json.dumps(obj).encode()
    return struct.pack("<Q", len(text) if claimed_len is None else claimed_len) + text


REFUSED_SAFETENSORS = {
    "empty": b"",
    "garbage": b"this is not a safetensors file at all",
    "truncated": safetensors_save({"samples": UNIT})[:-100],
    "huge header length": _header({}, claimed_len=2**63),
    "huge shape": _header({"samples": {"dtype": "F32", "shape": [2**40, 28, 28], "data_offsets": [0, 16]}}) + bytes(16),
    "offsets past the end": _header({"samples": {"dtype": "F32", "shape": [1], "data_offsets": [0, 2**62]}}) + bytes(4),
    "unknown dtype": _header({"samples": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}) + bytes(4),
    "no tensors": _header({}),
    "a list": _header([1, 2]),
}


@pytest.mark.parametrize("name", REFUSED_SAFETENSORS)
def test_safetensors_refused_files(tmp_path, name):
    (tmp_path / "s.safetensors").write_bytes(REFUSED_SAFETENSORS[name])
    with pytest.raises(UserError, match="s.safetensors") as e:
        load_samples(tmp_path / "s.safetensors")
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- explicit: PNGs


def _grid(mode: str) -> Image.Image:
    """The samples' grid in another PNG mode, with the same grey values."""
    grey = grid_image(UNIT)
    if mode == "I;16":
        return Image.fromarray(np.asarray(grey).astype(np.uint16) * 257)  # 8 -> 16 bits, exactly
    if mode in ("LA", "RGBA"):
        alpha = Image.new("L", grey.size, 255)
        return Image.merge(mode, [grey] * (len(mode) - 1) + [alpha])
    return grey.convert(mode)  # RGB, P (a grey palette)


@pytest.mark.parametrize("mode", ["I;16", "P", "LA", "RGB", "RGBA"])
def test_png_grid_in_any_grey_mode_round_trips(tmp_path, mode):
    image = _grid(mode)
    image.save(tmp_path / "g.png")
    assert Image.open(tmp_path / "g.png").mode == mode
    assert torch.equal(load_samples(tmp_path / "g.png"), UNIT)


def test_png_one_bit_grid(tmp_path):
    binary = (SAMPLES > 128).to(torch.uint8)  # (5, 1, 28, 28) of 0 / 1
    grid_image(binary.float()).convert("1").save(tmp_path / "g.png")
    assert Image.open(tmp_path / "g.png").mode == "1"
    assert torch.equal(load_samples(tmp_path / "g.png"), binary.float())


def test_png_folder_of_16_bit_images(tmp_path):
    for i in range(3):
        Image.fromarray(SAMPLES[i, 0].numpy().astype(np.uint16) * 257).save(tmp_path / f"{i}.png")
    assert torch.equal(load_samples(tmp_path), UNIT[:3])


def _transparent(mode: str) -> Image.Image:
    image = _grid(mode)
    image.putpixel((0, 0), (0, 0) if mode == "LA" else (0, 0, 0, 0))
    return image


REFUSED_PNGS = {
    "colour": (lambda: Image.merge("RGB", [grid_image(UNIT)] * 2 + [Image.new("L", (152, 32))]), "colour"),
    "colour palette": (lambda: Image.fromarray(np.full((32, 152, 3), [9, 0, 0], np.uint8)).convert("P"), "colour"),
    "transparent LA": (lambda: _transparent("LA"), "transparent"),
    "transparent RGBA": (lambda: _transparent("RGBA"), "transparent"),
    "1x1": (lambda: Image.new("L", (1, 1)), "not a grid"),
    "not a multiple of the tiles": (lambda: Image.new("L", (151, 32)), "not a grid"),
}


@pytest.mark.parametrize("name", REFUSED_PNGS)
def test_png_refused_images(tmp_path, name):
    make, needle = REFUSED_PNGS[name]
    make().save(tmp_path / "g.png")
    with pytest.raises(UserError, match=needle) as e:
        load_samples(tmp_path / "g.png")
    assert "\n" not in str(e.value)


def _jpeg() -> bytes:
    buf = io.BytesIO()
    grid_image(UNIT).save(buf, format="JPEG")
    return buf.getvalue()


REFUSED_PNG_BYTES = {
    "truncated": (GRID_PNG[: len(GRID_PNG) // 2], "cannot read"),
    "not an image": (b"not a png at all", "cannot read"),
    "a JPEG named .png": (_jpeg(), "not a PNG"),
    "zero width": (png_with_size(0, 32), "cannot read"),
    "header claims more than the data": (png_with_size(152, 3200), "cannot read"),
    "decompression bomb": (png_with_size(100_000, 100_000, bit_depth=1), "too large"),  # past twice the limit
    "just over the pixel limit": (png_with_size(10_000, 10_000, bit_depth=1), "too large"),  # Pillow only warns
}


@pytest.mark.parametrize("name", REFUSED_PNG_BYTES)
def test_png_refused_files(tmp_path, name):
    blob, needle = REFUSED_PNG_BYTES[name]
    (tmp_path / "g.png").write_bytes(blob)
    with pytest.raises(UserError, match=needle) as e:
        load_samples(tmp_path / "g.png")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("limit", [152 * 32 // 2 - 1, 152 * 32 - 1])  # Pillow's error, then its warning
def test_png_over_a_lowered_pixel_limit(tmp_path, monkeypatch, limit):
    save_grid(UNIT, tmp_path / "g.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(UserError, match="too large"):
        load_samples(tmp_path / "g.png")
    (tmp_path / "folder").mkdir()
    Image.new("L", (28, 28)).save(tmp_path / "folder" / "0.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 28 * 28 // 2 - 1)
    with pytest.raises(UserError, match="too large"):
        load_samples(tmp_path / "folder")


# ----------------------------------------------------------------------------- explicit: config and runs


REFUSED_CONFIGS = {
    "truncated": (json.dumps(DEFAULTS)[:40], "not valid JSON"),
    "not UTF-8": (b'{"preset": "\xff"}', "not valid JSON"),
    "a list": ("[]", "JSON object"),
    "nested too deep": ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
    "an int of 5000 digits": ("1" * 5000, "not valid JSON"),
    "channel_mult with a string": (edited(DEFAULTS, (("model", "channel_mult"), [1, "2", 6])), "channel_mult"),
    "channel_mult with a bool": (edited(DEFAULTS, (("model", "channel_mult"), [1, True, 6])), "channel_mult"),
    "channel_mult with a float": (edited(DEFAULTS, (("model", "channel_mult"), [1, 2.5, 6])), "channel_mult"),
    "a section that is a list": (edited(DEFAULTS, (("train",), [])), "train"),
    "a huge int": (edited(DEFAULTS, (("train", "epochs"), 10**30)), "epochs"),
    "a 65-bit seed": (edited(DEFAULTS, (("train", "seed"), 2**64)), "seed"),
    "a huge int for a float": (edited(DEFAULTS, (("train", "lr"), 10**400)), "lr"),
    "NaN": (edited(DEFAULTS, (("train", "lr"), math.nan)), "lr"),
    "infinity": (edited(DEFAULTS, (("train", "grad_clip"), math.inf)), "grad_clip"),
    "a bool for an int": (edited(DEFAULTS, (("model", "channels"), True)), "channels"),
    "a string for a bool": (edited(DEFAULTS, (("model", "attention"), "yes")), "attention"),
    "an unknown field": (edited(DEFAULTS, (("extra",), 1)), "unknown"),
    "an unknown section field": (edited(DEFAULTS, (("model", "extra"), 1)), "unknown"),
    "a list for the preset": (edited(DEFAULTS, (("preset",), ["default"])), "preset"),
    "a lone surrogate in the preset": ('{"preset": "\\ud800"}', "preset"),
    "an out-of-range value": (edited(DEFAULTS, (("model", "dropout"), 1.5)), "dropout"),
}


@pytest.mark.parametrize("name", REFUSED_CONFIGS)
def test_config_refused_with_one_line(tmp_path, name):
    content, needle = REFUSED_CONFIGS[name]
    text = content if isinstance(content, str | bytes) else json.dumps(content)
    (tmp_path / "config.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(UserError, match=needle) as e:
        load_config(tmp_path)
    assert "\n" not in str(e.value) and "config.json" in str(e.value)


@pytest.mark.parametrize(
    "encode", [lambda s: s.encode(), lambda s: s.encode("utf-16"), lambda s: b"\xef\xbb\xbf" + s.encode()]
)
def test_config_in_any_json_encoding(tmp_path, encode):
    (tmp_path / "config.json").write_bytes(encode(json.dumps(DEFAULTS)))
    assert load_config(tmp_path) == RunConfig()


def _artifacts(tmp_path: Path, corrupt: dict[str, dict[str, str | bytes]]) -> Path:
    """An artifacts folder with a sound run 00000-good and one run per entry of ``corrupt``, its
    files replaced by the given contents."""
    for i, (name, files) in enumerate({"good": {}, **corrupt}.items()):
        run = tmp_path / "runs" / f"{i:05d}-{name}"
        run.mkdir(parents=True)
        for file, data in {**{k: json.dumps(v) for k, v in RUN_FILES.items()}, **files}.items():
            (run / file).write_bytes(data if isinstance(data, bytes) else data.encode())
    return tmp_path


UNREADABLE_RUNS = {
    "eval-bad-json": {"eval.json": '{"n": 10'},
    "eval-a-list": {"eval.json": "[1, 2]"},
    "eval-fid-string": {"eval.json": '{"n": 10, "model": {"fid": "nan"}}'},
    "eval-fid-nan": {"eval.json": '{"n": 10, "model": {"fid": NaN}}'},
    "eval-n-null": {"eval.json": '{"n": null, "model": {"fid": 2.0}}'},
    "eval-n-huge": {"eval.json": '{"n": 1e999, "model": {"fid": 2.0}}'},
    "eval-n-bool": {"eval.json": '{"n": true, "model": {"fid": 2.0}}'},
    "eval-not-utf8": {"eval.json": b'{"n": "\xff\xfe"}'},
    "ckpt-step-string": {"checkpoint.json": '{"step": "x", "loss": 0.1}'},
    "ckpt-step-bool": {"checkpoint.json": '{"step": true}'},
    "ckpt-step-huge": {"checkpoint.json": '{"step": 99999999999999999999999}'},
    "ckpt-step-missing": {"checkpoint.json": '{"loss": 0.1}'},
    "ckpt-loss-string": {"checkpoint.json": '{"step": 3, "loss": "low"}'},
    "ckpt-empty": {"checkpoint.json": ""},
    "config-corrupt": {"config.json": '{"model": {"channels": "wide"}}'},
}


@pytest.mark.parametrize("name", UNREADABLE_RUNS)
def test_runs_lists_an_unreadable_run_as_such(tmp_path, name):
    good, bad = summarize_runs(_artifacts(tmp_path, {name: UNREADABLE_RUNS[name]}))
    assert good.problem is None and (good.step, good.final_loss, good.fid, good.fid_n) == (40, 0.0512, 3.25, 10_000)
    (file,) = UNREADABLE_RUNS[name]
    assert bad.name.endswith(name) and bad.problem and bad.problem.startswith(file), bad.problem
    assert "\n" not in bad.problem and str(tmp_path) not in bad.problem  # short: the row names the run


def test_runs_reads_the_rest_of_a_run_around_a_bad_file(tmp_path):
    artifacts = _artifacts(
        tmp_path,
        {
            "ckpt": {"checkpoint.json": "{"},
            "eval": {"eval.json": "{"},
            "manifest": {"manifest.json": "\x00{"},
            "noconfig": {},
        },
    )
    (artifacts / "runs" / "00004-noconfig" / "config.json").unlink()
    good, ckpt, evl, manifest, no_config = summarize_runs(artifacts)
    assert type(good.step) is int and type(good.final_loss) is float and type(good.fid) is float
    assert type(good.fid_n) is int and good.preset == "default" and good.problem is None
    assert ckpt.step is None and ckpt.fid == 3.25 and ckpt.preset == "default" and ckpt.problem
    assert evl.step == 40 and evl.fid is None and evl.problem.startswith("eval.json")
    assert manifest.problem is None  # `runs` does not read the manifest
    assert no_config.preset is None and no_config.problem == "config.json is missing"


def assert_one_line_error(result, *needles: str):
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("Error:"), result.output
    for needle in needles:
        assert needle in result.output, result.output


def test_cli_eval_of_a_decompression_bomb(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_with_size(100_000, 100_000, bit_depth=1))  # 10^10 pixels in 80 bytes
    result = runner.invoke(app, ["eval", "--samples", str(bomb), "--data-dir", str(tmp_path / "nodata")])
    assert_one_line_error(result, "too large")
    assert not (tmp_path / "nodata").exists()  # refused before fetching MNIST


def test_cli_runs_lists_runs_with_corrupt_files(tmp_path):
    artifacts = _artifacts(
        tmp_path,
        {"badeval": {"eval.json": '{"n": 10, "model": {"fid": "nan"}}'}, "badckpt": {"checkpoint.json": "[1, 2"}},
    )
    result = runner.invoke(app, ["runs", "--artifacts-dir", str(artifacts)], terminal_width=80)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    rows = {line.split()[0]: line for line in result.output.splitlines() if line.strip().startswith("0000")}
    assert rows["00000-good"].split()[-1] == "resumable" and "3.25 @ 10k" in rows["00000-good"]
    assert rows["00001-badeval"].split()[-1] == "unreadable" and rows["00002-badckpt"].split()[-1] == "unreadable"
    assert "00001-badeval: eval.json: model.fid is 'nan'" in result.output
    assert "00002-badckpt: checkpoint.json: not valid JSON" in result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80


# ----------------------------------------------------------------------------- bounded readers: links, FIFOs, sizes


def plant(path: Path, kind: str) -> None:
    """Put something that is not a plain file at ``path``: a symlink to /dev/zero (endless), a
    symlink to a sound copy of the file elsewhere, a FIFO (a read waits for a writer) or a folder."""
    if kind == "link to /dev/zero":
        path.unlink(missing_ok=True)
        path.symlink_to("/dev/zero")
    elif kind == "link to a file":
        target = path.parent.parent / f"elsewhere-{path.parent.name}-{path.name}"
        target.write_bytes(path.read_bytes())
        path.unlink()
        path.symlink_to(target)
    elif kind == "FIFO":
        path.unlink(missing_ok=True)
        os.mkfifo(path)
    else:  # folder
        path.unlink(missing_ok=True)
        path.mkdir()


PLANTED = {"link to /dev/zero": "symbolic link", "link to a file": "symbolic link", "FIFO": "FIFO", "folder": "folder"}
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo") or not Path("/dev/zero").exists(), reason="POSIX only")


@needs_fifo
@pytest.mark.parametrize("kind", PLANTED)
def test_read_bounded_reads_regular_files_only(tmp_path, kind):
    path = tmp_path / "x.json"
    path.write_bytes(b'{"a": 1}')
    assert read_bounded(path, 8) == b'{"a": 1}'
    plant(path, kind)
    with pytest.raises(NotReadable, match=PLANTED[kind]) as e:
        read_bounded(path, 1 << 20, "a JSON file")
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


def test_read_bounded_refuses_a_file_over_its_cap(tmp_path):
    path = tmp_path / "x.json"
    path.write_bytes(b"x" * 101)
    with pytest.raises(NotReadable, match="101 bytes, over the 100 allowed for a JSON file"):
        read_bounded(path, 100, "a JSON file")
    with pytest.raises(FileNotFoundError):
        read_bounded(tmp_path / "missing.json", 100)


@needs_fifo
def test_read_bounded_follows_links_only_when_asked_and_still_to_regular_files_only(tmp_path):
    (tmp_path / "real.png").write_bytes(b"png")
    (tmp_path / "link.png").symlink_to(tmp_path / "real.png")
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    assert read_bounded(tmp_path / "link.png", 3, follow_links=True) == b"png"
    with pytest.raises(NotReadable, match="a device, not a regular file"):
        read_bounded(tmp_path / "zero.png", 1 << 20, follow_links=True)


@needs_fifo
@pytest.mark.parametrize("kind", PLANTED)
@pytest.mark.parametrize("name", ["config.json", "checkpoint.json", "eval.json"])
def test_runs_lists_a_run_whose_file_is_not_a_regular_file_as_unreadable(tmp_path, name, kind):
    artifacts = _artifacts(tmp_path, {"planted": {}})
    plant(artifacts / "runs" / "00001-planted" / name, kind)
    good, bad = summarize_runs(artifacts)
    assert good.problem is None
    assert bad.status == "unreadable" and bad.problem.startswith(name) and PLANTED[kind] in bad.problem, bad.problem
    result = runner.invoke(app, ["runs", "--html", "--artifacts-dir", str(artifacts)])
    assert result.exit_code == 0, result.output
    assert f"00001-planted: {name}" in result.output


@pytest.mark.parametrize("name", ["config.json", "checkpoint.json", "eval.json"])
def test_runs_refuses_a_json_file_over_16_mib(tmp_path, name):
    artifacts = _artifacts(tmp_path, {"huge": {}})
    path = artifacts / "runs" / "00001-huge" / name
    path.write_bytes(path.read_bytes() + b" " * (16 << 20))  # valid JSON, padded past the cap
    good, bad = summarize_runs(artifacts)
    assert good.problem is None and bad.problem.startswith(name) and "over the 16,777,216" in bad.problem
    if name == "config.json":
        with pytest.raises(UserError, match="over the 16,777,216 allowed"):
            load_config(path.parent)


@needs_fifo
@pytest.mark.parametrize("kind", ["link to /dev/zero", "link to a file", "FIFO"])
def test_runs_html_makes_no_thumbnail_of_a_samples_png_that_is_not_a_regular_file(tmp_path, kind):
    artifacts = _artifacts(tmp_path, {"planted": {}})
    for run in (artifacts / "runs").iterdir():
        save_grid(UNIT, run / "samples.png")
    plant(artifacts / "runs" / "00001-planted" / "samples.png", kind)
    plant(artifacts / "runs" / "00001-planted" / "checkpoint.json", kind)
    result = runner.invoke(app, ["runs", "--html", "--artifacts-dir", str(artifacts)])
    assert result.exit_code == 0, result.output
    assert (artifacts / "index.html").read_text().count("data:image/png;base64,") == 1  # the sound run's


@needs_fifo
@pytest.mark.parametrize("kind", ["link to /dev/zero", "link to a file", "FIFO"])
def test_safetensors_that_are_not_regular_files_are_refused(tmp_path, kind):
    path = tmp_path / "model.safetensors"
    save_tensors(path, {"w": torch.ones(2)})
    plant(path, kind)
    with pytest.raises(UserError, match=PLANTED[kind]):
        load_tensors(path)


@needs_fifo
def test_the_manifest_lists_and_hashes_regular_files_only(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.json", "model.safetensors", "metrics.jsonl"):
        (run / name).write_text(name)
    write_manifest(run)
    assert set(verify_manifest(run).values()) == {"ok"}
    plant(run / "model.safetensors", "link to a file")  # the same bytes, through a link
    plant(run / "metrics.jsonl", "FIFO")
    (run / "extra.json").symlink_to("/dev/zero")
    os.mkfifo(run / "extra.fifo")
    status = verify_manifest(run)
    assert status == {"config.json": "ok", "model.safetensors": "changed", "metrics.jsonl": "changed"}
    write_manifest(run)
    assert set(json.loads((run / "manifest.json").read_text())["files"]) == {"config.json"}
    for name in ("model.safetensors", "extra.json", "extra.fifo"):
        with pytest.raises(NotReadable):
            sha256_file(run / name)


@needs_fifo
@pytest.mark.parametrize("kind", ["link to /dev/zero", "FIFO"])
def test_a_latest_file_that_is_not_a_regular_file_is_one_line(tmp_path, kind):
    (tmp_path / "latest").write_text("00000-x\n")
    plant(tmp_path / "latest", kind)
    result = runner.invoke(app, ["sample", "--artifacts-dir", str(tmp_path), "-o", str(tmp_path / "g.png")])
    assert_one_line_error(result, "latest", PLANTED[kind])


# ----------------------------------------------------------------------------- drawings: --init and --image


def drawing(path: Path, width: int, height: int) -> Path:
    """A greyscale PNG of ``width`` x ``height`` with a light stroke on a dark ground."""
    pixels = np.zeros((height, width), np.uint8)
    pixels[height // 2, :] = 255
    Image.fromarray(pixels, mode="L").save(path)
    return path


@pytest.mark.parametrize(
    "size,needle",
    [
        ((200_000, 1), "4096 pixels on a side"),
        ((5000, 5000), "4096 pixels"),
        ((1, 9), "longer than 8:1"),
        ((900, 100), "longer than 8:1"),
    ],
)
def test_read_digit_refuses_a_drawing_too_long_or_too_large_before_padding_it(tmp_path, size, needle):
    path = drawing(tmp_path / "d.png", *size)
    with pytest.raises(UserError, match=needle) as e:
        read_digit(path, log=lambda line: None)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_read_digit_takes_a_long_drawing_within_the_limits(tmp_path):
    digit = read_digit(drawing(tmp_path / "d.png", 800, 100), log=lambda line: None)  # 8:1
    assert digit.shape == (1, 28, 28) and digit.max() > 0


@pytest.mark.parametrize(
    "command",
    [
        ["sample", "--init"],
        ["inpaint", "--image"],
        ["invert", "--image"],
        ["interpolate", "--image", "{path}", "--image"],
    ],
)
def test_cli_refuses_a_drawing_of_5000x1_in_one_line_before_any_work(tmp_path, command):
    path = drawing(tmp_path / "wide.png", 5000, 1)
    args = [str(path) if a == "{path}" else a for a in command]
    result = runner.invoke(
        app, [*args, str(path), "--artifacts-dir", str(tmp_path / "none"), "-o", str(tmp_path / "out.png")]
    )
    assert_one_line_error(result, "5000x1 pixels", "4096")


def test_cli_refuses_a_drawing_over_the_pixel_limit_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow's decompression-bomb guard, lowered
    path = drawing(tmp_path / "big.png", 100, 100)  # 10,000 pixels: twice the limit makes an error
    result = runner.invoke(app, ["sample", "--init", str(path), "--artifacts-dir", str(tmp_path / "none")])
    assert_one_line_error(result, "too large an image")


# ----------------------------------------------------------------------------- checkpoints holding NaN


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_checkpoint_holding_nan_is_refused_by_resume(tiny_run, tmp_path, data_dir, value):
    artifacts = tmp_path / "artifacts"
    shutil.copytree(tiny_run[0], artifacts)
    run_dir = artifacts / "runs" / tiny_run[1].name
    path = run_dir / "checkpoint.safetensors"
    tensors, metadata = load_tensors_and_metadata(path)
    name = sorted(k for k in tensors if k.startswith("ema."))[0]
    tensors[name].view(-1)[0] = value
    save_tensors(path, tensors, metadata)  # a valid digest of the damaged tensors
    with pytest.raises(UserError, match="holds NaN or infinite values") as e:
        read_checkpoint(run_dir)
    assert str(path) in str(e.value) and name in str(e.value)
    result = runner.invoke(
        app,
        [
            "train",
            "--resume",
            run_dir.name,
            "--max-steps",
            "6",
            "--artifacts-dir",
            str(artifacts),
            "--data-dir",
            str(data_dir),
        ],
    )
    assert_one_line_error(result, "checkpoint.safetensors", "NaN or infinite")


# ----------------------------------------------------------------------------- output paths

OUTPUT_FLAGS = {  # (command line before the flag, the flag, a good suffix)
    "sample -o": (["sample"], "-o", ".png"),
    "sample --save-tensor": (["sample"], "--save-tensor", ".safetensors"),
    "sample --trajectory": (["sample"], "--trajectory", ".gif"),
    "inpaint -o": (["inpaint", "--test-index", "0"], "-o", ".png"),
    "inpaint --save-tensor": (["inpaint", "--test-index", "0"], "--save-tensor", ".safetensors"),
    "interpolate -o": (["interpolate", "--test-index", "0,1"], "-o", ".gif"),
    "invert -o": (["invert", "--test-index", "0"], "-o", ".png"),
    "visualize-forward -o": (["visualize-forward"], "-o", ".png"),
}
BAD_OUTPUTS = {  # what to pass, given the test's folder and the good suffix; what the error says
    "empty": (lambda folder, suffix: "", "needs the name of a file"),
    "the root": (lambda folder, suffix: "/", "needs the name of a file"),
    "an existing folder": (lambda folder, suffix: str(folder), "is a folder"),
    "a missing folder": (lambda folder, suffix: str(folder / "missing" / f"x{suffix}"), "does not exist"),
    "another suffix": (lambda folder, suffix: str(folder / "x.jpg"), "must end in"),
}


@pytest.mark.parametrize("bad", BAD_OUTPUTS)
@pytest.mark.parametrize("command", OUTPUT_FLAGS)
def test_every_output_flag_is_checked_in_one_line_before_any_work(tmp_path, command, bad):
    head, flag, suffix = OUTPUT_FLAGS[command]
    make, needle = BAD_OUTPUTS[bad]
    nodata = tmp_path / "nodata"
    args = [*head, flag, make(tmp_path, suffix)]
    if not command.startswith("sample"):
        args += ["--data-dir", str(nodata)]
    if command != "visualize-forward -o":
        args += ["--artifacts-dir", str(tmp_path / "none")]
        if flag != "-o":
            args += ["-o", str(tmp_path / ("g.gif" if command.startswith("interpolate") else "g.png"))]
    result = runner.invoke(app, args)
    assert_one_line_error(result, f"Error: {flag} ", needle)
    assert ".tmp" not in result.output and not nodata.exists()  # refused before fetching MNIST or a run


def test_check_output_takes_a_new_file_in_an_existing_folder(tmp_path):
    check_output(tmp_path / "g.PNG", (".png",), "-o")
    check_output(None, (".png",), "-o")
    (tmp_path / "old.png").write_bytes(b"old")
    check_output(tmp_path / "old.png", (".png",), "-o")  # overwritten, as before


# ----------------------------------------------------------------------------- --run


@pytest.mark.parametrize("run", ["²", "٣", "1" * 5000, "x" * 5000, "a\0b", "0" * 10 + "1"])
def test_a_run_that_is_no_name_or_number_is_one_line(tmp_path, run):
    artifacts = _artifacts(tmp_path, {})  # one run, 00000-good
    with pytest.raises(UserError, match="unknown run") as e:
        resolve_run(run, artifacts)
    assert "\n" not in str(e.value) and len(str(e.value)) < 300 + len(str(artifacts))
    for command in (["sample", "-o", str(tmp_path / "g.png")], ["report"]):
        assert_one_line_error(
            runner.invoke(app, [*command, "--run", run, "--artifacts-dir", str(artifacts)]), "unknown run"
        )


def test_a_run_by_its_number(tmp_path):
    artifacts = _artifacts(tmp_path, {"other": {}})
    assert resolve_run("1", artifacts).name == "00001-other" and resolve_run("00000", artifacts).name == "00000-good"
