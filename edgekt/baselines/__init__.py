"""Baselines edgekt measures itself against (kept apart from the library proper)."""
