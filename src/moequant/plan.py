"""The plan: one row per module of the target model — keep, or quantize(mode, bits, group_size) —
with the rule that decided it. Built from the model's structure and headers alone."""

from __future__ import annotations

import fnmatch
import inspect
import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Callable

import mlx.nn as nn
from mlx.utils import tree_flatten

from .errors import PlanError
from .formats import DTYPES, Mode, Quant, Rounding, divides
from .names import layer_of
from .surgery import expert_stack_types


GATE_QUANT = Quant(Mode.AFFINE, 8, 64)  # --gate-bits 8: what mlx-lm's quant_predicate gives mlp.gate


@dataclass(frozen=True)
class Options:
    quant: Quant | None  # None: --no-quantize
    gate_bits: int | None = None  # None: router gates stay float
    dtype: str = "bfloat16"  # for every tensor that is not quantized (and for scales/biases)
    global_scale: bool = True  # nvfp4 expert stacks get a per-expert tensor scale
    recipe: str = "uniform"  # a key of RECIPES
    overrides: tuple["Override", ...] = ()
    rounding: str = "plain"  # a key of ROUNDINGS
    target_bpw: float | None = None  # size budget in bits per weight (allocate.py chooses per module)
    calib: str | None = None  # calibration text for --target-bpw (else a data-free proxy) and --rounding gptq
    calib_sequences: int = 8  # sequences of calib_length tokens read from calib
    calib_length: int = 512

    def validate(self, where: str | None = None) -> "Options":
        """These options, or a PlanError for the first value that does not fit or contradicts
        another. Values are named as the command line spells them (`--recipe mixed_9`), or, with
        `where` (a plan file's `options`), by their JSON path."""

        def name(key: str) -> str:
            return key if where else "--" + key.replace("_", "-")

        def refuse(key: str, value, expected: str):
            shown = f"{where}.{key}: {json.dumps(value)}; " if where else f"{name(key)} {value}: "
            raise PlanError(shown + expected)

        if self.gate_bits not in (None, 8):
            refuse("gate_bits", self.gate_bits, "expected null (float) or 8")
        if self.dtype not in DTYPES:
            refuse("dtype", self.dtype, f"expected one of {', '.join(DTYPES)}")
        if self.recipe not in RECIPES:
            refuse("recipe", self.recipe, f"expected one of {', '.join(RECIPES)}")
        if self.recipe in MIXED_RECIPES and self.quant is not None and self.quant.mode != Mode.AFFINE:
            refuse("recipe", self.recipe, f"mlx-lm's mixed recipes are affine only, not {self.quant.mode.value}; "
                   f"expected {'quant.mode' if where else '--mode'} affine")
        if self.rounding not in ROUNDINGS:
            refuse("rounding", self.rounding, f"expected one of {', '.join(ROUNDINGS)}")
        if self.target_bpw is not None and self.quant is None:
            refuse("target_bpw", self.target_bpw, "a size budget, but nothing is quantized; expected a quantization")
        if self.target_bpw is not None and not 1.0 < self.target_bpw <= 16.0:
            refuse("target_bpw", self.target_bpw, "expected a budget between 1 and 16 bits per weight")
        if self.rounding == "gptq" and not self.calib:
            refuse("rounding", self.rounding,
                   f"needs calibration data; expected {'a calib file' if where else '--calib FILE'}")
        if self.calib is not None and self.target_bpw is None and self.rounding != "gptq":
            refuse("calib", self.calib, f"only used with {name('target_bpw')} or {name('rounding')} gptq; "
                   "expected one of them")
        for key in ("calib_sequences", "calib_length"):
            if getattr(self, key) < 1:
                refuse(key, getattr(self, key), "expected 1 or more")
        if self.calib is not None and not Path(self.calib).is_file():
            refuse("calib", self.calib, f"{'a folder' if Path(self.calib).is_dir() else 'not found'}; expected a "
                   "text or .npy token file")
        return self

    def to_dict(self) -> dict:
        """The `options` object of a plan file (from_dict reads it back to equal Options)."""
        return {
            "quant": self.quant.to_dict() if self.quant else None,
            "gate_bits": self.gate_bits,
            "dtype": self.dtype,
            "global_scale": self.global_scale,
            "recipe": self.recipe,
            "rounding": self.rounding,
            "target_bpw": self.target_bpw,
            "calib": self.calib,
            "calib_sequences": self.calib_sequences,
            "calib_length": self.calib_length,
            "overrides": [str(o) for o in self.overrides],
        }

    @classmethod
    def from_dict(cls, o, where: str) -> "Options":
        """The `options` object of a plan file: each field's JSON type checked, then validate(where)."""
        if not isinstance(o, dict):
            raise PlanError(f"{where}: {json.dumps(o)}; expected an object")
        quant = _field(o, "quant", (dict, type(None)), 'null or an object like {"mode": "affine", "bits": 4, '
                       '"group_size": 64}', where)
        overrides = _field(o, "overrides", (list,), "a list of PATTERN=SPEC strings", where, [])
        if (bad := next((i for i, text in enumerate(overrides) if not isinstance(text, str)), None)) is not None:
            raise PlanError(f"{where}.overrides[{bad}]: {json.dumps(overrides[bad])}; expected a PATTERN=SPEC string")
        return cls(
            Quant.from_dict(quant, f"{where}.quant") if quant is not None else None,
            _field(o, "gate_bits", (int, type(None)), "null (float) or 8", where),
            _field(o, "dtype", (str,), f"one of {', '.join(DTYPES)}", where, "bfloat16"),
            _field(o, "global_scale", (bool,), "true or false", where, True),
            _field(o, "recipe", (str,), f"one of {', '.join(RECIPES)}", where, "uniform"),
            tuple(Override.parse(text) for text in overrides),
            _field(o, "rounding", (str,), f"one of {', '.join(ROUNDINGS)}", where, "plain"),
            _field(o, "target_bpw", (int, float, type(None)), "null or bits per weight", where),
            _field(o, "calib", (str, type(None)), "null or the calibration file", where),
            _field(o, "calib_sequences", (int,), "a number of sequences", where, 8),
            _field(o, "calib_length", (int,), "tokens per sequence", where, 512),
        ).validate(where)


