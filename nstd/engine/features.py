"""VGG-19 as a named feature extractor.

`VGGFeatures` rebuilds torchvision's `vgg19().features` topology from a state dict, keeps only
the layers up to the deepest one asked for (no compute is spent beyond it), freezes it, and
returns the requested activations by name (`relu4_2`). Images enter as RGB in [0, 1]; the
module applies the ImageNet mean/std itself so callers never normalize.

Layer names and their torchvision indices come from `nstd.layers` (a name's position in
`VGG19_LAYERS` is its index in `features`); nothing here types bare indices.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from nstd.errors import ConfigError, WeightsError
from nstd.layers import BLOCK_SIZES, LAYER_INDEX, LAYER_NAMES

VGG19_LAYERS: tuple[str, ...] = LAYER_NAMES
# Output channels of each block's convolutions in the real network (used by test weights).
VGG19_WIDTHS: tuple[int, ...] = (64, 128, 256, 512, 512)
CONV_LAYERS: tuple[str, ...] = tuple(n for n in VGG19_LAYERS if n.startswith("conv"))

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

assert len(BLOCK_SIZES) == len(VGG19_WIDTHS)


def state_dict_key(layer: str, param: str) -> str:
    """The torchvision state-dict key of a conv layer's parameter: ('conv1_1', 'weight')."""
    return f"features.{LAYER_INDEX[layer]}.{param}"


def block_of(layer: str) -> int:
    """1-based VGG block of a layer name: 'relu3_2' -> 3, 'pool4' -> 4."""
    digits = layer.removeprefix("pool").removeprefix("conv").removeprefix("relu")
    return int(digits.split("_")[0])


def check_vgg19_state_dict(state_dict: Mapping[str, object], source: str) -> dict[str, int]:
    """Check that `state_dict` holds a plain VGG-19 `features` stack; return conv -> out channels.

    Channel widths are read from the tensors rather than assumed, so a width-reduced network
    with the same topology (tests) passes the same checks. `source` names the file or origin
    in error messages. Raises `WeightsError` naming the first bad key.
    """
    conv_keys = {state_dict_key(c, p) for c in CONV_LAYERS for p in ("weight", "bias")}
    for key in state_dict:
        if isinstance(key, str) and key.startswith("features.") and key not in conv_keys:
            raise WeightsError(
                f"{source}: unexpected key {key!r}; expected a plain VGG-19 state dict "
                "(torchvision layout, no batch norm)"
            )
    widths: dict[str, int] = {}
    in_channels = 3
    for layer in CONV_LAYERS:
        w_key, b_key = state_dict_key(layer, "weight"), state_dict_key(layer, "bias")
        weight, bias = state_dict.get(w_key), state_dict.get(b_key)
        for key, value in ((w_key, weight), (b_key, bias)):
            if value is None:
                raise WeightsError(f"{source}: missing key {key!r} ({layer}); "
                                   "not a complete VGG-19 state dict")
            if not isinstance(value, Tensor) or not value.is_floating_point():
                raise WeightsError(f"{source}: {key!r} is not a floating-point tensor")
        assert isinstance(weight, Tensor) and isinstance(bias, Tensor)  # for the type checker
        shape = tuple(weight.shape)
        if len(shape) != 4 or shape[2:] != (3, 3):
            raise WeightsError(f"{source}: {w_key!r} ({layer}) has shape {list(shape)}; "
                               "expected a 3x3 convolution [out, in, 3, 3]")
        if shape[1] != in_channels:
            what = "3 (RGB)" if layer == "conv1_1" else f"{in_channels} (the previous layer's)"
            raise WeightsError(f"{source}: {w_key!r} ({layer}) takes {shape[1]} input channels; "
                               f"expected {what}")
        if tuple(bias.shape) != (shape[0],):
            raise WeightsError(f"{source}: {b_key!r} ({layer}) has shape {list(bias.shape)}; "
                               f"expected [{shape[0]}]")
        widths[layer] = in_channels = shape[0]
    return widths


