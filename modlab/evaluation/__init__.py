"""Evaluation helpers that are not models: the reference digit classifier."""
