"""Training: the loop, checkpoints, schedules, regularisers, preflight checks."""
