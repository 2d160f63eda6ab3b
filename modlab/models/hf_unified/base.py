"""Hugging Face unified (text + image) models behind modlab's unified interface.

`HFUnifiedModel` holds a transformers unified model loaded from a local `save_pretrained`
directory (model + processor), its frozen VQ image tokenizer (modlab.data.vq_codec) and
its text tokenizer, and gives it the interface of modlab's own unified models
(modlab.models.unified_model): rows in the model's own format, per-task losses, greedy MMU answers,
image sampling. Token routing (MoD / UniMoD task routers) wraps its language decoder layers with
modlab.routing.hf_routed_layer; each forward tells the routed layers each row's task, the valid
tokens and the tokens that are not routed (`route_tokens`: which kinds of token the routers decide
for, e.g. image tokens only).

A row is a dict of 1-D tensors (as modlab.data.rows), plus `kind`: what each token is
(TOKEN_KINDS: text, caption, question, answer, image, special), so that which tokens may be routed
is a setting; a row whose image the model's vision encoder reads (Janus MMU) also carries that
image's `pixels` (3, R, R), and a batch stacks them in row order. Subclasses say how the family
lays its rows out and computes its logits (`_logits`); the losses, greedy answers and image
sampling are shared. Each family is a module of this package (see its __init__).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F

from modlab.data.hf_unified_rows import DigitImages, PromptRows
from modlab.data.rows import left_pad
from modlab.data.tokens import IGNORE_INDEX, TASK_ID
from modlab.errors import ConfigError
from modlab.hf_layer_map import decoder_layers, hf_family, text_config
from modlab.models.config import TOKEN_KINDS
from modlab.models.unified_model import drop_captions, per_task_cross_entropy
from modlab.routing.install import threshold_routing

KIND_ID = {k: i for i, k in enumerate(TOKEN_KINDS)}


def make_row(ids, labels, kinds, cond, task: str, digit: int = -1) -> dict:
    """A row from lists: token ids, labels, kinds (TOKEN_KINDS names), which tokens are the caption."""
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


def vocabulary_code_ids(img2bpe: dict[int, int], n_codes: int) -> torch.Tensor:
    """(n_codes,) the vocabulary token of each VQ code, from the model's own vocabulary mapping
    (Emu3, Chameleon: what get_image_tokens does to a processed image)."""
    missing = [c for c in range(n_codes) if c not in img2bpe]
    if missing:
        raise ConfigError(
            f"the model's vocabulary maps {n_codes - len(missing)} of its VQ model's {n_codes} codes to tokens "
            "(config.vocabulary_map)"
        )
    return torch.tensor([img2bpe[c] for c in range(n_codes)])


def pixels_of(batch: dict) -> dict:
    """The forward's `pixels` keyword for a batch whose rows carry images (Janus MMU), else none
    (families without a vision encoder take no such argument)."""
    return {"pixels": batch["pixels"]} if "pixels" in batch else {}


def t2i_labels(ids: list[int], start: int) -> list[int]:
    """Next-token labels from position `start` (the token before the first image code) to the end."""
    return [IGNORE_INDEX] * start + ids[start + 1 :] + [IGNORE_INDEX]


class HFUnifiedModel(nn.Module):
    """A transformers unified model with its processor and VQ codec (see the module docstring); it
    offers what modlab.models.unified_protocol states."""

    image_vmax = 1.0  # decode_images gives RGB in [0, 1] (the VQ decoder's pixels)

    def __init__(self, hf: nn.Module, processor, codec, path: str, route_tokens: tuple[str, ...] = ("image",)):
        super().__init__()
        self.hf, self.processor, self.codec, self.path = hf, processor, codec, path
        self.tokenizer = tok = processor.tokenizer
        self.bos, self.eos, self.pad = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
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

    def attention_out_norm_slots(self) -> list[tuple[nn.Module, str]] | None:
        """Where a norm follows the attention's output (modlab.hf_layer_map `attn_out_norm`; none
        of the unified families has one): MindSkip gates after it."""
        name = self.family.attn_out_norm
        return [(getattr(layer, "block", layer), name) for layer in self.decoder_layers()] if name else None

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def text_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode_text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # ---- what a family says about itself -----------------------------------------------------
    #   code_to_id (buffer, set by the subclass): the id of image code c in the family's rows
    #   row_end: ids forced after each row of image codes while sampling (Emu3: its end-of-line)
    #   mmu_reads_pixels: MMU rows carry the image's pixels (`pixels`), which the model's vision
    #       encoder reads (Janus), rather than its VQ codes

    row_end: tuple[int, ...] = ()
    mmu_reads_pixels = False
    # image generation decodes token by token with a KV cache (Show-o's MaskGIT does not)
    decodes_with_cache = True

    def extra_forward_flops(self, batch: dict) -> int:
        """Forward FLOPs of `batch` in modules outside the language decoder and its head (counted
        by modlab.routing.hf_flops); none for most families."""
        return 0

    def _logits(self, ids, mask, positions, task, cache, pixels) -> torch.Tensor:
        """Logits (B, T, V) over the family's row vocabulary: the model on these columns, `mask`
        (B, cached + T) its attention mask, `positions` None (0..T-1) or (B, T), `cache` a
        DynamicCache or None, `pixels` the images its vision encoder reads (or None). The routing
        inputs are already set."""
        raise NotImplementedError

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

    def logits(self, ids, valid, task, kind, mask=None, positions=None, cache=None, pixels=None) -> torch.Tensor:
        """Logits (B, T, V) of these columns; `valid` (B, T) their real tokens (what the routers
        may route), `mask` the attention mask over the cache and them (default: `valid`)."""
        decoding = cache is not None and cache.get_seq_length() > 0
        with self.routing_inputs(task, valid, kind, reuse=decoding):
            return self._logits(ids, valid if mask is None else mask, positions, task, cache, pixels)

    def forward(self, ids, is_image, valid, task=None, kind=None, pixels=None) -> torch.Tensor:
        """Logits (B, T, V); `kind` (B, T) token kinds (needed by routed layers)."""
        if task is None:
            task = torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)
        if kind is None:
            kind = torch.where(is_image, KIND_ID["image"], KIND_ID["text"])
        return self.logits(ids, valid, task, kind, pixels=pixels)

    def task_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """Mean cross-entropy over the labelled tokens of each task present in the batch."""
        b = batch
        logits = self(b["ids"], b["is_image"], b["valid"], b["task"], b["kind"], **pixels_of(b))
        out = per_task_cross_entropy(logits, b["labels"], b["task"])
        if self.skip is not None:  # the mean gate of this forward (Router-Tuning's capacity)
            out["mindskip_capacity"] = self.skip.capacity().to(logits.device)
        return out

    def code_ids(self, codes: torch.Tensor) -> list[int]:
        """The row ids of image codes, looked up on the CPU (rows are built in data-loader
        workers, which must not touch a CUDA copy of the `code_to_id` buffer)."""
        table = getattr(self, "_code_ids_cpu", None)
        if table is None or len(table) != len(self.code_to_id):
            table = self._code_ids_cpu = self.code_to_id.detach().cpu()
        return table[codes.long().cpu().view(-1)].tolist()

    def training_batch(self, batch: dict, cond_dropout: float = 0.0, generator: torch.Generator | None = None) -> dict:
        """Captions of a random `cond_dropout` share of T2I rows made invisible (classifier-free
        guidance learns the unconditional distribution); labels are already in the rows."""
        return {**batch, "valid": drop_captions(batch, cond_dropout, generator)}

    # ---- rows: per family ----------------------------------------------------------------------

    def t2i_row(self, caption: str, codes: torch.Tensor | None, digit: int = -1) -> dict:
        raise NotImplementedError

    def mmu_row(self, codes: torch.Tensor, question: str, answer: str | None, digit: int = -1, image=None) -> dict:
        """`image`: the image as uint8 RGB (R, R, 3), for families that read its pixels
        (mmu_reads_pixels); the others see its `codes`."""
        raise NotImplementedError

    def lm_row(self, text: str) -> dict:
        ids = [self.bos, *self.text_ids(text)]
        return make_row(
            ids, ids[1:] + [IGNORE_INDEX], ["special"] + ["text"] * (len(ids) - 1), [False] * len(ids), "lm"
        )

    def t2i_prompt(self, caption: str, digit: int = -1) -> dict:
        """A T2I row up to the last token before the image's first code (what sampling continues)."""
        row = self.t2i_row(caption, None, digit)
        n = int(row["is_image"].nonzero()[0])
        return {k: (v[:n] if v.dim() else v) for k, v in row.items()}

    def t2i_prompts(self, captions: list[str]) -> dict:
        """T2I prompts, left-padded (sampling continues every row at its last column)."""
        return left_pad([self.t2i_prompt(c) for c in captions], self.pad)

    def mmu_prompts(self, codes: torch.Tensor, labels, images) -> dict:
        """MMU prompts, left-padded; families that read pixels see `images` at the codec's resolution."""
        ds = PromptRows(self, "mmu", codes, labels, images=DigitImages(images, self.codec.resolution))
        return left_pad([ds[i] for i in range(len(ds))], self.pad)

    def decode_images(self, codes: torch.Tensor, image_tokenizer=None) -> torch.Tensor | None:
        """RGB images (N, R, R, 3) in [0, 1] at the codec's resolution, by the model's own VQ
        decoder; None without one (Chameleon in transformers)."""
        return self.codec.decode(codes) if self.codec.has_decoder else None

    # ---- inference: the KV cache, routed layers by their causal decision -------------------------

    def _step(self, ids, positions, mask, task, kind, valid, cache, pixels=None) -> torch.Tensor:
        """Logits of the last column, continuing `cache`."""
        return self.logits(ids, valid, task, kind, mask, positions, cache, pixels)[:, -1]

    @torch.no_grad()
    def answer(self, prompts: dict, max_new_tokens: int = 16) -> list[str]:
        """Greedy MMU answers (left-padded mmu_row prompts) with the KV cache; routed layers by
        their causal decision."""
        # transformers is optional (modlab[hf]): imported when a Hugging Face model is used
        from transformers import DynamicCache

        ids, valid, task, kind = prompts["ids"], prompts["valid"], prompts["task"], prompts["kind"]
        positions = (valid.long().cumsum(1) - 1).clamp(min=0)
        B = ids.shape[0]
        cache = DynamicCache(config=self.hf.config)
        out = torch.zeros(B, 0, dtype=torch.long, device=ids.device)
        done = torch.zeros(B, dtype=torch.bool, device=ids.device)
        mask = valid
        with threshold_routing(self):
            logits = self._step(ids, positions, mask, task, kind, valid, cache, prompts.get("pixels"))
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
        order with the KV cache, each image row followed by the family's forced `row_end` tokens;
        `steps` is ignored (one step per code). Classifier-free guidance runs the same prompts
        without their captions in the same batch (2B rows), captions made invisible as in
        training (caption dropout): scores (1 + g) * cond - g * uncond."""

        def draw(scores: torch.Tensor) -> torch.Tensor:
            probs = F.softmax(scores / max(temperature, 1e-6), dim=-1)
            return torch.multinomial(probs, 1, generator=generator)[:, 0]

        return self.draw_images(prompts, draw, guidance)[0]

    @torch.no_grad()
    def draw_images(self, prompts, draw, guidance: float = 0.0):
        """(codes (B, h * w), the DynamicCache that produced them): `draw` turns each step's
        guided logits over the image codes (B, n_codes) into codes (B,). With guidance the cache
        holds the prompts' rows, then the same rows without their captions (2B rows, one batch)."""
        # transformers is optional (modlab[hf]): imported when a Hugging Face model is used
        from transformers import DynamicCache

        ids, valid, kind = prompts["ids"], prompts["valid"], prompts["kind"]
        B = ids.shape[0]
        if guidance > 0:
            ids, kind = ids.repeat(2, 1), kind.repeat(2, 1)
            valid = torch.cat([valid, valid & ~prompts["cond"]])
        rows = ids.shape[0]
        task = torch.full((rows,), TASK_ID["t2i"], device=ids.device)
        # the uncaptioned rows keep the captioned rows' positions (as in training: invisible, not removed)
        positions = (prompts["valid"].long().cumsum(1) - 1).clamp(min=0).repeat(rows // B, 1)
        cache = DynamicCache(config=self.hf.config)
        h, w = self.codec.grid
        schedule = [None] * w + list(self.row_end)  # None: draw a code
        schedule = (schedule * h)[: len(schedule) * h - len(self.row_end)]  # nothing follows the last code
        codes = torch.zeros(B, h * w, dtype=torch.long, device=ids.device)
        code_ids = self.code_to_id.to(ids.device)
        mask = valid
        one = torch.ones(rows, 1, dtype=torch.bool, device=ids.device)
        drawn_codes = 0
        with threshold_routing(self):
            logits = self._step(ids, positions, mask, task, kind, valid, cache)
            for j, forced in enumerate(schedule):
                if forced is None:
                    scores = logits.float()[:, code_ids]
                    if guidance > 0:
                        scores = (1 + guidance) * scores[:B] - guidance * scores[B:]
                    drawn = draw(scores)
                    codes[:, drawn_codes] = drawn
                    drawn_codes += 1
                    nxt, nxt_kind = code_ids[drawn].repeat(rows // B), KIND_ID["image"]
                else:
                    nxt, nxt_kind = torch.full((rows,), forced, device=ids.device), KIND_ID["special"]
                if j == len(schedule) - 1:
                    break
                positions = positions[:, -1:] + 1
                mask = torch.cat([mask, one], 1)
                k = torch.full((rows, 1), nxt_kind, device=ids.device)
                logits = self._step(nxt[:, None], positions, mask, task, k, one, cache)
        return codes, cache


def answer_row(model, prefix, prefix_kinds, question: str, question_end: list[int], answer, digit=-1, **extra) -> dict:
    """An MMU row: `prefix` (the image and what precedes it), the question, `question_end`
    (special ids that end the prompt), then the answer and <eos> (None: a prompt); the loss is
    the next-token loss on the answer and <eos>."""
    q = model.text_ids(question)
    ids = [*prefix, *q, *question_end]
    kinds = [*prefix_kinds, *["question"] * len(q), *["special"] * len(question_end)]
    n_prompt = len(ids)
    if answer is not None:
        a = model.text_ids(answer)
        ids += [*a, model.eos]
        kinds += ["answer"] * len(a) + ["special"]
    labels = [IGNORE_INDEX] * len(ids)
    for i in range(n_prompt - 1, len(ids) - 1):
        labels[i] = ids[i + 1]
    return {**make_row(ids, labels, kinds, [False] * len(ids), "mmu", digit), **extra}
