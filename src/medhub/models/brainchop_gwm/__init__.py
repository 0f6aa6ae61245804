"""brainchop-gwm: brainchop's MeshNet model5_gw_ae (grey and white matter) as a medhub model."""
