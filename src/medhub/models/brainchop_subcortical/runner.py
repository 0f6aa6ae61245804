"""brainchop-subcortical runner: MeshNet model18cls (17 brain structures) with brainchop's own pre- and post-processing.

All the work is shared with the other brainchop models in :mod:`medhub.models.brainchop_common`;
this file names the card, the weights folder and the reported volumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from medhub.models.brainchop_common import BrainchopRunner


class Runner(BrainchopRunner):
    """model18cls: weights from the card (cache / MEDHUB_WEIGHTS_MIRROR / upstream URL), torch MeshNet."""

    card_path: ClassVar[Path] = Path(__file__).with_name("card.yaml")
    weights_folder: ClassVar[str] = "model18cls"
    colormap: ClassVar[bool] = True
    volume_values: ClassVar[dict[int, str]] = {}
