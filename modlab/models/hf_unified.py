"""Hugging Face unified (text + image) models behind modlab's unified interface.

`HFUnifiedModel` holds a transformers unified model loaded from a local `save_pretrained`
directory (model + processor), its frozen VQ image tokenizer (modlab.models.hf_image_codec) and
its text tokenizer, and gives it the interface of modlab's own unified models
(modlab.models.unified_model): rows in the model's own format, per-task losses, greedy MMU answers,
image sampling. Token routing (MoD / UniMoD task routers) wraps its language decoder layers with
modlab.routing.hf_routed_layer; each forward tells the routed layers each row's task, the valid
tokens and the tokens that are not routed (`route_tokens`: which kinds of token the routers decide
for, e.g. image tokens only).

A row is a dict of 1-D tensors (as modlab.data.rows), plus `kind`: what each token is
(TOKEN_KINDS: text, caption, question, answer, image, special), so that which tokens may be routed
is a setting. Subclasses say how the family lays its rows out and draws its images; Emu3 is here.

Emu3 (transformers' Emu3ForConditionalGeneration; rows as Emu3Processor lays them out):
    image   <|image start|> "{h}*{w}" <|image token|> (w codes + <|extra_200|>) x h <|extra_201|> <|image end|>
    MMU     <bos> image question " " answer <eos>        loss on the answer and <eos>
    T2I     <bos> caption image <eos>                     next-token loss on the image span
    LM      <bos> text                                    next-token loss
The image codes are mapped to the vocabulary by the model's own `vocabulary_map` (what
Emu3Model.get_image_tokens does to a processed image), so a pre-tokenized row is exactly the
sequence the model embeds for the processor's input. Images are generated autoregressively, one
code per step with the KV cache (routed layers by their causal decision, the compact cache), with
each image row's end-of-line token forced as Emu3's own generation forces it; classifier-free
guidance runs the uncaptioned rows in the same batch (2B rows), captions made invisible as in
training (caption dropout).
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from modlab.data.tokens import IGNORE_INDEX, TASK_ID, TASKS
from modlab.errors import CheckpointError, ConfigError
from modlab.models.config import TOKEN_KINDS
from modlab.models.hf_families import decoder_layers, hf_family, text_config
from modlab.routing.install import threshold_routing

KIND_ID = {k: i for i, k in enumerate(TOKEN_KINDS)}
UNIFIED_MODEL_TYPES = ("emu3",)  # the families this module loads (Chameleon, Janus: to come)
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


def _row(ids, labels, kinds, cond, task: str, digit: int = -1) -> dict:
    kind = torch.tensor([KIND_ID[k] for k in kinds], dtype=torch.long)
    return {
        "ids": torch.tensor(ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "kind": kind,
        "is_image": kind == KIND_ID["image"],
        "cond": torch.tensor(cond, dtype=torch.bool),
        "task": torch.tensor(TASK_ID[task]),
        "digit": torch.tensor(digit),
    }


def left_pad(rows: list[dict], pad_id: int) -> dict:
    """Prompt rows padded on the left (so every row ends where generation starts), with `valid`."""
    n = max(len(r["ids"]) for r in rows)
    out: dict = {}
    for key in ("ids", "kind", "cond", "is_image"):
        fill = pad_id if key == "ids" else 0
        out[key] = torch.stack([F.pad(r[key], (n - len(r[key]), 0), value=fill) for r in rows])
    out["valid"] = torch.stack(
        [F.pad(torch.ones(len(r["ids"]), dtype=torch.bool), (n - len(r["ids"]), 0)) for r in rows]
    )
    out["task"] = torch.stack([r["task"] for r in rows])
    out["digit"] = torch.stack([r["digit"] for r in rows])
    return out


class HFUnifiedModel(nn.Module):
    """A transformers unified model with its processor and VQ codec (see the module docstring)."""

    def __init__(self, hf: nn.Module, processor, codec, path: str, route_tokens: tuple[str, ...] = ("image",)):
        super().__init__()
        self.hf, self.processor, self.codec, self.path = hf, processor, codec, path
        self.tokenizer = processor.tokenizer
        self.family = hf_family(hf.config)
        unknown = set(route_tokens) - set(TOKEN_KINDS)
        if unknown or not route_tokens:
            raise ConfigError(
                f"model.route_tokens {list(route_tokens)}: give kinds of token among {', '.join(TOKEN_KINDS)}"
            )
        self.route_tokens = tuple(route_tokens)
        self.routing = None  # the HFRouting installed into hf (modlab.routing.hf_routed_layer)
        self.skip = None  # MindSkip gates on the decoder's attention (modlab.mindskip.gate), Router-Tuning
        self._routed_kinds = torch.tensor([k in self.route_tokens for k in TOKEN_KINDS])

    # ---- sizes -------------------------------------------------------------------------------

    @property
    def config(self):
        return text_config(self.hf.config)

    @property
    def model_type(self) -> str:
        """The unified model it is (model.arch=hf_<model_type>): transformers' model_type, unless the
        family says otherwise (Show-o is a Phi model: "showo")."""
        return self.family.model_type

    @property
    def n_layer(self) -> int:
        return self.config.num_hidden_layers

    def decoder_layers(self) -> nn.ModuleList:
        return decoder_layers(self.hf, self.family)

    # what MindSkip (modlab.mindskip.gate) wraps: each decoder layer's attention module
    attention_returns_tuple = True  # transformers attention returns (output, weights)
    always_runs = frozenset({0})  # DynamicCache reads the sequence length from layer 0's entries

    @property
    def d_model(self) -> int:
        return self.config.hidden_size

    def attention_slots(self) -> list[tuple[nn.Module, str]]:
        return [(getattr(layer, "block", layer), self.family.attention) for layer in self.decoder_layers()]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def text_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode_text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # ---- forward -------------------------------------------------------------------------------

    def real_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Which tokens of rows are real ones (run by the model, routable); a family whose rows
        hold padding of their own (Show-o's [PAD] in the T2I text field) says otherwise."""
        return torch.ones_like(ids, dtype=torch.bool)

    def not_routed(self, kind: torch.Tensor) -> torch.Tensor:
        """(B, T) tokens whose kind is not routed: they run every layer."""
        return ~self._routed_kinds.to(kind.device)[kind]

    def routing_inputs(self, task, valid, kind, reuse: bool = False):
        """Around a forward: what routed layers (each row's task, valid and not-routed tokens) or
        MindSkip gates (valid tokens; `reuse`: the decisions of the prefill, while decoding) need."""
        if self.skip is not None:
            return self.skip.context(valid=valid, reuse=reuse)
        if self.routing is None:
            return nullcontext()
        return self.routing.inputs(task=task, valid=valid, always=self.not_routed(kind))

    def forward(self, ids, is_image, valid, task=None, kind=None) -> torch.Tensor:
        """Logits (B, T, vocab); `kind` (B, T) token kinds (needed by routed layers)."""
        if task is None:
            task = torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)
        if kind is None:
            kind = torch.where(is_image, KIND_ID["image"], KIND_ID["text"])
        with self.routing_inputs(task, valid, kind):
            return self.hf(input_ids=ids, attention_mask=valid.long(), use_cache=False).logits

    def task_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """Mean cross-entropy over the labelled tokens of each task present in the batch."""
        logits = self(batch["ids"], batch["is_image"], batch["valid"], batch["task"], batch["kind"])
        ce = F.cross_entropy(
            logits.float().transpose(1, 2), batch["labels"], ignore_index=IGNORE_INDEX, reduction="none"
        )
        has_label = batch["labels"] != IGNORE_INDEX
        out = {}
        for name in TASKS:
            sel = has_label & (batch["task"] == TASK_ID[name])[:, None]
            if sel.any():
                out[name] = ce[sel].mean()
        if self.skip is not None:  # the mean gate of this forward (Router-Tuning's capacity)
            out["mindskip_capacity"] = self.skip.capacity().to(ce.device)
        return out

    def training_batch(self, batch: dict, cond_dropout: float = 0.0, generator: torch.Generator | None = None) -> dict:
        """Captions of a random `cond_dropout` share of T2I rows made invisible (classifier-free
        guidance learns the unconditional distribution); labels are already in the rows."""
        from modlab.models.unified_model import drop_captions

        return {**batch, "valid": drop_captions(batch, cond_dropout, generator)}

    # ---- rows and inference: per family --------------------------------------------------------

    def t2i_row(self, caption: str, codes: torch.Tensor | None, digit: int = -1) -> dict:
        raise NotImplementedError

    def mmu_row(self, codes: torch.Tensor, question: str, answer: str | None, digit: int = -1) -> dict:
        raise NotImplementedError

    def lm_row(self, text: str) -> dict:
        raise NotImplementedError

    def answer(self, prompts: dict, max_new_tokens: int = 16) -> list[str]:
        raise NotImplementedError

    def sample_images(self, prompts, steps=0, guidance=0.0, temperature=1.0, generator=None) -> torch.Tensor:
        raise NotImplementedError