class Role(str, Enum):
    ROUTER_GATE = "router_gate"
    SHARED_EXPERT_GATE = "shared_expert_gate"
    ROUTED_EXPERTS = "routed_experts"
    SHARED_EXPERTS = "shared_experts"
    ATTENTION = "attention"
    DENSE_MLP = "dense_mlp"
    EMBEDDING = "embedding"
    LM_HEAD = "lm_head"
    NORM = "norm"
    VISION = "vision"
    OTHER = "other"


# Roles by module-path pattern, first match wins; structural roles (gates, routed experts) are
# found before these from the module tree itself (see `find_roles`).
ROLE_PATTERNS: tuple[tuple[Role, tuple[str, ...]], ...] = (
    # Klear's coefficient: softmax over 2 logits that weighs the routed against the shared output
    (Role.SHARED_EXPERT_GATE, ("*.mlp.coefficient",)),
    # audio towers too, as mlx_vlm.convert keeps them (mlx_vlm.utils.skip_multimodal_module), and every projector:
    # Gemma 4's (embed_vision; DiffusionGemma's under its encoder), Step-3.7's (vit_large_projector), Kimi-K2.5's
    # (mm_projector), MiniMax-M3's (patch_merge_mlp), ERNIE-4.5-VL's (resampler_model); Qwen3-Omni's code predictor
    # (skip_multimodal_module's too); DeepSeek-OCR's SAM encoder and projector (mlx-vlm's unlimited_ocr)
    (Role.VISION, ("vision_tower.*", "vision_model.*", "*.visual.*", "visual.*", "multi_modal_projector.*",
                   "*.vision_tower.*", "*.multi_modal_projector.*", "audio_tower.*", "*.audio_tower.*",
                   "embed_vision.*", "*.embed_vision.*", "vit_large_projector", "mm_projector.*", "patch_merge_mlp.*",
                   "resampler_model.*", "*.code_predictor.*", "sam_model.*", "projector.*")),
    (Role.NORM, ("*norm", "*_layernorm", "*.ln_*")),
    (Role.SHARED_EXPERTS, ("*.shared_expert.*", "*.shared_experts.*", "*.shared_mlp.*")),
    # Token mixers other than attention count as attention: linear attention (Qwen3-Next), short
    # convolutions (LFM2), Mamba mixers (Jamba; Nemotron-H's mixer in M blocks)
    (Role.ATTENTION, ("*.self_attn.*", "*.attention.*", "*.attn.*", "*.linear_attn.*", "*.conv.*", "*.mamba.*",
                      "*.mixer.in_proj", "*.mixer.out_proj", "*.mixer.conv1d", "*.mixer.q_proj", "*.mixer.k_proj",
                      "*.mixer.v_proj", "*.mixer.o_proj")),
    (Role.DENSE_MLP, ("*.mlp.*", "*.mlps.*", "*.feed_forward.*", "*.ffn.*", "*.mixer.up_proj", "*.mixer.down_proj")),
    (Role.EMBEDDING, ("*embed_tokens", "*.wte", "*.embeddings", "*.word_embeddings", "*.ngram_embeddings.*")),
    (Role.LM_HEAD, ("lm_head", "*.lm_head")),
)


