"""ct-fm-astra: the 3D CT I3ResNet-152 encoder of Astra_CTRG (Merlin's architecture) as a medhub embedding model."""
