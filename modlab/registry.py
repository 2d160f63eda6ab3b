"""Model families, registered once (the registry; modlab.families re-exports it).

A family is a kind of model modlab can train, load, evaluate and analyse (Show-o-like, Emu3-like,
the tiny causal LM, a Hugging Face causal LM). `model.arch` names it, and so does every checkpoint
(`hyper_parameters.model.arch`). Everything that differs between families lives behind one
`ModelFamily` object (modlab.families.model_family); commands ask the registry for it instead of testing
the architecture's name.

The registry itself is cheap to import (no torch) and sits on the lowest floor of the imports, so
any module may ask it: `modlab --help`, `modlab analyze` and config validation read the specs;
the implementation is imported only when a command really runs.

Adding a family: one module with a `ModelFamily` subclass, one `register_family(FamilySpec(...))`
entry (below, or from your own code before the command runs), and its `conf/model/<name>.yaml`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from modlab.errors import ConfigError

COMMANDS = ("train", "eval", "generate", "analyze")


def _import(ref: str):
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class UnifiedSpec:
    """The parts of a Hugging Face unified (text + image) family, as torchtitan's ModelSpec names a
    model's. Each part is "module:attribute", imported on first use (`part`), so the registry stays
    cheap to import; nothing outside the registry looks a family up by its name."""

    model: str  # its HFUnifiedModel subclass (modlab.models.hf_unified)
    model_types: tuple[str, ...]  # the transformers config.model_type of the directories it loads
    codec: str  # its image codec class, (VQ model, image processor, resolution) -> ImageCodec (modlab.data)
    layers: str  # where its decoder layers live: its entry of the layer map (modlab.hf_layer_map.HF_FAMILIES)
    tiny: str  # saves a tiny random model directory for tests: (path, n_codes=32, n_layer=4, seed=0) -> path
    experiment: str  # its default experiment (conf/experiment/<name>.yaml): UniMoD on digits
    # reads a directory: (family spec, path, config, resolution, route_tokens, dtype) -> the model
    loader: str = "modlab.models.hf_unified.loader:load_processor_directory"

    def part(self, name: str):
        """The object a part names (`spec.part("model")` is the model class)."""
        return _import(getattr(self, name))


@dataclass(frozen=True)
class FamilySpec:
    """What the CLI and the help need to know about a family without importing it."""

    name: str  # the value of model.arch
    summary: str
    objective: str  # the objective config that trains it (conf/objective/<name>.yaml)
    # its ModelFamily object, or a ModelFamily class built with this spec, or "module:attribute" of either
    implementation: object
    analyses: tuple[str, ...] = ()  # the `modlab analyze` jobs it supports
    routing: tuple[str, ...] = ()  # routing kinds besides dense (mod, unimod)
    mindskip: bool = False  # Router-Tuning (MindSkip routers on attention)
    commands: tuple[str, ...] = ("train", "eval", "analyze")
    requires_path: bool = False  # model.path: the weights live in a local directory
    dtypes: tuple[str, ...] = ("auto",)  # model.dtype values it applies (modlab.models.config.DTYPES)
    # objective.trainable=routers: the kinds of routers it trains alone, the model frozen ("mindskip", "mod")
    router_tuning: tuple[str, ...] = ()
    unified: UnifiedSpec | None = None  # a Hugging Face unified family's parts
    _loaded: dict = field(default_factory=dict, compare=False, repr=False)

    def family(self):
        """The ModelFamily object (imported on first use)."""
        if "impl" not in self._loaded:
            impl = self.implementation
            if isinstance(impl, str):
                impl = _import(impl)
            if isinstance(impl, type):  # one class serving several families (the HF unified ones)
                impl = impl(self)
            self._loaded["impl"] = impl
        return self._loaded["impl"]

    def require(self, command: str, what: str = "") -> None:
        if command not in self.commands:
            supported = [f.name for f in REGISTRY.values() if command in f.commands]
            raise ConfigError(
                f"{what or 'model.arch=' + self.name} is a {self.summary}: `modlab {command}` supports "
                f"{', '.join(supported)}"
            )

    def check_training(self, run) -> None:
        """One-line errors for settings this family cannot apply (never silently dropped)."""
        self.require("train")
        if run.objective.name != self.objective:
            raise ConfigError(
                f"model.arch={self.name} ({self.summary}) trains with objective={self.objective}, "
                f"not objective={run.objective.name}"
            )
        if run.routing.kind != "dense" and run.routing.kind not in self.routing:
            kinds = ", ".join(self.routing) or "none"
            raise ConfigError(
                f"routing={run.routing.kind} does not apply to model.arch={self.name} ({self.summary}); "
                f"its routing kinds: {kinds}" + ("; it skips attention with mindskip=..." if self.mindskip else "")
            )
        if run.mindskip.enabled and not self.mindskip:
            raise ConfigError(f"mindskip does not apply to model.arch={self.name} ({self.summary})")
        if run.mindskip.enabled and run.routing.kind != "dense":
            raise ConfigError(
                f"routing={run.routing.kind} and mindskip in one run: choose one (token routing of whole layers, "
                "or MindSkip's attention gates)"
            )
        if run.data.lm_format != "text" and self.objective != "lm":
            raise ConfigError(
                f"data.lm_format={run.data.lm_format} reads text for causal LMs; model.arch={self.name} "
                "reads plain text files (data.lm_format=text)"
            )
        self._check_trainable(run)

    def _check_trainable(self, run) -> None:
        trainable = getattr(run.objective, "trainable", "auto")
        routers = "mindskip" if run.mindskip.enabled else run.routing.kind
        if trainable == "all" and run.mindskip.enabled:
            raise ConfigError(
                "objective.trainable=all with mindskip: Router-Tuning trains the routers alone on a frozen model "
                "(objective.trainable=routers or auto)"
            )
        if trainable == "routers":
            if routers == "dense":
                raise ConfigError("objective.trainable=routers, but the run has no routers (routing=mod or mindskip)")
            if routers not in self.router_tuning:
                raise ConfigError(
                    f"objective.trainable=routers does not apply to routing={routers} on model.arch={self.name} "
                    f"({self.summary}); it trains routers alone for: {', '.join(self.router_tuning) or 'nothing'}"
                )


REGISTRY: dict[str, FamilySpec] = {}


def register_family(spec: FamilySpec, replace: bool = False) -> FamilySpec:
    if spec.name in REGISTRY and not replace:
        raise ValueError(f"model family '{spec.name}' is already registered")
    REGISTRY[spec.name] = spec
    return spec


def unregister_family(name: str) -> None:
    REGISTRY.pop(name, None)


def get_family(name: str) -> FamilySpec:
    if name not in REGISTRY:
        raise ConfigError(f"model.arch '{name}' is unknown (model families: {', '.join(REGISTRY)})")
    return REGISTRY[name]


def families_for_analysis(job: str) -> list[str]:
    return [f.name for f in REGISTRY.values() if job in f.analyses]


def unified_family(model_type: str) -> FamilySpec | None:
    """The registered Hugging Face unified family that loads directories of this transformers
    `model_type` (None: none does)."""
    return next((f for f in REGISTRY.values() if f.unified and model_type in f.unified.model_types), None)


def unified_model_types() -> list[str]:
    return [t for f in REGISTRY.values() if f.unified for t in f.unified.model_types]


def hf_unified_spec(name: str, summary: str, unified: UnifiedSpec, **extra) -> FamilySpec:
    """A transformers unified model from a local directory (one HFUnifiedFamily built with this
    spec, modlab.families.hf_unified_family), with MoD / UniMoD routing and Router-Tuning (MindSkip on its
    language model, the unified objective); `unified`: its parts; `extra`: more FamilySpec fields."""
    return FamilySpec(
        name,
        summary,
        "unified",
        "modlab.families.hf_unified_family:HFUnifiedFamily",
        routing=("mod", "unimod"),
        mindskip=True,
        router_tuning=("mindskip",),
        commands=COMMANDS,
        requires_path=True,
        dtypes=("auto", "bfloat16", "float32"),
        unified=unified,
        **extra,
    )


_UNIFIED_ANALYSES = ("attention", "importance", "redundancy")
for _spec in (
    FamilySpec(
        "showo",
        "Show-o-like unified model (omni-attention, masked image tokens)",
        "unified",
        "modlab.families.unified_family:SHOWO",
        analyses=(*_UNIFIED_ANALYSES, "interactions"),
        routing=("mod", "unimod"),
        commands=COMMANDS,
    ),
    FamilySpec(
        "emu3",
        "Emu3-like unified model (causal, autoregressive images)",
        "unified",
        "modlab.families.unified_family:EMU3",
        analyses=_UNIFIED_ANALYSES,
        routing=("mod", "unimod"),
        commands=COMMANDS,
    ),
    FamilySpec(
        "lm",
        "tiny causal LM over bytes",
        "lm",
        "modlab.families.causal_lm_family:CAUSAL_LM",
        analyses=("importance", "redundancy"),
        mindskip=True,
        router_tuning=("mindskip",),
    ),
    FamilySpec(
        "hf",
        "Hugging Face causal LM (a local directory)",
        "lm",
        "modlab.families.hf_causal_lm_family:HF_CAUSAL_LM",
        analyses=("attention", "importance", "redundancy"),
        routing=("mod",),  # token routing inside the decoder layers (UniMoD's task routers need tasks)
        mindskip=True,
        requires_path=True,
        dtypes=("auto", "bfloat16", "float32"),
        router_tuning=("mindskip", "mod"),
    ),
    hf_unified_spec(
        "hf_emu3",
        "Hugging Face Emu3 (a local directory with its processor)",
        UnifiedSpec(
            "modlab.models.hf_unified.hf_emu3:HFEmu3",
            ("emu3",),
            "modlab.data.vq_codec:Emu3Codec",
            "emu3",
            "modlab.models.hf_tiny:save_tiny_emu3",
            "hf_emu3_unimod",
        ),
        analyses=_UNIFIED_ANALYSES,
    ),
    hf_unified_spec(
        "hf_showo",
        "Show-o on transformers' Phi (a local directory with Show-o's vocabulary and image codebook)",
        UnifiedSpec(
            "modlab.models.hf_unified.hf_showo:HFShowo",
            ("phi",),  # Show-o is Phi-1.5 with image codes in its vocabulary
            "modlab.data.showo_codec:PatchCodebookCodec",
            "phi",
            "modlab.models.hf_tiny:save_tiny_showo",
            "hf_showo_unimod",
            loader="modlab.models.hf_unified.hf_showo:load_hf_showo",  # a directory of its own layout
        ),
        analyses=_UNIFIED_ANALYSES,
    ),
    hf_unified_spec(
        "hf_chameleon",
        "Hugging Face Chameleon (a local directory with its processor; no VQ decoder: T2I is drawn, not scored)",
        UnifiedSpec(
            "modlab.models.hf_unified.hf_chameleon:HFChameleon",
            ("chameleon",),
            "modlab.data.vq_codec:ChameleonCodec",
            "chameleon",
            "modlab.models.hf_tiny:save_tiny_chameleon",
            "hf_chameleon_unimod",
        ),
        analyses=_UNIFIED_ANALYSES,
    ),
    hf_unified_spec(
        "hf_janus",
        "Hugging Face Janus (a local directory with its processor)",
        UnifiedSpec(
            "modlab.models.hf_unified.hf_janus:HFJanus",
            ("janus",),
            "modlab.data.vq_codec:JanusCodec",
            "janus",
            "modlab.models.hf_tiny:save_tiny_janus",
            "hf_janus_unimod",
        ),
        analyses=_UNIFIED_ANALYSES,
    ),
):
    register_family(_spec)