class VGGFeatures(nn.Module):
    """Frozen VGG-19 feature extractor, truncated right after the deepest requested layer.

    Args:
        state_dict: torchvision-layout VGG-19 weights (`features.N.weight/bias`; other keys
            such as `classifier.*` are ignored). Widths are inferred from the tensors.
        layers: layer names to return, e.g. `("relu4_2", "relu1_1")`.
        pooling: 'max' (torchvision's) or 'avg' (Gatys et al. found it gives smoother results).

    `forward(image)`: image (B, 3, H, W) float in [0, 1] -> {name: (B, C_l, H_l, W_l)}.
    """

    def __init__(self, state_dict: Mapping[str, Tensor], layers: Iterable[str],
                 pooling: str = "max") -> None:
        super().__init__()
        requested = tuple(dict.fromkeys(layers))  # keep order, drop duplicates
        if not requested:
            raise ConfigError("no VGG-19 layers requested; name at least one (e.g. relu4_2)")
        for name in requested:
            if name not in LAYER_INDEX:
                raise ConfigError(f"unknown VGG-19 layer {name!r} "
                                  "(use names like relu4_2, conv3_1, pool2)")
        if pooling not in ("max", "avg"):
            raise ConfigError(f"model.pooling: must be max or avg, got {pooling!r}")
        widths = check_vgg19_state_dict(state_dict, "VGG-19 state dict")
        self.layers: tuple[str, ...] = requested
        self.pooling = pooling
        self.deepest: str = max(requested, key=LAYER_INDEX.__getitem__)
        self.widths = widths
        self.net = self._build(state_dict, widths)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def _build(self, state_dict: Mapping[str, Tensor], widths: Mapping[str, int]) -> nn.Sequential:
        modules: OrderedDict[str, nn.Module] = OrderedDict()
        in_channels = 3
        for name in VGG19_LAYERS[: LAYER_INDEX[self.deepest] + 1]:
            if name.startswith("conv"):
                conv = nn.Conv2d(in_channels, widths[name], kernel_size=3, padding=1)
                with torch.no_grad():
                    conv.weight.copy_(state_dict[state_dict_key(name, "weight")].float())
                    conv.bias.copy_(state_dict[state_dict_key(name, "bias")].float())
                modules[name] = conv
                in_channels = widths[name]
            elif name.startswith("relu"):
                # In place saves memory at large sizes, but would overwrite the conv output
                # when that pre-activation is itself requested.
                conv_name = "conv" + name[4:]
                modules[name] = nn.ReLU(inplace=conv_name not in self.layers)
            elif self.pooling == "max":
                modules[name] = nn.MaxPool2d(kernel_size=2, stride=2)
            else:
                modules[name] = nn.AvgPool2d(kernel_size=2, stride=2)
        return nn.Sequential(modules)

    def train(self, mode: bool = True) -> VGGFeatures:
        """Stay in eval mode: the extractor is frozen (no dropout/batch norm, but be explicit)."""
        return super().train(False)

    @property
    def min_side(self) -> int:
        """Smallest input side (pixels) that still leaves the deepest layer at least 1x1."""
        pools = block_of(self.deepest) - (0 if self.deepest.startswith("pool") else 1)
        return 2**pools

    def channels(self, layer: str) -> int:
        """Number of channels of a requested layer's output."""
        conv = "conv" + layer[4:] if layer.startswith("relu") else layer
        if layer.startswith("pool"):
            conv = [c for c in CONV_LAYERS if block_of(c) == block_of(layer)][-1]
        return self.widths[conv]

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        """image (B, 3, H, W) float in [0, 1] -> {layer name: activation}."""
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"expected an image batch (B, 3, H, W), got {tuple(image.shape)}")
        x = (image - self.mean.to(image.dtype)) / self.std.to(image.dtype)
        wanted = set(self.layers)
        out: dict[str, Tensor] = {}
        for name, module in self.net.named_children():
            x = module(x)
            if name in wanted:
                out[name] = x
        return out