class HFEmu3(HFUnifiedModel):
    """Emu3ForConditionalGeneration (see the module docstring for its rows)."""

    def __init__(self, hf, processor, codec, path, route_tokens=("image",)):
        super().__init__(hf, processor, codec, path, route_tokens)
        vocab = hf.model.vocabulary_mapping
        self.register_buffer("code_to_id", torch.tensor([vocab.img2bpe[c] for c in range(codec.n_codes)]), False)
        tok = self.tokenizer
        self.bos, self.eos, self.pad = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
        ids = tok.convert_tokens_to_ids
        self.boi, self.eoi = ids(tok.boi_token), ids(tok.eoi_token)
        self.wrapper, self.eof, self.eol = ids(tok.image_wrapper_token), ids(tok.eof_token), vocab.eol_token_id
        h, w = codec.grid
        self.size_ids = self.text_ids(f"{h}*{w}")

    # ---- rows ------------------------------------------------------------------------------------

    def image_span(self, codes: torch.Tensor | None) -> tuple[list[int], list[str]]:
        """The image as Emu3's processor lays it out; codes None: placeholders (a prompt's image)."""
        h, w = self.codec.grid
        ids = [self.boi, *self.size_ids, self.wrapper]
        kinds = ["special"] * len(ids)
        grid = self.code_to_id[codes.long()].view(h, w).tolist() if codes is not None else [[self.pad] * w] * h
        for row in grid:
            ids += [*row, self.eol]
            kinds += ["image"] * w + ["special"]
        return ids + [self.eof, self.eoi], kinds + ["special", "special"]

    def t2i_row(self, caption, codes, digit=-1) -> dict:
        text = self.text_ids(caption)
        img, img_kinds = self.image_span(codes)
        ids = [self.bos, *text, *img, self.eos]
        kinds = ["special", *["caption"] * len(text), *img_kinds, "special"]
        start = 1 + len(text) + len(self.size_ids) + 1  # the last special before the first code
        labels = [IGNORE_INDEX] * len(ids)
        for i in range(start, len(ids) - 1):  # the image codes, their end-of-line tokens, the end
            labels[i] = ids[i + 1]
        cond = [k == "caption" for k in kinds]
        return _row(ids, labels, kinds, cond, "t2i", digit)

    def t2i_prompt(self, caption: str, digit: int = -1) -> dict:
        """A T2I row up to the last token before the image's first code."""
        row = self.t2i_row(caption, None, digit)
        n = 1 + len(self.text_ids(caption)) + 1 + len(self.size_ids) + 1
        return {k: (v[:n] if v.dim() else v) for k, v in row.items()}

    def mmu_row(self, codes, question, answer, digit=-1) -> dict:
        img, img_kinds = self.image_span(codes)
        q = self.text_ids(question + " ")
        prefix = [self.bos, *img, *q]
        kinds = ["special", *img_kinds, *["question"] * len(q)]
        ids = list(prefix)
        if answer is not None:
            a = self.text_ids(answer)
            ids += [*a, self.eos]
            kinds += ["answer"] * len(a) + ["special"]
        labels = [IGNORE_INDEX] * len(ids)
        for i in range(len(prefix) - 1, len(ids) - 1):  # next-token loss on the answer and <eos>
            labels[i] = ids[i + 1]
        return _row(ids, labels, kinds, [False] * len(ids), "mmu", digit)

    def lm_row(self, text: str) -> dict:
        ids = [self.bos, *self.text_ids(text)]
        return _row(ids, ids[1:] + [IGNORE_INDEX], ["special"] + ["text"] * (len(ids) - 1), [False] * len(ids), "lm")

    # ---- inference ---------------------------------------------------------------------------------

    def _step(self, ids, positions, mask, task, kind, valid, cache) -> torch.Tensor:
        """Logits of the last column, continuing `cache`."""
        with self.routing_inputs(task, valid, kind, reuse=cache.get_seq_length() > 0):
            out = self.hf(
                input_ids=ids, attention_mask=mask.long(), position_ids=positions, cache=cache, use_cache=True
            )
        return out.logits[:, -1]

    @torch.no_grad()
    def answer(self, prompts: dict, max_new_tokens: int = 16) -> list[str]:
        """Greedy MMU answers with the KV cache; routed layers by their causal decision."""
        from transformers import DynamicCache

        ids, valid, task, kind = prompts["ids"], prompts["valid"], prompts["task"], prompts["kind"]
        positions = (valid.long().cumsum(1) - 1).clamp(min=0)
        B = ids.shape[0]
        cache = DynamicCache(config=self.hf.config)
        out = torch.zeros(B, 0, dtype=torch.long, device=ids.device)
        done = torch.zeros(B, dtype=torch.bool, device=ids.device)
        mask = valid
        with threshold_routing(self):
            logits = self._step(ids, positions, mask, task, kind, valid, cache)
            for _ in range(max_new_tokens):
                nxt = logits.float().argmax(-1)
                out = torch.cat([out, nxt[:, None]], 1)
                done |= nxt == self.eos
                if bool(done.all()):
                    break
                positions = positions[:, -1:] + 1
                mask = torch.cat([mask, torch.ones(B, 1, dtype=torch.bool, device=ids.device)], 1)
                text_kind = torch.full((B, 1), KIND_ID["answer"], device=ids.device)
                logits = self._step(nxt[:, None], positions, mask, task, text_kind, mask[:, -1:], cache)
        answers = []
        for row in out.tolist():
            answers.append(self.decode_text(row[: row.index(self.eos)] if self.eos in row else row))
        return answers

    @torch.no_grad()
    def sample_images(self, prompts, steps=0, guidance=0.0, temperature=1.0, generator=None) -> torch.Tensor:
        """Image codes (B, h * w) for left-padded T2I prompts (t2i_prompt rows), drawn in raster
        order with the KV cache; `steps` is ignored (one step per code)."""

        def draw(scores: torch.Tensor) -> torch.Tensor:
            probs = F.softmax(scores / max(temperature, 1e-6), dim=-1)
            return torch.multinomial(probs, 1, generator=generator)[:, 0]

        return self.draw_images(prompts, draw, guidance)[0]

    @torch.no_grad()
    def draw_images(self, prompts, draw, guidance: float = 0.0):
        """(codes (B, h * w), the DynamicCache that produced them): `draw` turns each step's
        guided logits over the image codes (B, n_codes) into codes (B,). With guidance the cache
        holds the prompts' rows, then the same rows without their captions (2B rows, one batch)."""
        from transformers import DynamicCache

        ids, valid, kind = prompts["ids"], prompts["valid"], prompts["kind"]
        B = ids.shape[0]
        if guidance > 0:  # the same prompts without their captions, as one batch of 2B rows
            ids, kind = ids.repeat(2, 1), kind.repeat(2, 1)
            valid = torch.cat([valid, valid & ~prompts["cond"]])
        rows = ids.shape[0]
        task = torch.full((rows,), TASK_ID["t2i"], device=ids.device)
        # the uncaptioned rows keep the captioned rows' positions (as in training: invisible, not removed)
        positions = (prompts["valid"].long().cumsum(1) - 1).clamp(min=0).repeat(rows // B, 1)
        cache = DynamicCache(config=self.hf.config)
        h, w = self.codec.grid
        codes = torch.zeros(B, h * w, dtype=torch.long, device=ids.device)
        code_ids = self.code_to_id.to(ids.device)
        mask = valid
        one = torch.ones(rows, 1, dtype=torch.bool, device=ids.device)
        with threshold_routing(self):
            logits = self._step(ids, positions, mask, task, kind, valid, cache)
            for r in range(h):
                for c in range(w + 1):
                    if c < w:
                        scores = logits.float()[:, code_ids]
                        if guidance > 0:
                            scores = (1 + guidance) * scores[:B] - guidance * scores[B:]
                        drawn = draw(scores)
                        codes[:, r * w + c] = drawn
                        nxt, nxt_kind = code_ids[drawn].repeat(rows // B), KIND_ID["image"]
                    else:  # the end of an image row is forced, as Emu3's generation forces it
                        nxt, nxt_kind = torch.full((rows,), self.eol, device=ids.device), KIND_ID["special"]
                    if r == h - 1 and c == w:
                        break
                    positions = positions[:, -1:] + 1
                    mask = torch.cat([mask, one], 1)
                    k = torch.full((rows, 1), nxt_kind, device=ids.device)
                    logits = self._step(nxt[:, None], positions, mask, task, k, one, cache)
        return codes, cache


FAMILY_CLASSES = {"emu3": HFEmu3}


def load_hf_unified(path: str, resolution: int = 0, route_tokens=("image",), dtype: str = "float32") -> HFUnifiedModel:
    """A unified model (in eval mode) from a local `save_pretrained` directory with its processor;
    every way the directory can be wrong is a one-line ConfigError / CheckpointError.
    `resolution` 0: the processor's own image size."""
    from modlab.models.hf_causal_lm import TORCH_DTYPES, resolve_dtype
    from modlab.models.hf_image_codec import codec_for

    p = Path(path)
    if not (p / "config.json").is_file():
        raise ConfigError(f"model.path '{path}' is not a Hugging Face model directory (no config.json)")
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor
    from transformers.utils import logging as hf_logging

    try:
        config = AutoConfig.from_pretrained(p)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(
            f"model.path '{path}': config.json is not a transformers config ({type(e).__name__})"
        ) from None
    if config.model_type == "phi":  # Show-o on Phi: a directory of its own layout (modlab.models.hf_showo_unified)
        from modlab.models.hf_showo_unified import load_hf_showo

        return load_hf_showo(p, config, resolution, tuple(route_tokens), dtype)
    if config.model_type not in FAMILY_CLASSES:
        raise ConfigError(
            f"model.path '{path}' holds a '{config.model_type}' model, not a unified model this family loads "
            f"({', '.join(FAMILY_CLASSES)})"
        )
    if not any((p / f).is_file() for f in PROCESSOR_FILES):
        raise ConfigError(f"model.path '{path}' has no processor (processor_config.json): save the processor there too")
    hf_logging.disable_progress_bar()
    try:
        processor = AutoProcessor.from_pretrained(p)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"model.path '{path}': its processor could not be loaded ({type(e).__name__})") from None
    try:
        hf = AutoModelForImageTextToText.from_pretrained(
            p, dtype=TORCH_DTYPES[resolve_dtype(dtype, None)], attn_implementation="sdpa"
        )
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise CheckpointError(f"model.path '{path}': the weights could not be loaded ({type(e).__name__})") from None
    resolution = resolution or processor_resolution(processor)
    codec = codec_for(hf, processor.image_processor, resolution)
    return FAMILY_CLASSES[config.model_type](hf.eval(), processor, codec, str(p.resolve()), tuple(route_tokens))


def processor_resolution(processor) -> int:
    """The square image size the processor resizes to (Emu3: the side of its minimum area)."""
    ip = processor.image_processor
    size = getattr(ip, "size", None) or {}
    if "height" in size:
        return int(size["height"])
    if getattr(ip, "min_pixels", None):
        return int(round(ip.min_pixels**0.5))
    raise ConfigError("the processor does not say its image size: set model.resolution")
