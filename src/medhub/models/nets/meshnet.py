"""MeshNet (Fedorov et al., 2017) in torch, built from a brainchop ``model.json`` and its weights file.

MeshNet is a stack of dilated 3x3x3 convolutions, each followed by an optional per-channel
GroupNorm and an activation, and a final 1x1x1 convolution to the class logits. brainchop
describes a model by ``model.json`` (the layer list) and ships the weights as ``model.pth``,
which is a safetensors file for some models and a torch state dict for others.

The network is built the way brainchop 0.2.5 (``brainchop/tiny_meshnet.py``) interprets the
same files, because the point is to reproduce its results:

* ``in_channels`` / ``out_channels`` of ``-1`` are placeholders; the channel counts then come
  from the weights (brainchop's defaults, 1 input, 15 channels, 2 classes, are what the
  weights of such models hold, and reading them from the weights also covers other sizes).
* every hidden layer has the first layer's channel count; ``bias`` is per layer, defaulting
  to the top-level ``bias`` (False when absent); ``bnorm`` adds ``GroupNorm(C, C)`` (one
  group per channel, ``affine`` from the top-level flag); the activation is ELU if ``elu``,
  else GELU (tanh approximation, tinygrad's default) if ``gelu``, else ReLU; dropout is off
  at inference.
* a safetensors file is loaded by name (its keys are ``model.<index>.weight`` in the layer
  list, as here); a torch state dict is loaded by position, pairing the file's tensors with
  the network's parameters in order. Tensors left over at the end are not used: mindgrab's
  file carries a bias for the last convolution that its ``model.json`` does not declare, and
  brainchop drops it the same way (:attr:`MeshNet.unused_weights` lists them).

The last convolution and the argmax run slab by slab along the first spatial axis
(:meth:`MeshNet.segment`): a 1x1x1 convolution is pointwise, so this is exact and avoids
holding ``classes x 256^3`` logits (1.2 GB for 18 classes) in memory at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medhub.errors import MedhubError

_ACTIVATIONS = ("relu", "elu", "gelu")


@dataclass(frozen=True)
class ConvSpec:
    """One convolution of the layer list (channel counts already resolved)."""

    in_channels: int
    out_channels: int
    kernel_size: int
    padding: int
    stride: int
    dilation: int
    bias: bool


@dataclass(frozen=True)
class MeshNetSpec:
    """The architecture a ``model.json`` describes, with placeholders resolved."""

    convs: tuple[ConvSpec, ...]
    norm: bool
    norm_affine: bool
    activation: str
    header: str = ""

    @property
    def n_classes(self) -> int:
        return self.convs[-1].out_channels

    @property
    def in_channels(self) -> int:
        return self.convs[0].in_channels


def read_config(path: Path) -> dict[str, Any]:
    """The parsed ``model.json``, checked for the keys MeshNet needs; errors name the file."""
    path = Path(path)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MedhubError(f"MeshNet config not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MedhubError(f"{path}: not valid JSON ({exc})") from None
    layers = config.get("layers") if isinstance(config, dict) else None
    if not isinstance(layers, list) or len(layers) < 2:
        raise MedhubError(f"{path}: a MeshNet model.json needs a 'layers' list of at least two convolutions")
    required = ("in_channels", "out_channels", "kernel_size", "padding", "stride", "dilation")
    for i, layer in enumerate(layers):
        missing = [key for key in required if not isinstance(layer, dict) or key not in layer]
        if missing:
            raise MedhubError(f"{path}: layer {i} lacks {', '.join(missing)}")
    return config


def resolve_spec(config: dict[str, Any], *, in_channels: int, channels: int, n_classes: int) -> MeshNetSpec:
    """Resolve the layer list as brainchop does: every hidden layer has ``channels`` in and out.

    ``in_channels``, ``channels`` and ``n_classes`` replace the first layer's input, the hidden
    width and the last layer's output (the caller reads them from the config when they are
    explicit, from the weights when they are placeholders).
    """
    layers = config["layers"]
    default_bias = bool(config.get("bias", False))
    convs = []
    last = len(layers) - 1
    for i, layer in enumerate(layers):
        convs.append(
            ConvSpec(
                in_channels=in_channels if i == 0 else channels,
                out_channels=n_classes if i == last else channels,
                kernel_size=int(layer["kernel_size"]),
                padding=int(layer["padding"]),
                stride=int(layer["stride"]),
                dilation=int(layer["dilation"]),
                bias=bool(layer.get("bias", default_bias)),
            )
        )
    if config.get("elu"):
        activation = "elu"
    elif config.get("gelu"):
        activation = "gelu"
    else:
        activation = "relu"
    return MeshNetSpec(
        convs=tuple(convs),
        norm=bool(config.get("bnorm", False)),
        norm_affine=bool(config.get("affine", False)),
        activation=activation,
        header=str(config.get("header", "")),
    )


def _activation(name: str) -> nn.Module:
    if name == "elu":
        return nn.ELU(inplace=True)
    if name == "gelu":
        return nn.GELU(approximate="tanh")
    if name == "relu":
        return nn.ReLU(inplace=True)
    raise ValueError(f"unknown activation {name!r}; expected one of {_ACTIVATIONS}")


class MeshNet(nn.Module):
    """The network; ``self.model`` has brainchop's layer layout, so safetensors keys load by name."""

    def __init__(self, spec: MeshNetSpec) -> None:
        super().__init__()
        self.spec = spec
        layers: list[nn.Module] = []
        for conv in spec.convs[:-1]:
            layers.append(_conv(conv))
            if spec.norm:
                layers.append(nn.GroupNorm(conv.out_channels, conv.out_channels, affine=spec.norm_affine))
            layers.append(_activation(spec.activation))
        layers.append(_conv(spec.convs[-1]))
        self.model = nn.Sequential(*layers)
        self.unused_weights: list[str] = []

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Everything but the last (1x1x1) convolution: ``(N, 1, D, H, W)`` → ``(N, C, D, H, W)``."""
        for layer in list(self.model)[:-1]:
            x = layer(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(N, classes, D, H, W)``."""
        return self.model[-1](self.features(x))

    def segment(self, x: torch.Tensor, *, slab: int = 32) -> torch.Tensor:
        """Label map ``(N, D, H, W)`` (int64): argmax over classes, first class on ties.

        The last convolution must be pointwise (kernel 1, no padding) to run it slab by slab;
        otherwise the full logits are computed.
        """
        final = self.model[-1]
        features = self.features(x)
        if final.kernel_size != (1, 1, 1) or final.padding != (0, 0, 0) or final.stride != (1, 1, 1):
            return final(features).argmax(dim=1)
        labels = torch.empty((features.shape[0], *features.shape[2:]), dtype=torch.int64, device=features.device)
        for start in range(0, features.shape[2], slab):
            stop = min(start + slab, features.shape[2])
            labels[:, start:stop] = final(features[:, :, start:stop]).argmax(dim=1)
        return labels