@dataclass(frozen=True)
class Module:
    """What the rules see of one leaf module of the target model."""

    path: str
    role: Role
    shape: tuple[int, ...]  # of its `weight` (or its only parameter)
    params: int  # all its parameters
    quantizable: bool  # has to_quantized
    takes_global_scale: bool = False  # to_quantized(global_scale=True): mlx-lm's switch layers
    model_keeps: bool = False  # the model's own quant_predicate says False (mlx-lm never quantizes it)
    source: Quant | None = None  # how SRC stores it, if SRC is MLX-quantized
    source_listed: bool = False  # SRC's config has a per-path entry for it
    origin: str = ""  # what SRC holds for it: format or dtype, and the expert layout
    kind: str = ""  # its mlx-lm class, e.g. MoEGate


def find_roles(model: nn.Module) -> list[Module]:
    """Every leaf module with parameters, with its role read from the module tree."""
    leaves = tree_flatten(model.leaf_modules(), is_leaf=lambda m: isinstance(m, nn.Module))
    leaves = [(p, m) for p, m in leaves if tree_flatten(m.parameters())]
    # An MoE block is the parent of a SwitchLinear container (…mlp.switch_mlp.gate_proj -> …mlp);
    # its children that map hidden states to one score per expert (or one) are gates — directly
    # (mlp.gate) or inside a router wrapper that holds nothing else (mlp.gate.wg, router.layer).
    switch = expert_stack_types(model)  # mlx-lm's SwitchLinear, and mlx-vlm's copy of it
    moe_blocks = {p.rsplit(".", 2)[0]: m.weight.shape[0] for p, m in leaves if isinstance(m, switch)}
    # a block holding nothing but its expert stacks (Gemma 4's layers.{l}.experts) is routed by its
    # parent's children (layers.{l}.router.proj): the parent is the MoE block
    moe_blocks = {(b.rpartition(".")[0] if all(isinstance(m, switch) for p, m in leaves if p.startswith(f"{b}."))
                   else b): e for b, e in moe_blocks.items()}
    # or the parent of a list of per-expert MLPs (mlx-lm's dbrx: ffn.experts.{e}.w1/v1/w2, no SwitchLinear)
    expert_lists = _expert_lists(leaves)
    moe_blocks |= {b.rpartition(".")[0]: e for b, e in expert_lists.items()}
    wrapped = {p.rpartition(".")[0] for p, _ in leaves}
    wrappers = {w: w.rpartition(".")[0] for w in wrapped if w.rpartition(".")[0] in moe_blocks
                and sum(p.startswith(f"{w}.") for p, _ in leaves) == 1}
    model_predicate = getattr(model, "quant_predicate", None)  # a property: mlx-lm models return a function
    modules = []
    for path, m in leaves:
        arrays = dict(tree_flatten(m.parameters()))
        weight = arrays.get("weight", next(iter(arrays.values())))
        parent, _, _ = path.rpartition(".")
        parent = wrappers.get(parent, parent)
        role = None
        if isinstance(m, switch) or parent.rpartition(".")[0] in expert_lists:
            role = Role.ROUTED_EXPERTS
        elif parent in moe_blocks and weight.ndim == 2:
            # one score per expert, or more: LongCat's router also scores its zero (identity) experts
            if weight.shape[0] >= moe_blocks[parent]:
                role = Role.ROUTER_GATE
            elif weight.shape[0] == 1:
                role = Role.SHARED_EXPERT_GATE
        if role is None:
            role = next((r for r, pats in ROLE_PATTERNS if any(fnmatch.fnmatchcase(path, p) for p in pats)),
                        Role.NORM if weight.ndim == 1 else Role.OTHER)
        quantizable = hasattr(m, "to_quantized")
        takes_global_scale = quantizable and "global_scale" in inspect.signature(m.to_quantized).parameters
        keeps = quantizable and model_predicate is not None and model_predicate(path, m) is False
        modules.append(Module(path, role, tuple(weight.shape), sum(a.size for a in arrays.values()),
                              quantizable, takes_global_scale, keeps,
                              kind=f"{type(m).__module__.rpartition('.')[2]}.{type(m).__name__}"))
    return modules


