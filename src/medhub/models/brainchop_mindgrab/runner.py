"""brainchop-mindgrab runner: MeshNet mindgrab (brain mask) with brainchop's own pre- and post-processing.

All the work is shared with the other brainchop models in :mod:`medhub.models.brainchop_common`;
this file names the card, the weights folder and the reported volumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from medhub.models.brainchop_common import BrainchopRunner


class Runner(BrainchopRunner):
    """mindgrab: weights from the card (cache / MEDHUB_WEIGHTS_MIRROR / upstream URL), torch MeshNet."""

    card_path: ClassVar[Path] = Path(__file__).with_name("card.yaml")
    weights_folder: ClassVar[str] = "mindgrab"
    colormap: ClassVar[bool] = False
    volume_values: ClassVar[dict[int, str]] = {1: "brain_volume_ml"}
