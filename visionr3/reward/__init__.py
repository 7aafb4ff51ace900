"""Rewards: rule scores (and, with the rewards issue, judges, shaping and self-reward)."""
