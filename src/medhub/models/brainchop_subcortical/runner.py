"""brainchop-subcortical runner: MeshNet model18cls (17 brain structures) with brainchop's own pre- and post-processing.

Everything is shared with the other brainchop models (:mod:`medhub.models.brainchop_common`); what
makes this model model18cls (its weights folder, its segments, its volumes in ml) is on its card.
"""

from medhub.models.brainchop_common import BrainchopRunner


class Runner(BrainchopRunner):
    """model18cls: the card's weights (cache / MEDHUB_WEIGHTS_MIRROR / upstream URL), torch MeshNet."""
