"""Training: its configs, the loop, optimizers, schedules, the LR range test, checkpoints, and a run's assembly."""
