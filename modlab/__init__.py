"""modlab: dynamic-depth transformers (Mixture-of-Depths, UniMoD, MindSkip / Router-Tuning).

Importing this package is cheap on purpose (no torch): the CLI's help path goes through it.
"""

__version__ = "0.1.0"
