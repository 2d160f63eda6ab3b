"""Dispatch a composed config to its command (`cfg.command`). Imported only inside a run, so
torch and Lightning load only when a command really runs."""

from __future__ import annotations

from omegaconf import DictConfig


def run_command(cfg: DictConfig):
    if cfg.command == "train":
        from modlab.cli.train import train

        return train(cfg)
    if cfg.command == "eval":
        from modlab.cli.evaluate import evaluate

        return evaluate(cfg)
    if cfg.command == "generate":
        from modlab.cli.generate import generate

        return generate(cfg)
    if cfg.command == "analyze":
        from modlab.cli.analyze import analyze

        return analyze(cfg)
    if cfg.command == "compare":
        from modlab.cli.compare import compare

        return compare(cfg)
    raise ValueError(f"no command '{cfg.command}'")
