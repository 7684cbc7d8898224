"""The trainer's error: training cannot go on, and the message says why."""


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why (and the run is marked failed)."""