def _expert_lists(leaves: list[tuple[str, nn.Module]]) -> dict[str, int]:
    """Lists of per-expert MLPs, path -> E: `<list>.{e}.<leaf>` for e in 0..E-1 (E >= 2), every entry the
    same set of two or more quantizable 2-D leaves of the same shapes, beside a router: a 2-D leaf of E rows
    in the list's parent, directly or inside a wrapper holding nothing else (dbrx's ffn.router.layer). A
    decoder layer list never is one (its entries hold norms), nor a list of dense MLPs (LongCat's mlps)."""
    entries: dict[str, dict[int, dict[str, object]]] = {}
    for path, m in leaves:
        head, _, leaf = path.rpartition(".")
        where, _, e = head.rpartition(".")
        if e.isdigit():
            weight = getattr(m, "weight", None)
            shape = tuple(weight.shape) if hasattr(m, "to_quantized") and getattr(weight, "ndim", 0) == 2 else None
            entries.setdefault(where, {}).setdefault(int(e), {})[leaf] = shape
    lists = {where: len(by_e) for where, by_e in entries.items()
             if len(by_e) >= 2 and sorted(by_e) == list(range(len(by_e))) and len(by_e[0]) >= 2
             and None not in by_e[0].values() and all(by_e[e] == by_e[0] for e in by_e)}
    parts = [p.split(".") for p, _ in leaves]
    under = Counter(".".join(p[:i]) for p in parts for i in range(1, len(p)))  # module -> leaves inside it
    routers = set()
    for path, m in leaves:
        weight, parent = getattr(m, "weight", None), path.rpartition(".")[0]
        if getattr(weight, "ndim", 0) == 2:
            routers.add((parent, weight.shape[0]))
            if under[parent] == 1:
                routers.add((parent.rpartition(".")[0], weight.shape[0]))
    return {where: e for where, e in lists.items() if (where.rpartition(".")[0], e) in routers}


@dataclass(frozen=True)
class Rule:
    name: str
    precedence: int  # the highest-precedence rule that applies decides
    applies: Callable[[Module], bool]
    decide: Callable[[Module], Quant | None]
    why: str
    requested: bool = False  # a user's explicit request: if it cannot be done, that is an error
    pattern: str = ""  # an override's glob on module paths
    free: bool = False  # a default choice (--mode/--bits/--group-size, a recipe): --target-bpw may choose instead


