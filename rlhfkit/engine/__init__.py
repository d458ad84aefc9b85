"""rlhfkit's RL engine: shared rollout, scoring, KL and advantage code; algorithms live in plugins."""
