"""The device a model runs on: checked once, before any work, against the name, the card and the machine.

Why here and not in each runner: a ``--device cuda`` on a machine without CUDA used to run on
CPU in silence (or fail after minutes of scanning and loading, with a traceback). A device is
now checked before the input is even scanned, in three steps, each ending in one line:

1. the name: ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (``tpu`` is refused);
2. the card: the model's ``devices`` list must name it (ct-body runs on ``cpu`` only);
3. the machine: CUDA and MPS must really be usable here, as torch sees them (torch is imported
   only for those two; ``cpu`` needs nothing).
"""

from __future__ import annotations

import re
from typing import Any

from medhub.errors import MedhubError

KNOWN_DEVICES = ("cpu", "cuda", "mps")
_DEVICE = re.compile(r"^(cpu|cuda|mps)(?::(\d+))?$")


def parse_device(device: str) -> tuple[str, int | None]:
    """``cuda:1`` → ``("cuda", 1)``; an unknown name is a one-line error listing the known ones."""
    text = device.strip().lower()
    match = _DEVICE.match(text)
    if match is None or (match.group(2) is not None and match.group(1) != "cuda"):
        raise MedhubError(f"unknown device '{device}': use cpu, cuda (or cuda:N) or mps")
    index = match.group(2)
    return match.group(1), None if index is None else int(index)


def check_machine_device(device: str) -> str:
    """The device, normalised (``CUDA`` → ``cuda``), if this machine can run on it; else a one-line error."""
    kind, index = parse_device(device)
    if kind == "cpu":
        return "cpu"
    torch = _torch(device)
    if kind == "cuda":
        count = int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
        if count == 0:
            raise MedhubError(f"--device {device}: this machine has no usable CUDA device (torch {torch.__version__} "
                              "finds none); use --device cpu")
        if index is not None and index >= count:
            raise MedhubError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
        return "cuda" if index is None else f"cuda:{index}"
    if not torch.backends.mps.is_available():
        raise MedhubError(f"--device {device}: Apple's MPS is not available on this machine; use --device cpu")
    return "mps"


def check_card_device(device: str, card: Any) -> str:
    """The device, normalised, if the model's card lists it; else a one-line error naming what it supports."""
    kind, _ = parse_device(device)
    if kind not in card.devices:
        supported = ", ".join(card.devices) + (" only" if len(card.devices) == 1 else "")
        raise MedhubError(f"model {card.id} does not run on {kind}: its card lists {supported}")
    return device.strip().lower()


def check_device(device: str, card: Any) -> str:
    """Name, card, then machine: the device a run of this model will use, or a one-line error (exit code 2)."""
    check_card_device(device, card)
    return check_machine_device(device)


def _torch(device: str) -> Any:
    """torch, imported only when a GPU device is asked for (it costs seconds)."""
    try:
        import torch
    except ImportError:
        raise MedhubError(f"--device {device} needs torch, which is not installed; use --device cpu") from None
    return torch
