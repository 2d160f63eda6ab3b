"""MindSkip / Router-Tuning: gated attention sublayers, router-only tuning, real skipping at
inference, and the static LLM-Drop baseline (docs/mindskip.md)."""