def _conv(spec: ConvSpec) -> nn.Conv3d:
    return nn.Conv3d(
        spec.in_channels,
        spec.out_channels,
        kernel_size=spec.kernel_size,
        padding=spec.padding,
        stride=spec.stride,
        dilation=spec.dilation,
        bias=spec.bias,
    )


@dataclass
class WeightsFile:
    """The tensors of a weights file in file order, and which format it was."""

    tensors: dict[str, torch.Tensor]
    format: str  # "safetensors" or "torch"
    path: Path


def read_weights(path: Path) -> WeightsFile:
    """Read safetensors (whatever the file's extension) or a torch state dict (weights only, no code)."""
    path = Path(path)
    if not path.is_file():
        raise MedhubError(f"MeshNet weights not found: {path}")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return WeightsFile(dict(load_file(str(path))), "safetensors", path)
    except (SafetensorError, OSError, ValueError):
        pass
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        raise MedhubError(f"{path}: neither safetensors nor a torch state dict ({type(exc).__name__})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MedhubError(f"{path}: a torch file that is not a state dict of tensors")
    return WeightsFile(dict(state), "torch", path)


def _first_and_last_conv(weights: WeightsFile) -> tuple[torch.Tensor, torch.Tensor]:
    convs = [t for t in weights.tensors.values() if t.ndim == 5]
    if len(convs) < 2:
        raise MedhubError(f"{weights.path}: expected 5-D convolution weights, found {len(convs)}")
    if weights.format == "safetensors":  # keys are model.<index>.weight: order by index, not by text
        ordered = sorted(
            ((k, t) for k, t in weights.tensors.items() if t.ndim == 5), key=lambda kv: _layer_index(kv[0])
        )
        convs = [t for _, t in ordered]
    return convs[0], convs[-1]


def _layer_index(key: str) -> tuple[int, ...]:
    return tuple(int(part) for part in key.split(".") if part.isdigit())


def load_meshnet(config_path: Path, weights_path: Path) -> MeshNet:
    """Build the MeshNet of ``model.json`` and load ``model.pth`` into it (CPU, eval mode).

    Raises a one-line MedhubError naming the file when the two do not fit together.
    """
    config = read_config(config_path)
    weights = read_weights(weights_path)
    first, last = _first_and_last_conv(weights)
    layers = config["layers"]
    placeholders = layers[0]["in_channels"] == -1 or layers[-1]["out_channels"] == -1
    if placeholders:
        in_channels, channels, n_classes = int(first.shape[1]), int(first.shape[0]), int(last.shape[0])
    else:
        in_channels = int(layers[0]["in_channels"])
        channels = int(layers[0]["out_channels"])
        n_classes = int(layers[-1]["out_channels"])
    net = MeshNet(resolve_spec(config, in_channels=in_channels, channels=channels, n_classes=n_classes))
    _load_state(net, weights, Path(config_path))
    net.eval()
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    return net


def _load_state(net: MeshNet, weights: WeightsFile, config_path: Path) -> None:
    expected = net.state_dict()
    where = f"{weights.path} does not fit {config_path}"
    if weights.format == "safetensors" or set(weights.tensors) == set(expected):
        missing = sorted(set(expected) - set(weights.tensors))
        extra = sorted(set(weights.tensors) - set(expected))
        if missing or extra:
            raise MedhubError(f"{where}: missing {missing[:3]}, unexpected {extra[:3]}")
        state = weights.tensors
    else:  # positional, as brainchop pairs a torch state dict with its own parameters
        names = list(expected)
        items = list(weights.tensors.items())
        if len(items) < len(names):
            raise MedhubError(f"{where}: {len(items)} tensors for {len(names)} parameters")
        state = {name: tensor for name, (_, tensor) in zip(names, items, strict=False)}
        net.unused_weights = [key for key, _ in items[len(names):]]
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise MedhubError(
                f"{where}: {name} has shape {tuple(tensor.shape)}, the network needs {tuple(expected[name].shape)}"
            )
    net.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
