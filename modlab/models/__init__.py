"""Models: plain PyTorch, configured by plain dataclasses (no Lightning, no Hydra)."""
