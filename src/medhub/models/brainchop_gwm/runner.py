"""brainchop-gwm runner: MeshNet model5_gw_ae (grey and white matter) with brainchop's own pre- and post-processing.

All the work is shared with the other brainchop models in :mod:`medhub.models.brainchop_common`;
this file names the card, the weights folder and the reported volumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from medhub.models.brainchop_common import BrainchopRunner


class Runner(BrainchopRunner):
    """model5_gw_ae: weights from the card (cache / MEDHUB_WEIGHTS_MIRROR / upstream URL), torch MeshNet."""

    card_path: ClassVar[Path] = Path(__file__).with_name("card.yaml")
    weights_folder: ClassVar[str] = "model5_gw_ae"
    colormap: ClassVar[bool] = False
    volume_values: ClassVar[dict[int, str]] = {1: "white_matter_ml", 2: "gray_matter_ml"}