@dataclass(frozen=True)
class Override:
    """`--override 'PATTERN=SPEC'`: a glob on module paths, and `keep` or `bits=8,group=64,mode=affine`."""

    pattern: str
    quant: Quant | None
    text: str = ""  # as given on the command line

    @classmethod
    def parse(cls, text: str) -> "Override":
        pattern, sep, spec = text.partition("=")
        where = f"--override {text!r}"
        if not sep or not pattern or not spec:
            raise PlanError(f"{where}: expected PATTERN=SPEC, e.g. '*.shared_expert.*=bits=8' or '*.mlp.gate=keep'")
        if spec.strip() == "keep":
            return cls(pattern, None, text)
        fields = {}
        for item in spec.split(","):
            key, eq, value = item.partition("=")
            key = {"group": "group_size"}.get(key.strip(), key.strip())
            if not eq or key not in ("bits", "group_size", "mode"):
                raise PlanError(f"{where}: {item!r}; expected keep, or bits=N, group=N, mode=M separated by commas")
            fields[key] = value.strip()
        try:
            bits = int(fields["bits"]) if "bits" in fields else None
            group = int(fields["group_size"]) if "group_size" in fields else None
        except ValueError:
            raise PlanError(f"{where}: bits and group take whole numbers") from None
        return cls(pattern, Quant.make(fields.get("mode", "affine"), bits, group, where), text)

    def __str__(self) -> str:
        return self.text


GATE_ROLES = (Role.ROUTER_GATE, Role.SHARED_EXPERT_GATE)
MOE_RECIPE_ROLES = (Role.ATTENTION, Role.SHARED_EXPERTS, Role.DENSE_MLP, Role.EMBEDDING, Role.LM_HEAD)
# mlx-lm's mixed recipes (mlx_lm/convert.py mixed_quant_predicate_builder): (low bits, high bits)
MIXED_RECIPES = {"mixed_2_6": (2, 6), "mixed_3_4": (3, 4), "mixed_3_6": (3, 6), "mixed_4_6": (4, 6)}
RECIPES = ("uniform", "moe", *MIXED_RECIPES)
ROUNDINGS = tuple(r.value for r in Rounding)  # what --rounding and plan files take


def _recipe_rules(options: Options, num_layers: int) -> list[Rule]:
    q = options.quant
    if options.recipe == "uniform" or q is None:
        return []
    if options.recipe == "moe":
        high = Quant.make(Mode.AFFINE, min(q.bits + 2, 8), 64)
        return [Rule("recipe-moe", 10, lambda m: m.role in MOE_RECIPE_ROLES, lambda m: high,
                     f"--recipe moe: everything but the routed experts at {high}", free=True)]
    low_bits, high_bits = MIXED_RECIPES[options.recipe]
    low, high = Quant.make(Mode.AFFINE, low_bits, q.group_size), Quant.make(Mode.AFFINE, high_bits, q.group_size)

    def more_bits(m: Module) -> bool:  # mlx-lm's use_more_bits, on the decoder layer index
        where = layer_of(m.path)
        i = where[1] if where else 0
        return i < num_layers // 8 or i >= 7 * num_layers // 8 or (i - num_layers // 8) % 3 == 2

    def high_applies(m: Module) -> bool:
        sensitive = any(k in m.path for k in ("v_proj", "v_a_proj", "v_b_proj", "down_proj"))
        return sensitive and more_bits(m) or "lm_head" in m.path

    return [
        Rule(f"recipe-{options.recipe}", 10, lambda m: True, lambda m: low, f"--recipe {options.recipe}: {low}",
             free=True),
        Rule(f"recipe-{options.recipe}-high", 11, high_applies, lambda m: high,
             f"--recipe {options.recipe}: {high} for lm_head, and v/down projections of every third layer "
             "and the first and last eighth", free=True),
    ]


