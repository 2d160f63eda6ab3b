"""The test metrics of digit scenes, as torchmetrics for the LightningModule to log.

test/mmu_acc, test/mmu_acc/<type>         exact-match answers, overall and per question type
test/t2i_acc, test/t2i_acc/<category>     generated scenes that show what the prompt asked for
test/t2i_acc_tokenized                    the same scorer on real test scenes that show the
                                          prompts, after the image tokenizer's round trip
                                          (the ceiling of test/t2i_acc)
test/t2i_fid                              digits-FID: generated non-blank cells vs the real
                                          test digits, in the reference classifier's features
test/t2i_fid_tokenized                    the same for the cells of those real test scenes
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from torchmetrics import MeanMetric, Metric

from modlab.data.scenes import PROMPT_CATEGORIES, QUESTION_TYPES, Prompt
from modlab.evaluation.fid import FrechetDistance
from modlab.evaluation.scene_scorers import answers_correct, prompts_satisfied, read_cells


class SceneMetrics(nn.Module):
    def __init__(self, real_cell_features: torch.Tensor, grid: int):
        """`real_cell_features`: the reference classifier's features of the real test digits."""
        super().__init__()
        self.grid = grid
        self.mmu = MeanMetric()
        self.mmu_by_type = nn.ModuleDict({t: MeanMetric() for t in QUESTION_TYPES})
        self.t2i = MeanMetric()
        self.t2i_by_category = nn.ModuleDict({c: MeanMetric() for c in PROMPT_CATEGORIES})
        self.t2i_tokenized = MeanMetric()
        self.fid = FrechetDistance(real_cell_features)
        self.fid_tokenized = FrechetDistance(real_cell_features)

    @staticmethod
    def _update_groups(
        total: MeanMetric, groups: nn.ModuleDict, names: Sequence[str], kinds: torch.Tensor, ok: torch.Tensor
    ) -> None:
        ok = ok.float().to(kinds.device)
        total.update(ok)
        for i, name in enumerate(names):
            sel = kinds == i
            if sel.any():
                groups[name].update(ok[sel])

    def update_mmu(self, answers: Sequence[str], expected: Sequence[str], qtypes: torch.Tensor) -> None:
        self._update_groups(self.mmu, self.mmu_by_type, QUESTION_TYPES, qtypes, answers_correct(answers, expected))

    def update_t2i(self, classifier, prompts: Sequence[Prompt], generated: torch.Tensor, real: torch.Tensor) -> None:
        """`generated` / `real` (N, H, W) images: samples for the prompts, and real scenes that
        show them (after the tokenizer's round trip)."""
        categories = torch.tensor([PROMPT_CATEGORIES.index(p.category) for p in prompts], device=generated.device)
        labels, features = read_cells(classifier, generated, self.grid)
        self._update_groups(
            self.t2i, self.t2i_by_category, PROMPT_CATEGORIES, categories, prompts_satisfied(prompts, labels)
        )
        self.fid.update(features)
        labels, features = read_cells(classifier, real, self.grid)
        self.t2i_tokenized.update(prompts_satisfied(prompts, labels).float().to(generated.device))
        self.fid_tokenized.update(features)

    def mmu_metrics(self) -> dict[str, Metric]:
        return {"test/mmu_acc": self.mmu, **{f"test/mmu_acc/{t}": m for t, m in self.mmu_by_type.items()}}

    def t2i_metrics(self) -> dict[str, Metric]:
        return {
            "test/t2i_acc": self.t2i,
            **{f"test/t2i_acc/{c}": m for c, m in self.t2i_by_category.items()},
            "test/t2i_acc_tokenized": self.t2i_tokenized,
            "test/t2i_fid": self.fid,
            "test/t2i_fid_tokenized": self.fid_tokenized,
        }
