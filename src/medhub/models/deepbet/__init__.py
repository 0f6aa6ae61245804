"""deepbet brain extraction (Fisch et al., 2024) as a medhub model: card.yaml, runner.py, workflows/."""
