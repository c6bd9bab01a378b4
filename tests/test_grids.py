"""Sample grids both ways (mnist_diffusion.pictures.grids): PNG grids written and read back, and
sample files in every accepted format, on real digits from tests/fixtures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mnist_diffusion.data.mnist import as_unit as _unit
from mnist_diffusion.errors import UserError
from mnist_diffusion.io import save_tensors
from mnist_diffusion.pictures.animation import save_gif
from mnist_diffusion.pictures.figures import trajectory_figure
from mnist_diffusion.pictures.grids import grid_scale, load_samples, picture_text, save_grid, tile


@pytest.fixture(scope="module")
def digits(fixture_data):
    """13 real digits as uint8 (13, 28, 28): a grid of them has an incomplete last row."""
    return fixture_data["test_images"][:13]


def test_load_safetensors_round_trip(tmp_path, digits):
    save_tensors(tmp_path / "a.safetensors", {"samples": _unit(digits), "other": torch.zeros(3)})
    torch.testing.assert_close(load_samples(tmp_path / "a.safetensors"), _unit(digits))
    save_tensors(tmp_path / "b.safetensors", {"x": digits})  # the only tensor, uint8 (N, 28, 28)
    torch.testing.assert_close(load_samples(tmp_path / "b.safetensors"), _unit(digits))


def test_load_npy_round_trip(tmp_path, digits):
    np.save(tmp_path / "a.npy", _unit(digits).numpy())
    torch.testing.assert_close(load_samples(tmp_path / "a.npy"), _unit(digits))
    np.save(tmp_path / "b.npy", digits.numpy())
    torch.testing.assert_close(load_samples(tmp_path / "b.npy"), _unit(digits))


def test_load_png_folder_round_trip(tmp_path, digits):
    for i, d in enumerate(digits):
        Image.fromarray(d.numpy(), mode="L").save(tmp_path / f"{i:03d}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    torch.testing.assert_close(load_samples(tmp_path), _unit(digits))


@pytest.mark.parametrize("scale", [1, 2, 3])
def test_load_png_grid_round_trip(tmp_path, digits, scale):
    save_grid(_unit(digits), tmp_path / "grid.png", scale=scale)  # 4 x 4 tiles, the last 3 empty
    torch.testing.assert_close(load_samples(tmp_path / "grid.png"), _unit(digits))
    save_grid(_unit(digits[:10]), tmp_path / "row.png", nrow=10, scale=scale)
    torch.testing.assert_close(load_samples(tmp_path / "row.png"), _unit(digits[:10]))


def test_load_samples_refuses_bad_input(tmp_path, digits):
    cases = {}
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    cases["pickled.npy"] = "plain numpy"
    np.save(tmp_path / "shape.npy", np.zeros((4, 32, 32), np.float32))
    cases["shape.npy"] = "shape"
    np.save(tmp_path / "signed.npy", _unit(digits).numpy() * 2 - 1)
    cases["signed.npy"] = r"\(x \+ 1\) / 2"
    np.save(tmp_path / "ints.npy", digits.numpy().astype(np.int32))
    cases["ints.npy"] = "uint8"
    np.save(tmp_path / "nan.npy", np.full((2, 28, 28), np.nan, np.float32))
    cases["nan.npy"] = "NaN"
    (tmp_path / "trunc.safetensors").write_bytes(b"\x10\x00\x00\x00garbage")
    cases["trunc.safetensors"] = "safetensors"
    Image.fromarray(np.zeros((90, 100), np.uint8), mode="L").save(tmp_path / "odd.png")
    cases["odd.png"] = "not a grid"
    (tmp_path / "fake.png").write_bytes(b"not a png at all")
    cases["fake.png"] = "cannot read"
    (tmp_path / "samples.pt").write_bytes(b"")
    cases["samples.pt"] = "unknown sample format"
    big = tmp_path / "big"
    big.mkdir()
    Image.fromarray(np.zeros((56, 56), np.uint8), mode="L").save(big / "0.png")
    cases["big"] = "28x28"
    (tmp_path / "empty").mkdir()
    cases["empty"] = "no .png"
    cases["missing.npy"] = "no such file"
    colour = tmp_path / "colour"
    colour.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28, 3), np.uint8), mode="RGB").save(colour / "0.png")
    cases["colour"] = "greyscale"
    for name, message in cases.items():
        with pytest.raises(UserError, match=message):
            load_samples(tmp_path / name)


def test_grid_scale_detection():
    assert grid_scale(32, 302) == [1]  # one row of 10 tiles
    assert grid_scale(64, 604) == [2]
    assert grid_scale(512, 512) == [16, 1]  # both fit: pixel content decides, largest first
    assert grid_scale(100, 90) == []


@pytest.mark.parametrize("n,nrow", [(1, 8), (2, 8), (6, 6), (13, 4), (10, 3), (64, 8), (7, 1)])
@pytest.mark.parametrize("pad_value", [0.0, 1.0])
def test_tile_lays_out_a_grid_as_torchvision_does(n, nrow, pad_value):
    from torchvision.utils import make_grid  # the reference layout

    images = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(n))
    ours = tile(images, nrow, pad_value=pad_value)
    reference = make_grid(images, nrow=nrow, padding=2, pad_value=pad_value)
    if n == 1:  # make_grid returns a lone image unpadded; tile pads it like any other
        reference = torch.nn.functional.pad(images[0], (2, 2, 2, 2), value=pad_value)
    assert torch.equal(ours, reference[0])


MADE = {"mnistdiff": '{"run": "00001-tiny", "sampling": {"seed": 7, "steps": 2}}', "note": "a ≈ b, ü"}


def test_a_png_grid_carries_its_metadata_as_text(tmp_path, digits):
    save_grid(_unit(digits), tmp_path / "a.png", scale=2, metadata=MADE)
    save_grid(_unit(digits), tmp_path / "b.png", scale=2, metadata=MADE)
    assert Image.open(tmp_path / "a.png").text == MADE == picture_text(tmp_path / "a.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()  # no time in it
    torch.testing.assert_close(load_samples(tmp_path / "a.png"), _unit(digits))  # the grid reads back as before
    save_grid(_unit(digits), tmp_path / "other.png", scale=2, metadata={**MADE, "mnistdiff": "{}"})
    assert Image.open(tmp_path / "other.png").text["mnistdiff"] == "{}"
    save_grid(_unit(digits), tmp_path / "plain.png")
    assert Image.open(tmp_path / "plain.png").text == {}


def test_a_gif_carries_its_metadata_in_its_comment(tmp_path, digits):
    frames = _unit(digits[:12]).reshape(3, 4, 1, 28, 28)
    save_gif(frames, tmp_path / "a.gif", metadata=MADE)
    save_gif(frames, tmp_path / "b.gif", metadata=MADE)
    with Image.open(tmp_path / "a.gif") as gif:
        assert gif.n_frames == 3
        assert gif.info["comment"].decode().splitlines()[0] == f"mnistdiff: {MADE['mnistdiff']}"
    assert picture_text(tmp_path / "a.gif") == MADE
    assert (tmp_path / "a.gif").read_bytes() == (tmp_path / "b.gif").read_bytes()
    save_gif(frames, tmp_path / "plain.gif")
    assert picture_text(tmp_path / "plain.gif") == {}
    for bad in ({"a: b": "c"}, {"a": "two\nlines"}):
        with pytest.raises(ValueError, match="key: value"):
            save_gif(frames, tmp_path / "bad.gif", metadata=bad)


def test_a_trajectory_figure_carries_its_metadata_as_text(tmp_path, digits):
    frames = _unit(digits[:6]).reshape(3, 2, 1, 28, 28)
    trajectory_figure(frames, ["a", "b", "c"], tmp_path / "a.png", metadata=MADE)
    trajectory_figure(frames, ["a", "b", "c"], tmp_path / "b.png", metadata=MADE)
    assert picture_text(tmp_path / "a.png") == MADE
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
