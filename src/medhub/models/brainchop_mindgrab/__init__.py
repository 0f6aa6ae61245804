"""brainchop-mindgrab: brainchop's MeshNet mindgrab (brain mask) as a medhub model."""