def plan_rules(options: Options, num_layers: int, allocation: dict[str, Quant] | None = None) -> list[Rule]:
    """The rules for one plan: fixed rows, the recipe's rows, the --target-bpw allocation, then
    one row per --override (later overrides win over earlier ones)."""
    allocation = allocation or {}
    proxy = f"calibrated on {options.calib}" if options.calib else "data-free proxy: weight reconstruction error"
    rules = [
        Rule("not-quantizable", 200, lambda m: not m.quantizable, lambda m: None,
             "the mlx-lm module has no to_quantized"),
        Rule("model-keeps", 190, lambda m: m.model_keeps, lambda m: None,
             "the mlx-lm model's quant_predicate keeps it float (mlx-lm never quantizes it; some forwards read "
             "its weight directly)"),
        Rule("no-quantize", 100, lambda m: options.quant is None, lambda m: None, "--no-quantize"),
        Rule("vision", 60, lambda m: m.role == Role.VISION, lambda m: None,
             "vision tower and projector stay float unless an override asks"),
        Rule("router-gate", 50, lambda m: m.role in GATE_ROLES,
             lambda m: GATE_QUANT if options.gate_bits == 8 else None,
             "router gates stay float (or 8-bit with --gate-bits 8), never at the experts' bits"),
        Rule("source-entry", 25, lambda m: m.source_listed and options.quant is not None, lambda m: m.source,
             "SRC's config.json has a per-path entry for this module"),
        *_recipe_rules(options, num_layers),
        Rule("target-bpw", 12, lambda m: m.path in allocation, lambda m: allocation[m.path],
             f"--target-bpw {options.target_bpw}: least estimated output error within the budget ({proxy})"),
        Rule("default", 0, lambda m: True, lambda m: options.quant, "--mode/--bits/--group-size", free=True),
    ]
    for i, o in enumerate(options.overrides):
        rules.append(Rule(f"override {o.pattern}", 150 + i,
                          lambda m, o=o: fnmatch.fnmatchcase(m.path, o.pattern) and (m.quantizable or o.quant is None),
                          lambda m, o=o: o.quant, f"--override {o.text!r}", requested=True, pattern=o.pattern))
    return rules


@dataclass(frozen=True)
class Decision:
    path: str
    role: Role
    shape: tuple[int, ...]
    params: int
    quantizable: bool
    quant: Quant | None
    rule: str
    reason: str
    bytes_before: int
    bytes_after: int
    source: Quant | None = None  # how SRC stores it (MLX-quantized sources)
    origin: str = ""  # what SRC holds for it: format or dtype, and the expert layout
    # decided by a default choice, or left float where that choice's groups do not divide the input
    # (Rule.free): what --target-bpw chooses for instead; not written to plan files
    free: bool = False

    @property
    def action(self) -> str:
        return str(self.quant) if self.quant else "keep"

    @property
    def as_stored(self) -> bool:
        """SRC already holds exactly this quantization: copied, never rounded twice."""
        return self.quant is not None and self.quant == self.source


def decide(module: Module, rules: list[Rule], options: Options, source_itemsize: int) -> Decision:
    rule = max((r for r in rules if r.applies(module)), key=lambda r: r.precedence)
    quant, name, reason, free = rule.decide(module), rule.name, rule.why, rule.free
    if rule.requested and quant is not None and module.role in GATE_ROLES and quant.bits < 8:
        raise PlanError(f"{rule.why}: router gate {module.path} would get {quant}; gates take float or ≥ 8 bits")
    if quant and quant.mode == Mode.NVFP4 and module.takes_global_scale and options.global_scale and not quant.global_scale:
        # One float32 scale per expert, from that expert's own weights (mlx-lm's _quantize_experts):
        # never worse than block scales alone, and far better for small-magnitude experts, whose
        # e4m3 block scales otherwise fall into the subnormal range.
        quant = Quant(quant.mode, quant.bits, quant.group_size, True)
        reason += "; with a per-expert global scale"
    if quant is not None and not divides(module.shape[-1], quant):
        reason = f"{rule.name} asked {quant}, but in={module.shape[-1]} is not a multiple of {quant.group_size}"
        if rule.requested:
            raise PlanError(f"{rule.why}: {module.path}: {reason}")
        quant, name, free = None, "indivisible", True
    out_itemsize = DTYPES[options.dtype].size
    weight = math.prod(module.shape)
    after = (module.params - weight) * out_itemsize
    after += quant.packed_bytes(module.shape, options.dtype) if quant else weight * out_itemsize
    before = module.params * source_itemsize
    if module.source is not None:
        before += module.source.packed_bytes(module.shape, "bfloat16") - weight * source_itemsize
    if quant is not None and quant == module.source:
        reason += "; SRC stores it so already: copied as stored"
    return Decision(module.path, module.role, module.shape, module.params, module.quantizable, quant, name,
                    reason, before, after, module.source, module.origin, free)


