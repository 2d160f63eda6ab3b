"""The non-finite guard: a NaN / inf training loss or router logit stops the run with one line
naming the step (and the router's layer), before the optimiser applies it, so the checkpoints on
disk are the last good ones; with `trainer.skip_nonfinite=true` that step is skipped instead (the
training step returns None: no backward, no optimiser step; the LR schedule does not advance either) and
counted (`train/skipped_steps`).

Router logits are watched by forward hooks on the routers (MoD / UniMoD `TaskRouter`, MindSkip's
`MindSkipRouter`): each records whether its output was finite, as a tensor (no device sync); the
step reads them back once, together with the loss.
"""

from __future__ import annotations

import logging
import math
import os
import re

import torch
from lightning.pytorch.callbacks import Callback

from modlab.errors import ModlabError
from modlab.mindskip.gate import MindSkipRouter
from modlab.routing.router import TaskRouter

log = logging.getLogger("modlab")

# Test hook (tests/recipes/test_reliability.py): "loss@3,router@5" makes the training loss of
# global step 3, and the first router logits of step 5, NaN.
INJECT_ENV = "MODLAB_TEST_INJECT_NAN"


class NonFiniteError(ModlabError):
    """Training produced a NaN / inf loss or router logit."""


def router_types() -> tuple[type, ...]:
    return (TaskRouter, MindSkipRouter)


def _layer_of(name: str) -> str:
    m = re.search(r"(?:blocks|layers|routers)\.(\d+)", name)
    return f"layer {m.group(1)} ({name})" if m else name


def _kind(t: torch.Tensor) -> str:
    return "NaN" if bool(torch.isnan(t).any()) else "inf"


class NonFiniteGuard(Callback):
    def __init__(self, skip: bool = False):
        self.skip, self.skipped = skip, 0
        self._skipping = False  # the current step was skipped: its LR scheduler step is too
        self._watching, self._routers, self._hooks = False, [], []
        self._inject = {}
        for part in filter(None, os.environ.get(INJECT_ENV, "").split(",")):
            what, _, step = part.partition("@")
            self._inject.setdefault(what.strip(), set()).add(int(step))

    @property
    def state_key(self) -> str:
        return "NonFiniteGuard"

    def state_dict(self) -> dict:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped = int(state_dict.get("skipped", 0))

    def on_fit_start(self, trainer, pl_module) -> None:
        self.trainer = trainer
        for name, module in pl_module.named_modules():
            if isinstance(module, router_types()):
                self._hooks.append(module.register_forward_hook(self._router_hook(name)))
        original = pl_module.training_step

        def training_step(*args, **kwargs):
            return self._guarded(original, *args, **kwargs)

        pl_module.training_step = training_step
        self._module, self._original = pl_module, original
        # Lightning steps a step-interval LR scheduler after every batch, skipped or not (its
        # lr_scheduler_step hook): a skipped step must leave the schedule where it was
        original_scheduler_step = pl_module.lr_scheduler_step

        def lr_scheduler_step(*args, **kwargs):
            if self._skipping:
                return None
            return original_scheduler_step(*args, **kwargs)

        pl_module.lr_scheduler_step = lr_scheduler_step
        self._original_scheduler_step = original_scheduler_step

    def teardown(self, trainer, pl_module, stage: str) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        if getattr(self, "_module", None) is not None:
            self._module.training_step = self._original
            self._module.lr_scheduler_step = self._original_scheduler_step
            self._module = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        """A finite loss can still take a step that overflows the weights (a huge learning rate):
        such weights are never written over the last good checkpoint."""
        for name, t in checkpoint.get("state_dict", {}).items():
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise NonFiniteError(
                    f"training stopped at step {trainer.global_step}: the weights became {_kind(t)} "
                    f"(e.g. {name}); the checkpoints on disk are from before it"
                )

    def _router_hook(self, name: str):
        def hook(module, inputs, output):
            if not self._watching or not isinstance(output, torch.Tensor):
                return None
            step = self.trainer.global_step
            if not self._routers and step in self._inject.get("router", ()):
                output = output + math.nan
            self._routers.append((name, output.detach()))
            return output

        return hook

    def _guarded(self, training_step, *args, **kwargs):
        self._watching, self._routers, self._skipping = True, [], False
        try:
            out = training_step(*args, **kwargs)
        finally:
            self._watching = False
        loss = out["loss"] if isinstance(out, dict) else out
        if not isinstance(loss, torch.Tensor):
            return out
        step = self.trainer.global_step
        if step in self._inject.get("loss", ()):
            loss = loss + math.nan
            out = {**out, "loss": loss} if isinstance(out, dict) else loss
        finite = [torch.isfinite(loss).all()] + [torch.isfinite(t).all() for _, t in self._routers]
        if bool(torch.stack(finite).all()):
            return out
        bad = [(n, t) for n, t in self._routers if not bool(torch.isfinite(t).all())]
        what = (
            f"a {_kind(bad[0][1])} router logit in {_layer_of(bad[0][0])}"
            if bad
            else f"a {_kind(loss.detach())} training loss"
        )
        if self.skip:
            self.skipped += 1
            self._skipping = True
            log.warning("step %d: %s; skipped (trainer.skip_nonfinite=true)", step, what)
            return None
        raise NonFiniteError(
            f"training stopped at step {step}: {what}; the checkpoints on disk are from before it "
            "(trainer.skip_nonfinite=true skips such steps)"
        )
