"""brainchop-subcortical: brainchop's MeshNet model18cls (17 brain structures) as a medhub model."""
