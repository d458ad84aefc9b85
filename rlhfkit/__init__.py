"""rlhfkit: compare RLHF algorithms on your own models, data and hardware."""

__version__ = "0.1.0"
