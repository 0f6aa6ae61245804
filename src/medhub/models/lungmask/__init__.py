"""lungmask U-net(R231) (Hofmanninger et al., 2020) as a medhub model: card.yaml, runner.py, workflows/."""
