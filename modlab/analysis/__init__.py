"""Analyses of trained models (UniMoD's evidence for where and how much to route).

attention     how much attention queries give to text vs image tokens, per layer and task
importance    drop-one-layer losses / metrics, and LLM-Drop's 1 - cos(x, x + F(LN(x)))
redundancy    ARank: the rank of each head's Q K^T per layer and task (and a routing plan from it)
interactions  single-task vs joint training; one shared router with a joint budget vs task routers

Every analysis works on a `Subject` (modlab.analysis.subject): a model's layers plus a forward on
calibration batches, so Show-o-like, Emu3-like and causal LMs plug in the same way (Hugging Face
LMs for LLM-Drop and drop-one-layer importance, which need only each layer's residual branches).
"""
