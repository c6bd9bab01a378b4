"""The UNet's normalisation: the default network is the one every run trains, and the one without
GroupNorm is that network less its GroupNorm layers."""

import dataclasses
import hashlib

import torch

from mnist_diffusion.config import PRESETS
from mnist_diffusion.nets.unet import UNet, build_model, group_norm, no_norm


def built(seed: int, make) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return make().state_dict()


def layout(state: dict[str, torch.Tensor]) -> str:
    """The names and shapes of a state_dict, in order: a short digest of them."""
    text = "\n".join(f"{name}:{tuple(value.shape)}" for name, value in state.items())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def test_the_default_network_keeps_its_weights_their_order_and_their_draws():
    cfg = PRESETS["default"].model
    default = built(0, lambda: build_model(cfg))
    # The names and shapes of the default network's 111 tensors, in their order: a run's weights
    # load into it as before. The 16/32/96 network, the default before 16/32/64, keeps the layout it
    # had before the norm layer became an argument, so the runs trained with it load too.
    assert len(default) == 111 and layout(default) == "631113f5c416a956"
    earlier = built(0, lambda: build_model(dataclasses.replace(cfg, channel_mult=(1, 2, 6))))
    assert len(earlier) == 111 and layout(earlier) == "5db3f0100b8ec777"
    for same in (lambda: UNet(cfg), lambda: UNet(cfg, norm=group_norm)):
        state = built(0, same)
        assert list(state) == list(default) and all(torch.equal(state[k], default[k]) for k in default)


def test_the_network_without_normalisation_is_the_default_less_its_groupnorms():
    cfg = PRESETS["default"].model
    net = UNet(cfg, norm=no_norm)
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in net.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in UNet(cfg).modules())
    torch.manual_seed(0)
    default = UNet(cfg)
    groupnorms = [name for name, m in default.named_modules() if isinstance(m, torch.nn.GroupNorm)]
    norms = {f"{name}.{p}" for name in groupnorms for p in ("weight", "bias")}
    bare = built(0, lambda: UNet(cfg, norm=no_norm))
    kept = {k: v for k, v in default.state_dict().items() if k not in norms}
    # GroupNorm draws nothing at initialisation: every other weight is drawn as in the default.
    assert list(bare) == list(kept) and all(torch.equal(bare[k], kept[k]) for k in kept)
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([3, 700])
    assert net(x, t).shape == x.shape
