"""TotalSegmentator, task "total" (Wasserthal et al., 2023) as a medhub model: card.yaml, runner.py, workflows/."""
