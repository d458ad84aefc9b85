"""rlhfkit: compare RLHF algorithms (PPO, RLOO) on your own models, data and hardware."""

__version__ = "0.1.0"
