"""Network architectures medhub builds itself (in torch) from a model's own description files.

Why here and not in a runner: an architecture such as MeshNet serves several models (the three
brainchop models share it), and keeping it apart from any runner lets it be tested alone.
Importing this package does not import torch; :mod:`medhub.models.nets.meshnet` does.
"""
