"""Hydra plugin: the grid sweeper with pre-flight validation (see sweeper.preflight)."""