@dataclass
class Plan:
    model_type: str
    options: Options
    rows: list[Decision]
    notes: list[str] = field(default_factory=list)  # config aliases resolved, etc.

    def __post_init__(self):
        self.by_path = {r.path: r for r in self.rows}

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def bytes_before(self) -> int:
        return sum(r.bytes_before for r in self.rows)

    @property
    def bytes_after(self) -> int:
        return sum(r.bytes_after for r in self.rows)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.bytes_after / max(self.params, 1)

    def counts(self) -> dict[str, int]:
        """Modules per (decision, rule), e.g. {"affine·4·g64 by default": 12, "keep by router-gate": 2}."""
        out: dict[str, int] = {}
        for r in self.rows:
            key = f"{r.action} by {r.rule}"
            out[key] = out.get(key, 0) + 1
        return out

    def by_role(self) -> dict[Role, list[Decision]]:
        roles: dict[Role, list[Decision]] = {}
        for r in self.rows:
            roles.setdefault(r.role, []).append(r)
        return roles

    def quantization_config(self) -> dict | None:
        """The `quantization` entry of the output config.json: defaults plus per-path entries."""
        if self.options.quant is None:
            return None
        config: dict = self.options.quant.to_dict()
        for r in self.rows:
            if not r.quantizable or r.quant == self.options.quant:
                continue  # a module without to_quantized never gets an entry (the MoEGate crash)
            config[r.path] = r.quant.to_dict() if r.quant else False
        return config

    def to_json(self) -> dict:
        return {
            "moequant_plan": 1,
            "model_type": self.model_type,
            "options": self.options.to_dict(),
            "totals": {"params": self.params, "bytes_before": self.bytes_before,
                       "bytes_after": self.bytes_after, "bits_per_weight": round(self.bits_per_weight, 4)},
            "notes": self.notes,
            "modules": [
                {**{k: v for k, v in asdict(r).items() if k not in ("quant", "role", "source", "free")},
                 "role": r.role.value, "shape": list(r.shape),
                 "quant": r.quant.to_dict() if r.quant else None,
                 "source": r.source.to_dict() if r.source else None}
                for r in self.rows
            ],
        }


def _field(data: dict, key: str, kinds: tuple[type, ...], what: str, where: str, default=None):
    """data[key] if it has one of `kinds` (bool is never a number here), else a PlanError naming
    the file and the JSON path; `default` if absent."""
    if key not in data:
        return default
    value = data[key]
    if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
        raise PlanError(f"{where}.{key}: {json.dumps(value)}; expected {what}")
    return value


def plan_from_json(data: dict, modules: list[Module], model_type: str, source_itemsize: int = 2,
                   notes: list[str] | None = None, where: str = "plan.json") -> Plan:
    """Exactly the decisions of a saved plan (`inspect --json`), refused at the first field that
    is not what `inspect --json` writes (naming the file and the JSON path) or the first module
    that does not fit SRC (unknown path, wrong shape, a quantization the module cannot take)."""
    if not isinstance(data, dict) or data.get("moequant_plan") != 1 or not isinstance(data.get("modules"), list):
        raise PlanError(f"{where}: not a moequant plan; expected the JSON of `moequant inspect SRC --json`")
    if data.get("model_type") != model_type:
        raise PlanError(f"{where}: model_type {data.get('model_type')!r}; SRC is {model_type!r}")
    saved: dict[str, tuple[str, dict]] = {}
    for i, row in enumerate(data["modules"]):
        here = f"{where}: modules[{i}]"
        if not isinstance(row, dict):
            raise PlanError(f"{here}: {json.dumps(row)}; expected an object with path, shape and quant")
        path = _field(row, "path", (str,), "a module path", here)
        if path is None:
            raise PlanError(f"{here}: no path; expected the module path, e.g. {modules[0].path if modules else ''}")
        if path in saved:
            raise PlanError(f"{here}.path: {path} again (also {saved[path][0]}); expected one row per module")
        saved[path] = (f"{here} ({path})", row)
    for m in modules:
        if m.path not in saved:
            raise PlanError(f"{where}: has no row for {m.path}; expected one per module of SRC")
    known = {m.path for m in modules}
    for path in saved:
        if path not in known:
            raise PlanError(f"{where}: {path} is not a module of SRC")
    options = Options.from_dict(data.get("options", {}), f"{where}: options")
    rows = []
    for m in modules:
        here, row = saved[m.path]
        shape = _field(row, "shape", (list,), f"a list of whole numbers like {list(m.shape)}", here, [])
        if tuple(shape) != m.shape:
            raise PlanError(f"{here}.shape: {json.dumps(shape)}; SRC has {list(m.shape)}")
        spec = _field(row, "quant", (dict, type(None)), 'null (keep) or an object like {"mode": "affine", '
                      '"bits": 4, "group_size": 64}', here)
        quant = Quant.from_dict(spec, f"{here}.quant") if spec is not None else None
        rule_name = _field(row, "rule", (str,), "a string", here, "plan-file")
        reason = _field(row, "reason", (str,), "a string", here, "plan file")
        rule = Rule(rule_name, 0, lambda _: True, lambda _, q=quant: q, reason, requested=True)
        if quant is not None and not m.quantizable:
            raise PlanError(f"{here}.quant: {quant}, but the mlx-lm module ({m.kind or 'it'}) has no "
                            "to_quantized; expected null")
        if quant is not None and quant.global_scale and not m.takes_global_scale:
            raise PlanError(f"{here}.quant.global_scale: true, but the mlx-lm module takes none; expected false")
        rows.append(decide(m, [rule], replace(options, global_scale=False), source_itemsize))
    return Plan(model_type, options, rows, list(notes or []))


def plan_rows(modules: list[Module], options: Options, source_itemsize: int = 2,
              allocation: dict[str, Quant] | None = None) -> list[Decision]:
    """Each module's decision by the rules of `options` (with a --target-bpw `allocation`, if
    any); an override that decides no module is refused."""
    layers = [w[1] for m in modules if (w := layer_of(m.path))]
    rules = plan_rules(options, max(layers) + 1 if layers else 0, allocation)
    for rule in rules:
        if not rule.requested or any(rule.applies(m) for m in modules):
            continue
        if matched := [m for m in modules if fnmatch.fnmatchcase(m.path, rule.pattern)]:
            m = matched[0]
            raise PlanError(f"{rule.why}: {m.path} exists but cannot be quantized (mlx-lm's {m.kind} has no "
                            f"quantized form: no to_quantized), so it stays float; expected a pattern that "
                            f"matches a quantizable module ({len(matched)} matched, none quantizable)")
        raise PlanError(f"{rule.why}: matches no module of SRC (a typo?); "
                        f"module paths look like {modules[len(modules) // 2].path}")
    return [decide(m, rules, options, source_itemsize) for m in modules]


def build_plan(modules: list[Module], model_type: str, options: Options, source_itemsize: int = 2,
               notes: list[str] | None = None, allocation: dict[str, Quant] | None = None) -> Plan:
    return Plan(model_type, options, plan_rows(modules, options, source_itemsize, allocation), list(notes or []))
