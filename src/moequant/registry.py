"""Architecture knowledge as data: one row per config.json model_type.

A row (`Arch`) holds everything moequant knows about one model_type: its status and the note
`moequant archs` prints, the runner (mlx-lm, or mlx-vlm for a release with a vision part), how
the release publishes its experts (`Family`), the config renames that put transformers' values
under the names the runner's ModelArgs reads, what mlx-lm's model computes differently from
transformers', and the name of its tiny fixture (a recipe in `tiny.py`). Each source spelling of
a model_type is a row of its own: a transformers class that mlx-lm runs under another name
(`runs_as`), and the model_types of sub-configs that need renames (`llama4_vision_model`). The
tables the pipeline reads (FAMILIES, VISION_LANGUAGE, RENAMES, …) are views of these rows, and a
model_type with no row is an error (`row`), never a pass-through.

Adding an architecture is one row here and one recipe in `tiny.py` (tests/test_archs.py holds the
two to each other); the pipeline has no `if model_type == …`. What a row cannot say is a function
registered by name and named by the row: experts.FUSED_SPLITTERS (Family.fused),
configmap.CONVERTERS (Rename.convert), ignored.MATTERS (Ignored.matters).
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field
from enum import Enum

from .errors import CheckpointError
from .formats import StrEnum


class Status(str, Enum):
    SUPPORTED = "supported"  # family + tiny checkpoint + passing smoke test
    BLOCKED = "blocked"  # family + tiny checkpoint; the smoke test waits on the change named
    NOT_YET = "not yet"  # no family yet; the note says what it takes


class Handoff(StrEnum):
    """What mlx-lm's sanitize is handed: moequant's stacks, or each expert in the published names
    for a sanitize that stacks them itself and keys other conversions on seeing them (Qwen3-Next's
    norm offsets)."""

    STACKED = "stacked"
    PER_EXPERT = "per_expert"


@dataclass(frozen=True)
class FusedAlso:
    """The same fused experts published under other names, split another way (gpt-oss: the MXFP4
    release's rows vs transformers' own in x out float save)."""

    names: tuple[str, str]  # fused (gate_up, down) inside `experts`, bare (float parameters)
    fused: str  # how gate_up splits: a key of experts.FUSED_SPLITTERS


@dataclass(frozen=True)
class Family:
    experts: str  # per-expert container inside a decoder layer (source layout)
    stacked: str  # what the mlx-lm class loads: [E, out, in] per projection
    projections: dict[str, str]  # source projection name -> stacked projection name
    # the config key naming E; its other spellings are CONFIG_ALIASES' (num_experts_keys)
    num_experts: str = "num_experts"
    # (tensor-key prefix, config key naming E) for stacks of another count, first match wins (Qwen3-Omni's
    # talker.* by talker_config.text_config.num_experts); the other stacks have num_experts' count
    num_experts_at: tuple[tuple[str, str], ...] = ()
    fused: str = "halves"  # how the fused gate_up tensor splits: a key of experts.FUSED_SPLITTERS
    fused_names: tuple[str, str] = ("gate_up_proj", "down_proj")  # fused (gate_up, down) inside `experts`
    fused_bias_names: tuple[str, ...] = ()  # fused (gate_up, down) biases [E, out], if the release has them
    layout: str = "per_expert"  # how the release publishes its experts: per_expert, fused or stacked
    handoff: Handoff = Handoff.STACKED
    # other names the same fused experts are published under, each with its own orientation; the fused
    # biases (fused_bias_names) are the same rows in every publication
    fused_also: tuple[FusedAlso, ...] = ()
    # tensors inside `experts` holding every expert's rows one after another, [E·rows, cols], that the runner's
    # sanitize splits itself (DBRX's mlp.w1 / v1 / w2): checked, then handed over as they are
    row_blocks: tuple[str, ...] = ()


@dataclass(frozen=True)
class VisionLanguage:
    """A vision-language release that mlx-vlm runs whole (vision tower, projector and language
    model). The row's family says how the language model's experts are published; this part says
    what mlx-lm's text-only output drops. The runner is chosen in target.resolve_config."""

    module: str  # mlx_vlm.models.<module>
    # config keys holding the parts mlx-lm has no use for: a config with all of them set is a VLM;
    # a text-only (mlx-lm) output's config.json leaves them out, as it leaves out their weights
    vision_keys: tuple[str, ...] = ("vision_config",)
    fixture: str = ""  # the whole release's recipe: a key of tiny.VLM_ARCHS
    text: str = "text_config"  # where config.json holds the language model's keys (dotted for nested)
    # the runner's ModelConfig reads the language model's keys from the root of config.json (the release's flat
    # layout) and ignores text_config: the output's config.json carries text_config's keys at the root too, beside
    # the root's own (which win: transformers reads the root's, e.g. tie_word_embeddings)
    text_at_root: bool = False


@dataclass(frozen=True)
class Wrapped:
    """A transformers text-only class of a model mlx-lm runs only inside its multimodal wrapper: the
    output is the wrapper's, config.json nested under text_config and tensors under its prefix."""

    prefixes: tuple[tuple[str, str], ...]  # source tensor-key prefix -> mlx-lm's, first match wins


@dataclass(frozen=True)
class AbsentAsZeros:
    """Tensors mlx-lm's model always has and transformers' only when a config flag is on (biases):
    with the flag off, SRC has none and they are written as zeros, which compute the same function."""

    flag: str  # transformers' config key; "" for tensors transformers' model never has (the runner never uses them)
    keys: str  # regex over mlx-lm's parameter keys
    what: str  # the tensors, in the user's words


@dataclass(frozen=True)
class Rename:
    """One ModelArgs key filled from transformers' spelling of it (configmap.apply_renames)."""

    key: str  # what mlx-lm's ModelArgs reads
    source: str  # transformers' key (dotted for nested: rope_parameters.rope_theta); "" = the whole config
    convert: str = ""  # a key of configmap.CONVERTERS, "" = the value as it is
    # True: transformers never reads `key` (it reads `source`), so the value from `source` replaces a
    # stated `key` too (e.g. first_k_dense_replace beside the mlp_layer_types transformers reads)
    overrides: bool = False


def registrar(table: dict):
    """A decorator that files a function in `table` under a name a row gives (Rename.convert, Ignored.matters)."""
    def named(name: str):
        def register(fn):
            table[name] = fn
            return fn
        return register
    return named


FIXED: dict[str, object] = {}  # converter name -> the value it always answers (configmap.CONVERTERS)


def fixed(value) -> str:
    """The name of a converter that always answers `value`: for a ModelArgs key whose value
    transformers' model hard-codes (e.g. DeepSeek-V3-style routing: topk_method "noaux_tc")."""
    name = f"={value!r}"
    FIXED.setdefault(name, value)
    return name


OTHER_THAN: dict[str, object] = {}  # predicate name -> the one value that does not show (ignored.MATTERS)


def other_than(value) -> str:
    """The name of an Ignored predicate that shows for any value but `value`: for a constant the runner's model
    hard-codes where transformers reads a config value (its default `value`)."""
    name = f"!={value!r}"
    OTHER_THAN.setdefault(name, value)
    return name


@dataclass(frozen=True)
class Ignored:
    """Where mlx-lm's model computes something other than transformers' (ignored.ignored_notes)."""

    key: str  # a config key (dotted for nested), or with tensor=True a glob on SRC tensor names
    matters: str  # a key of ignored.MATTERS: (value, resolved config) -> whether mlx-lm's output differs
    message: str  # for the user: what transformers does, what mlx-lm does, when it shows
    tensor: bool = False
    # what mlx-lm's model can hold, where it cannot hold the source at all (a lm_head it has no place for):
    # converting is then refused in one line instead of noted
    expected: str = ""


def _sliding(where: str) -> str:
    return (f"transformers attends within the last sliding_window tokens ({where}); mlx-lm's model has no "
            "sliding window and attends to every earlier token, so outputs differ on prompts longer than the window")


@dataclass(frozen=True)
class Alias:
    """`key` is what mlx-lm's ModelArgs reads; `sources` are other spellings, tried in order.

    A dotted source (`rope_parameters.rope_theta`) reads a nested key. An alias only fills a key
    that the config lacks, and only when the target ModelArgs takes that key.
    """

    key: str
    sources: tuple[str, ...]
    note: str = field(default="", compare=False)


CONFIG_ALIASES: tuple[Alias, ...] = (
    # transformers 5 moved rope_theta under rope_parameters; mlx-lm's mixtral and qwen2_moe
    # default rope_theta to 1e6, so a missed alias loads silently and computes wrong logits.
    Alias("rope_theta", ("rope_parameters.rope_theta",), "transformers 5"),
    # transformers 5 keeps a partial rotary dimension with the other RoPE values
    Alias("partial_rotary_factor", ("rope_parameters.partial_rotary_factor",), "transformers 5"),
    # transformers 5 writes num_local_experts for the Qwen MoE families; mlx-lm reads num_experts.
    # These two rows also give the spellings of a family's expert count (num_experts_keys)
    Alias("num_experts", ("num_local_experts", "n_routed_experts"), "transformers 5"),
    Alias("num_local_experts", ("num_experts",), "older Mixtral-style exports"),
    # VLM-era configs may spell the dtype either way
    Alias("torch_dtype", ("dtype",), "transformers 5"),
)


@dataclass(frozen=True)
class Arch:
    """One config.json model_type. A row with a status is an architecture `moequant archs` lists; a
    row without one is another spelling (`runs_as`) or a sub-config's model_type (renames only)."""

    model_type: str  # as config.json says it
    # "mlx-lm" or "mlx-vlm": which runner has its model (mlx-vlm: only mlx-vlm; with no `vision` part, a text model
    # that only mlx-vlm runs, its output for mlx-vlm: TEXT_BY_MLX_VLM)
    runner: str = ""
    module: str = ""  # the runner's model module (mlx_lm.models.<module>)
    status: Status | None = None
    release: str = ""  # the release whose layout and config keys the tiny checkpoint follows (hub id where known)
    note: str = ""  # supported: what the tiny checkpoint exercises; otherwise why not, and what it takes
    _: KW_ONLY
    family: Family | None = None  # how the release publishes its experts (None: not converted)
    vision: VisionLanguage | None = None  # a vision part mlx-vlm runs (the runner choice: target.choose_runner)
    renames: tuple[Rename, ...] = ()  # config renames for the runner's config class (configmap.apply_renames)
    ignored: tuple[Ignored, ...] = ()  # where mlx-lm's model differs from transformers' (ignored.ignored_notes)
    # where mlx-vlm's model (vision tower, projector, a language model of its own, or the language model of a text
    # model only mlx-vlm runs) differs from transformers' for the same weights, read as `ignored` for an output for
    # mlx-vlm; measured on the producer's tiny checkpoints (tests/test_producer_vlm.py, one image, float32: max abs
    # logit difference; tests/test_producer.py)
    ignored_by_vlm: tuple[Ignored, ...] = ()
    runs_as: str = ""  # the model_type mlx-lm runs this one under (its config.json carries that one)
    wrapped: Wrapped | None = None  # a language model alone that mlx-lm runs inside its wrapper (runs_as)
    # the class mlx-lm's model reads the language model's keys with, where it is not ModelArgs (a text_config
    # or a flat config read as one), so renames and aliases fill the keys it reads
    text_args: str = ""
    # architectures[0] -> the model_type mlx-lm runs this one under with it, where mlx-lm picks another
    # (mlx-lm's own MODEL_ARCHITECTURE_REMAPPING pairs need none)
    architectures: tuple[tuple[str, str], ...] = ()
    # tensor names transformers 5 writes on save_pretrained that neither the release nor mlx-lm has: (regex on
    # the tensor key, replacement), applied only where the key is not a parameter of the target model and its
    # replacement is, so a release's own names pass untouched (names.renamed)
    tensor_renames: tuple[tuple[str, str], ...] = ()
    absent_as_zeros: tuple[AbsentAsZeros, ...] = ()  # tensors mlx-lm always has, transformers only when a flag says
    # tensor-key prefixes transformers 5's save_pretrained writes where the release and the runner have others: (SRC
    # prefix, the release's), first match wins, applied to SRC's keys as they are read (checkpoint.read_checkpoint)
    source_prefixes: tuple[tuple[str, str], ...] = ()
    # tensors SRC holds whole that the runner's model holds split and its sanitize does not split (from a float
    # SRC): keys of experts.SPLITTERS, applied after tensor_renames, before sanitize
    splits: tuple[str, ...] = ()
    # the runner's model computes transformers' function only when given its cache, as its generate always does:
    # moequant's own forward passes (verify, calibration, tests) give it a fresh one (evaluate.text_logits)
    needs_cache: bool = False
    # a block-diffusion model's canvas, the tokens it denoises given the prompt: (transformers' keyword, the runner's);
    # without one each side draws a random canvas, so moequant's own forward passes (verify, calibration) denoise the
    # prompt's own tokens (evaluate.text_logits)
    canvas: tuple[str, str] = ()
    pipeline_tag: str = ""  # the model card's pipeline_tag where not its runner's (a token classifier's)
    fixture: str = ""  # its tiny checkpoint's recipe: a key of tiny.ALL_ARCHS

    def to_dict(self) -> dict:
        """What `moequant archs --json` prints for the row."""
        return {"model_type": self.model_type, "runner": self.runner, "module": self.module,
                "status": self.status.value, "release": self.release, "note": self.note}


_GLU = {"gate_proj": "gate_proj", "up_proj": "up_proj", "down_proj": "down_proj"}

_W123 = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}  # Mixtral-style per-expert names

S, N = Status.SUPPORTED, Status.NOT_YET
_LM, _VLM = "mlx-lm", "mlx-vlm"

NOT_BUILT_VLM = "not converted yet (mlx-vlm runs it; moequant has no row for it yet); mlx_vlm.convert converts it meanwhile"
# mlx-vlm outputs that are built and smoke-tested (tests/test_vlm.py); the row's note says so too
VLM_DONE = ("mlx-vlm output (the default when mlx-vlm is installed; --for mlx-lm for text only): vision tower and "
            "projector copied float, language model under language_model.*, processor files copied; "
            "smoke-tested with mlx_vlm.load on text and an image")

def _text_by_vlm(transformers_class: str) -> str:
    """The start of the note of a text model only mlx-vlm runs (TEXT_BY_MLX_VLM)."""
    return (f"text model (transformers' {transformers_class}) that mlx-vlm runs, mlx-lm has none: output for mlx-vlm, "
            "config.json as the source's. ")


ROWS: tuple[Arch, ...] = (
    # ---- supported: family, tiny checkpoint (fixture), smoke test ----
    Arch("mixtral", _LM, "mixtral", S, "mistralai/Mixtral-8x7B-v0.1",
         "block_sparse_moe.experts.{e}.w1/w2/w3; transformers 5 config keys; mlx-lm's mixtral has no sliding window: where config.json sets one shorter than the context, mlx-lm attends to every earlier token and outputs differ from transformers' on prompts longer than the window (the plan notes it)",
         # mistralai/Mixtral-8x7B-v0.1: block_sparse_moe.experts.{e}.w1 (gate) / w3 (up) / w2 (down)
         family=Family(
             "block_sparse_moe.experts",
             "block_sparse_moe.switch_mlp",
             _W123,
             "num_local_experts",
         ),
         ignored=(Ignored("sliding_window", "window_shorter_than_context", _sliding(
             "sliding_window, modeling_mixtral.py:444; mlx_lm/models/mixtral.py")),),
         fixture="mixtral"),
    Arch("qwen2_moe", _LM, "qwen2_moe", S, "Qwen/Qwen1.5-MoE-A2.7B", "shared expert + shared_expert_gate, qkv bias; mlx-lm's qwen2_moe has no sliding window: where config.json sets one shorter than the context (use_sliding_window), mlx-lm attends to every earlier token and outputs differ from transformers' on prompts longer than the window (the plan notes it)",
         # Qwen/Qwen1.5-MoE-A2.7B: as qwen3_moe, plus mlp.shared_expert.* and mlp.shared_expert_gate
         family=Family("mlp.experts", "mlp.switch_mlp", _GLU, "num_experts"),
         ignored=(Ignored("layer_types", "sliding_layers", _sliding(
             "use_sliding_window makes layers below max_window_layers sliding_attention, modeling_qwen2_moe.py:226,488; "
             "mlx_lm/models/qwen2_moe.py")),),
         fixture="qwen2_moe"),
    Arch("qwen3_moe", _LM, "qwen3_moe", S, "Qwen/Qwen3-30B-A3B", "qk norm; transformers 5 config keys; mlx-lm's qwen3_moe has no sliding window: where config.json sets one shorter than the context (use_sliding_window), mlx-lm attends to every earlier token and outputs differ from transformers' on prompts longer than the window (the plan notes it)",
         # Qwen/Qwen3-30B-A3B: model.layers.{l}.mlp.experts.{e}.{gate,up,down}_proj.weight
         family=Family("mlp.experts", "mlp.switch_mlp", _GLU, "num_experts"),
         ignored=(Ignored("use_sliding_window", "sliding_window_used", _sliding(
             "use_sliding_window, modeling_qwen3_moe.py:473; mlx_lm/models/qwen3_moe.py")),),
         fixture="qwen3_moe"),
    Arch("deepseek_v3", _LM, "deepseek_v3", S, "deepseek-ai/DeepSeek-V3",
         "MLA (kv_b_proj), dense first layer, shared experts, e_score_correction_bias, MoEGate (no to_quantized)",
         # deepseek-ai/DeepSeek-V3: mlp.experts.{e}.*, mlp.shared_experts.*, mlp.gate.e_score_correction_bias
         family=Family("mlp.experts", "mlp.switch_mlp", _GLU, "n_routed_experts"),
         fixture="deepseek_v3"),
    Arch("kimi_k2", _LM, "deepseek_v3", S, "moonshotai/Kimi-K2-Instruct", "DeepSeek-V3 layout, YaRN",
         # moonshotai/Kimi-K2-Instruct (mlx-lm: deepseek_v3)
         family=Family("mlp.experts", "mlp.switch_mlp", _GLU, "n_routed_experts"),
         fixture="kimi_k2"),
    Arch("joyai_llm_flash", _LM, "deepseek_v3", S, "jdopensource/JoyAI-LLM-Flash",
         "DeepSeek-V3 layout under its own model_type (custom code): MLA, dense first layer, shared expert, "
         "correction bias",
         # jdopensource/JoyAI-LLM-Flash (mlx-lm: deepseek_v3): DeepSeek-V3's layout and config keys
         family=Family("mlp.experts", "mlp.switch_mlp", _GLU, "n_routed_experts"),
         fixture="joyai_llm_flash"),
    Arch("deepseek", _LM, "deepseek", S, "deepseek-ai/deepseek-moe-16b-base", "dense first layer, shared experts",
         # deepseek-ai/deepseek-moe-16b-base
         family=Family("mlp.experts", "mlp.switch_mlp", _GLU, "n_routed_experts"),
         fixture="deepseek"),
    Arch("deepseek_v2", _LM, "deepseek_v2", S, "deepseek-ai/DeepSeek-V2-Lite",
         "MLA without q_lora, YaRN, greedy softmax routing",
         # deepseek-ai/DeepSeek-V2-Lite, DeepSeek-V2.5
         family=Family("mlp.experts", "mlp.switch_mlp", _GLU, "n_routed_experts"),
         # transformers' DeepseekV2 computes plain RoPE when rope_type is "default"; mlx-lm's deepseek_v2 always
         # builds its YaRN rotary embedding from rope_scaling["factor"] (plain RoPE at factor 1.0)
         renames=(
             Rename("rope_scaling", "rope_parameters", "rope_scaling_with_factor"),
             # transformers' DeepseekV2: MoE iff layer >= first_k_dense_replace (moe_layer_freq is never read)
             Rename("moe_layer_freq", "", fixed(1), overrides=True),
         ),
         fixture="deepseek_v2"),
    Arch("olmoe", _LM, "olmoe", S, "allenai/OLMoE-1B-7B-0924", "q_norm/k_norm over all heads",
         # allenai/OLMoE-1B-7B-0924
         family=Family("mlp.experts", "mlp.switch_mlp", _GLU),
         fixture="olmoe"),
    Arch("phimoe", _LM, "phimoe", S, "microsoft/Phi-3.5-MoE-instruct",
         "block_sparse_moe w1/w2/w3, LayerNorm with bias, attention and lm_head biases, longrope; mlx-lm's phimoe has no sliding window: where config.json sets one shorter than the context, mlx-lm attends to every earlier token and outputs differ from transformers' on prompts longer than the window (the plan notes it). A transformers save with attention_bias / lm_head_bias false gets zero biases (the same function)",
         # microsoft/Phi-3.5-MoE-instruct
         family=Family("block_sparse_moe.experts", "block_sparse_moe.switch_mlp", _W123, "num_local_experts"),
         ignored=(Ignored("sliding_window", "window_shorter_than_context", _sliding(
             "sliding_window, modeling_phimoe.py:636; mlx_lm/models/phimoe.py")),),
         # mlx-lm's phimoe builds q/k/v/o_proj and lm_head with bias=True (mlx_lm/models/phimoe.py Attention, Model);
         # transformers' PhimoeConfig has attention_bias and lm_head_bias (default false; Phi-3.5-MoE says true)
         absent_as_zeros=(
             AbsentAsZeros("attention_bias", r"\.self_attn\.[qkvo]_proj\.bias$", "attention q/k/v/o_proj biases"),
             AbsentAsZeros("lm_head_bias", r"^lm_head\.bias$", "the lm_head bias"),
         ),
         fixture="phimoe"),
    Arch("minimax_m2", _LM, "minimax", S, "MiniMaxAI/MiniMax-M2",
         "block_sparse_moe w1/w2/w3, sigmoid router + e_score_correction_bias, qk norm, partial rotary",
         # MiniMaxAI/MiniMax-M2 (mlx-lm module minimax)
         family=Family("block_sparse_moe.experts", "block_sparse_moe.switch_mlp", _W123, "num_local_experts"),
         # transformers' MiniMaxM2: partial RoPE over int(head_dim * partial_rotary_factor) dims, no shared expert
         # (mlx-lm's minimax reads shared_intermediate_size but builds nothing from it)
         renames=(
             Rename("rotary_dim", "", "rotary_dim"),
             Rename("shared_intermediate_size", "", fixed(0)),
         ),
         fixture="minimax_m2"),
    Arch("Klear", _LM, "Klear", S, "Kwai-Klear/Klear-46B-A2.5B-Instruct",
         "experts stacked in place, expert_bias, shared experts, 2-way coefficient (a shared-expert gate)",
         # Kwai-Klear/Klear-46B-A2.5B: mlx-lm stacks in place, mlp.experts.{proj}.weight
         family=Family("mlp.experts", "mlp.experts", _GLU),
         fixture="Klear"),
    Arch("mellum", _LM, "mellum", S, "JetBrains Mellum (MoE)", "sliding + full layers, per-layer-type rope",
         # JetBrains Mellum MoE
         family=Family("mlp.experts", "mlp.switch_mlp", _GLU),
         fixture="mellum"),
    Arch("dots1", _LM, "dots1", S, "rednote-hilab/dots.llm1.inst",
         "experts stacked in place, dense first layer, shared experts, e_score_correction_bias; mlx-lm's dots1 has no sliding window: where config.json sets one shorter than the context (sliding layers below max_window_layers), mlx-lm attends to every earlier token and outputs differ from transformers' on prompts longer than the window (the plan notes it)",
         # rednote-hilab/dots.llm1: mlx-lm stacks in place, mlp.experts.{proj}.weight
         family=Family("mlp.experts", "mlp.experts", _GLU, "n_routed_experts"),
         ignored=(Ignored("layer_types", "sliding_layers", _sliding(
             "layer_types sliding_attention, modeling_dots1.py:211,512; mlx_lm/models/dots1.py")),),
         fixture="dots1"),
    Arch("glm4_moe", _LM, "glm4_moe", S, "zai-org/GLM-4.5-Air",
         "partial rotary, attention bias, dense first layer, shared experts",
         # zai-org/GLM-4.5
         family=Family("mlp.experts", "mlp.switch_mlp", _GLU, "n_routed_experts"),
         fixture="glm4_moe"),
    Arch("glm4_moe_lite", _LM, "glm4_moe_lite", S, "GLM-4.7-Flash", "MLA in GLM's MoE",
         # zai-org/GLM-4.7-Flash
         family=Family("mlp.experts", "mlp.switch_mlp", _GLU, "n_routed_experts"),
         fixture="glm4_moe_lite"),
    Arch("solar_open", _LM, "solar_open", S, "Upstage Solar Open 100B", "GLM-4.5-style MoE (glm4_moe's model)",
         # upstage/Solar-Open-100B (mlx-lm: glm4_moe's model)
         family=Family("mlp.experts", "mlp.switch_mlp", _GLU, "n_routed_experts"),
         # transformers' SolarOpen: every layer MoE (no dense layer, so no intermediate_size is read), partial
         # rotary from rope_parameters
         renames=(
             Rename("first_k_dense_replace", "", fixed(0), overrides=True),
             Rename("intermediate_size", "moe_intermediate_size"),
             Rename("partial_rotary_factor", "rope_parameters", "partial_rotary_factor"),
         ),
         fixture="solar_open"),
    Arch("ernie4_5_moe", _LM, "ernie4_5_moe", S, "baidu/ERNIE-4.5-21B-A3B-PT",
         ("moe_* config keys, dense first layer, shared experts. mlx-lm's ernie4_5_moe drops moe_statics.e_score_correction_bias, "
         "which transformers adds to the routing scores before choosing experts: where that bias is not zero (trained "
         "releases), mlx-lm picks other experts for some tokens and its outputs differ from transformers' (the plan "
         "notes it; moequant converts the weights exactly, the difference is mlx-lm's model)"),
         # baidu/ERNIE-4.5-21B-A3B-PT
         family=Family("mlp.experts", "mlp.switch_mlp", _GLU, "moe_num_experts"),
         ignored=(Ignored("*.moe_statics.e_score_correction_bias", "always", (
             "transformers adds moe_statics.e_score_correction_bias to the routing scores before choosing the top-k "
             "experts (modeling_ernie4_5_moe.py:351); mlx-lm's ernie4_5_moe drops that tensor in sanitize "
             "(mlx_lm/models/ernie4_5_moe.py:269) and chooses by the scores alone, so expert choice (and output) "
             "differs wherever the bias is not zero"), tensor=True),),
         fixture="ernie4_5_moe"),
    Arch("granitemoe", _LM, "granitemoe", S, "ibm-granite/granite-3.1-3b-a800m-instruct",
         "fused input_linear [E, 2I, H] / output_linear, nested router.layer gate, muP multipliers, tied",
         # ibm-granite/granite-3.1-3b-a800m: block_sparse_moe.input_linear.weight [E, 2I, H] (gate rows
         # first) and block_sparse_moe.output_linear.weight [E, H, I]
         family=Family("block_sparse_moe", "block_sparse_moe.switch_mlp", _GLU, "num_local_experts",
                       fused_names=("input_linear.weight", "output_linear.weight"), layout="fused"),
         fixture="granitemoe"),
    Arch("hunyuan", _LM, "hunyuan", S, "tencent/Tencent-Hunyuan-Large",
         "cross-layer KV sharing, nested gate.wg, shared_mlp, NTK-alpha rope, tied embeddings. transformers' "
         "HunYuanMoEV1 (model_type hunyuan_v1_moe, e.g. a Hunyuan-A13B fine-tune saved by transformers) converts "
         "too, but mlx-lm's hunyuan does not renormalize the top-k routing weights as transformers does, so its "
         "logits differ (a plan note; equal only when moe_topk = num_experts); an untied lm_head is refused "
         "(mlx-lm's hunyuan has none)",
         # tencent/Tencent-Hunyuan-Large
         family=Family("mlp.experts", "mlp.switch_mlp", _GLU),
         # transformers' HunYuanMoEV1 (model_type hunyuan_v1_moe, run by mlx-lm's hunyuan): every layer has one
         # shared MLP beside the experts and q/k RMSNorm after RoPE, no cross-layer KV sharing; experts and shared MLP
         # are intermediate_size wide (mlx-lm: moe_intermediate_size when set, else intermediate_size)
         renames=(
             Rename("use_mixed_mlp_moe", "", fixed(True)),
             Rename("num_shared_expert", "", fixed(1)),
             Rename("use_qk_norm", "", fixed(True)),
             Rename("use_cla", "", fixed(False)),
             Rename("cla_share_factor", "", fixed(1)),
             Rename("rope_scaling", "rope_parameters", "ntk_alpha_rope_scaling"),
         ),
         ignored=(
             Ignored("tie_word_embeddings", "untied", (
                 "an lm_head of its own (transformers' model uses it), but mlx-lm's hunyuan computes logits with embed_tokens (mlx_lm/models/hunyuan.py "
                 "Model.__call__: embed_tokens.as_linear) and has no lm_head"), expected="tie_word_embeddings true"),
             # transformers' HunYuanMoEV1 (model_type hunyuan_v1_moe), which mlx-lm runs as hunyuan
             Ignored("moe_topk", "hunyuan_v1_top_k", (
                 "transformers' HunYuanMoEV1 renormalizes the chosen experts' softmax weights to sum to 1 "
                 "(modeling_hunyuan_v1_moe.py:241), mlx-lm's hunyuan weighs them by their softmax over all experts "
                 "(mlx_lm/models/hunyuan.py MoeBlock.__call__), so every MoE layer's output differs")),
         ),
         fixture="hunyuan"),
    Arch("hunyuan_v1_moe", runs_as="hunyuan"),  # transformers' HunYuanMoEV1Config; mlx-lm's hunyuan module
    Arch("bailing_moe", _LM, "bailing_moe", S, "inclusionAI/Ling-mini-2.0",
         "word_embeddings, query_key_value, gate renamed by sanitize (gate.gate_proj), expert_bias, group routing",
         # inclusionAI/Ling-lite, Ling-mini-2.0
         family=Family("mlp.experts", "mlp.switch_mlp", _GLU),
         fixture="bailing_moe"),
    Arch("afmoe", _LM, "afmoe", S, "Arcee Trinity Mini",
         "nested router.gate, expert_bias, gated attention, sliding + full layers, muP embedding scale",
         # arcee-ai/Trinity-Mini: mlx-lm stacks in place, mlp.experts.{proj}.weight
         family=Family("mlp.experts", "mlp.experts", _GLU),
         fixture="afmoe"),
    Arch("exaone_moe", _LM, "exaone_moe", S, "LG K-EXAONE (MoE)",
         "MoEGate (no to_quantized), correction bias renamed by sanitize, sliding window",
         # LGAI-EXAONE/K-EXAONE-236B-A23B
         family=Family("mlp.experts", "mlp.switch_mlp", _GLU),
         # transformers' ExaoneMoe: layer l is MoE iff mlp_layer_types[l] == "sparse"
         renames=(
             Rename("is_moe_layer", "mlp_layer_types", "sparse_flags"),
         ),
         fixture="exaone_moe"),
    Arch("laguna", _LM, "laguna", S, "poolside Laguna",
         "gate and correction bias renamed by sanitize (gate.proj), per-head attention gate",
         # poolside/Laguna-XS
         family=Family("mlp.experts", "mlp.switch_mlp", _GLU),
         fixture="laguna"),
    Arch("llama4", _LM, "llama4", S, "meta-llama/Llama-4-Scout-17B-16E-Instruct",
         "fused transposed experts gate_up_proj [E, H, 2I], router, shared expert, dense + MoE layers, for mlx-lm "
         "(text only); and the whole release (vision_model with its pixel-shuffle adapter, multi_modal_projector) "
         "for mlx-vlm's llama4: " + VLM_DONE + ". transformers' text-only Llama4ForCausalLM (model_type llama4_text) "
         "converts for mlx-lm's llama4 (config under text_config, tensors under language_model.*) when its layers "
         "follow mlx-lm's hard-coded pattern (RoPE + chunked attention except every 4th layer, 4 layers or more). "
         "mlx-vlm's vision tower applies a fast GELU approximation where transformers' applies exact GELU, so logits "
         "of prompts with an image differ from transformers' (0.08 on a tiny model; the plan notes it)",
         # meta-llama/Llama-4-Scout-17B-16E: feed_forward.experts.gate_up_proj [E, H, 2I] (gate columns
         # first) and feed_forward.experts.down_proj [E, I, H]; mlx-lm stacks in place
         family=Family("feed_forward.experts", "feed_forward.experts", _GLU, "num_local_experts",
                       fused="halves_transposed", layout="fused"),
         # meta-llama/Llama-4-Scout-17B-16E-Instruct: vision_model.{patch_embedding.linear, class_embedding,
         # positional_embedding_vlm, model.layers.{b}, vision_adapter.mlp} and multi_modal_projector.linear_1
         # beside language_model.model.*; mlx-vlm's names are the release's
         vision=VisionLanguage("llama4", fixture="llama4"),
         # transformers' Llama4TextConfig: the MoE layers are moe_layers (interleave_moe_layer_step only builds its default)
         renames=(
             Rename("interleave_moe_layer_step", "moe_layers", "interleave_moe_layer_step", overrides=True),
         ),
         ignored=(Ignored("text_config.no_rope_layers", "not_every_fourth_nope", (
             "transformers' Llama4 uses RoPE and chunked attention where no_rope_layers (and layer_types) say, mlx-lm's "
             "llama4 in every layer but each 4th, which is NoPE with global attention (mlx_lm/models/llama4.py:59, 230), "
             "and needs 4 layers or more"),
             expected="no_rope_layers 1, 1, 1, 0 repeated over 4 layers or more, as the Llama-4 releases"),),
         ignored_by_vlm=(Ignored("vision_config.hidden_act", "always", (
             "on prompts with an image: transformers' Llama-4 vision encoder MLPs and pixel-shuffle MLP apply exact GELU "
             "(modeling_llama4.py Llama4VisionMLP, Llama4VisionMLP2: nn.GELU(), vision_config.hidden_act unread); "
             "mlx-vlm's llama4 applies mlx's fast approximation, x * sigmoid(1.702 x) (mlx_vlm/models/llama4/vision.py "
             "Llama4VisionMLP: nn.GELU(approx='fast')), so image features and the logits of prompts with an image "
             "differ (0.08 on a tiny Llama-4); text-only prompts are unaffected")),),
         text_args="mlx_lm.models.llama4.TextArgs",
         fixture="llama4"),
    # transformers' Llama4ForCausalLM, inside mlx-lm's llama4 (wrapped)
    Arch("llama4_text", runs_as="llama4",
         # transformers' Llama4ForCausalLM (model_type llama4_text: model.layers.*, lm_head): mlx-lm's llama4 reads
         # text_config and holds language_model.model.*, language_model.lm_head (its llama4_text module is the dense
         # Llama-4-architecture model, no experts)
         wrapped=Wrapped((("model.", "language_model.model."), ("lm_head.", "language_model.lm_head.")))),
    # llama4's vision_config: transformers' Llama4 projects the vision model's last hidden state (modeling_llama4.py
    # get_image_features); mlx-vlm's llama4 VisionConfig requires vision_feature_layer (the model reads its own
    # argument, -1)
    Arch("llama4_vision_model", renames=(
        Rename("vision_feature_layer", "", fixed(-1)),
    )),
    Arch("lfm2_moe", _LM, "lfm2_moe", S, "LiquidAI/LFM2-8B-A1B",
         "short conv + attention, w1/w2/w3 renamed by sanitize, conv weights transposed, expert_bias, tied "
         "(tie_word_embeddings false is refused: mlx-lm's lfm2_moe has no lm_head of its own)",
         # LiquidAI/LFM2-8B-A1B
         family=Family("feed_forward.experts", "feed_forward.switch_mlp", _W123),
         ignored=(Ignored("tie_word_embeddings", "untied", (
             "an lm_head of its own (transformers' model uses it), but mlx-lm's lfm2_moe computes logits with embed_tokens (mlx_lm/models/lfm2_moe.py "
             "Model.__call__: embed_tokens.as_linear) and has no lm_head"),
             expected="tie_word_embeddings true, as LiquidAI/LFM2-8B-A1B (and transformers' default)"),),
         fixture="lfm2_moe"),
    Arch("jamba", _LM, "jamba", S, "ai21labs/AI21-Jamba-Mini-1.5",
         ("Mamba + attention, MoE every other layer, conv1d transposed. mlx-lm's jamba weighs the chosen experts by a "
         "softmax over their logits only (weights sum to 1), transformers by the softmax over all experts (unnormalized): "
         "every MoE layer's output differs from transformers', by a factor of the chosen experts' share of the routing "
         "probability (the plan notes it; moequant converts the weights exactly, the difference is mlx-lm's model)"),
         # ai21labs/AI21-Jamba-Mini-1.5
         family=Family("feed_forward.experts", "feed_forward.switch_mlp", _GLU),
         ignored=(Ignored("num_experts_per_tok", "top_k_below_all", (
             "transformers weighs each chosen expert by its softmax over all experts, unnormalized "
             "(modeling_jamba.py:808-809); mlx-lm's jamba takes the softmax over the chosen top-k logits only "
             "(mlx_lm/models/jamba.py:241-244), which renormalizes the weights to sum to 1, so every MoE layer's "
             "output differs")),),
         fixture="jamba"),
    Arch("nemotron_h", _LM, "nemotron_h", S, "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16",
         "Mamba-2 + attention + MoE blocks (backbone.*), relu² experts up_proj/down_proj -> fc1/fc2, "
         "MoEGate (no to_quantized)",
         # nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B: non-gated experts, up_proj -> fc1, down_proj -> fc2
         family=Family("mixer.experts", "mixer.switch_mlp", {"up_proj": "fc1", "down_proj": "fc2"},
                       "n_routed_experts"),
         # transformers' NemotronH: layers_block_type (a release's hybrid_override_pattern, read into it)
         renames=(
             Rename("hybrid_override_pattern", "layers_block_type", "block_pattern"),
         ),
         fixture="nemotron_h"),
    Arch("granitemoehybrid", _LM, "granitemoehybrid", S, "ibm-granite/granite-4.0-h-tiny",
         "Mamba-2 + NoPE attention, GraniteMoE's fused experts and router.layer, shared_mlp, tied, muP",
         # ibm-granite/granite-4.0-h-tiny: as granitemoe
         family=Family("block_sparse_moe", "block_sparse_moe.switch_mlp", _GLU, "num_local_experts",
                       fused_names=("input_linear.weight", "output_linear.weight"), layout="fused"),
         # transformers' GraniteMoeHybrid spells its layer types linear_attention / full_attention (it remaps a
         # release's mamba / attention on reading); mlx-lm's takes mamba / attention
         renames=(
             Rename("layer_types", "layer_types", "granite_layer_types", overrides=True),
             Rename("position_embedding_type", "position_embedding_type", "rope_or_nope", overrides=True),
         ),
         fixture="granitemoehybrid"),
    Arch("deepseek_v32", _LM, "deepseek_v32", S, "deepseek-ai/DeepSeek-V3.2-Exp",
         "DeepSeek-V3 + the sparse-attention indexer (self_attn.indexer.*)",
         # deepseek-ai/DeepSeek-V3.2-Exp
         family=Family("mlp.experts", "mlp.switch_mlp", _GLU, "n_routed_experts"),
         fixture="deepseek_v32"),
    Arch("glm_moe_dsa", _LM, "glm_moe_dsa", S, "GLM-5",
         "DeepSeek-V3.2's model, transformers 5 config (rope_parameters)",
         # zai-org/GLM-5 (mlx-lm: deepseek_v32's model)
         family=Family("mlp.experts", "mlp.switch_mlp", _GLU, "n_routed_experts"),
         # transformers' GlmMoeDsa: sigmoid router with e_score_correction_bias and group-limited top-k (DeepSeek-V3's
         # noaux_tc), MoE iff mlp_layer_types[l] == "sparse" (first_k_dense_replace is only its default)
         renames=(
             Rename("topk_method", "", fixed("noaux_tc")),
             Rename("scoring_func", "", fixed("sigmoid")),
             Rename("first_k_dense_replace", "mlp_layer_types", "first_k_dense_replace", overrides=True),
             Rename("moe_layer_freq", "mlp_layer_types", "moe_layer_freq", overrides=True),
         ),
         fixture="glm_moe_dsa"),
    Arch("gemma4", _LM, "gemma4", S, "google/gemma-4-26B-A4B-it",
         "fused experts beside a dense MLP in every layer, router.proj beside the experts block (a gate found from "
         "the layer), k = v full-attention layers with proportional rope, sliding layers, layer_scalar, tied, softcap, "
         "for mlx-lm (text only); and the whole release (model.vision_tower, model.embed_vision; no audio tower) for "
         "mlx-vlm's gemma4: " + VLM_DONE,
         # google/gemma-4-26B-A4B-it: model.language_model.layers.{l}.experts.gate_up_proj [E, 2I, H] (gate
         # rows first) and experts.down_proj [E, H, I]; the router (router.proj) is the layer's, beside experts
         family=Family("experts", "experts.switch_glu", _GLU, "num_experts", layout="fused"),
         # google/gemma-4-26B-A4B-it: model.vision_tower.{patch_embedder, encoder.layers.{b}} and
         # model.embed_vision.embedding_projection beside model.language_model.*; mlx-vlm drops the model. prefix
         vision=VisionLanguage("gemma4", fixture="gemma4"),
         # transformers' Gemma4Config keeps vocab_size in text_config only; mlx-lm's gemma4 reads the outer one (default
         # 262144) and writes it into text_config (mlx_lm/models/gemma4.py ModelArgs.__post_init__)
         renames=(
             Rename("vocab_size", "text_config.vocab_size"),
         ),
         fixture="gemma4"),
    Arch("gemma4_text", _LM, "gemma4_text", S, "Gemma 4 26B-A4B (text-only, Gemma4ForCausalLM)",
         "gemma4's language model as transformers' Gemma4ForCausalLM saves it (model.layers.*)",
         # transformers' Gemma4ForCausalLM: the same layers under model.layers.{l}
         family=Family("experts", "experts.switch_glu", _GLU, "num_experts", layout="fused"),
         # transformers' Gemma4Text: the full-attention layers' head_dim / kv heads in per_layer_config
         renames=(
             Rename("global_head_dim", "per_layer_config", "full_attention_head_dim"),
             Rename("num_global_key_value_heads", "per_layer_config", "full_attention_kv_heads"),
         ),
         fixture="gemma4_text"),
    Arch("kimi_linear", _LM, "kimi_linear", S, "moonshotai/Kimi-Linear-48B-A3B-Instruct",
         "Kimi Delta Attention (conv1d transposed) + MLA without rope, block_sparse_moe w1/w2/w3 with gate, "
         "correction bias and shared experts moved to mlp by sanitize, dense first layer",
         # moonshotai/Kimi-Linear-48B-A3B-Instruct: block_sparse_moe.experts.{e}.w1/w2/w3; mlx-lm's sanitize moves
         # the rest of block_sparse_moe (gate, correction bias, shared_experts) to mlp
         family=Family("block_sparse_moe.experts", "mlp.switch_mlp", _W123, "num_experts"),
         # transformers' KimiLinear: KDA dims and layer kinds in their own keys (mlx-lm: linear_attn_config), MLA
         # without RoPE (no rope_theta), sigmoid group-limited routing, MoE iff mlp_layer_types[l] == "sparse"
         renames=(
             Rename("linear_attn_config", "", "kda_layers", overrides=True),
             Rename("rope_theta", "", fixed(None)),
             Rename("first_k_dense_replace", "mlp_layer_types", "first_k_dense_replace", overrides=True),
             Rename("moe_layer_freq", "mlp_layer_types", "moe_layer_freq", overrides=True),
             Rename("moe_router_activation_func", "", fixed("sigmoid"), overrides=True),
             Rename("use_grouped_topk", "", fixed(True), overrides=True),
         ),
         # transformers' conversion_mapping.py (kimi_linear): .block_sparse_moe. <-> .mlp., saved for the dense
         # first layer too, whose MLP mlx-lm reads as mlp.{gate,up,down}_proj
         tensor_renames=((r"\.block_sparse_moe\.(gate_proj|up_proj|down_proj)\.", r".mlp.\1."),),
         fixture="kimi_linear"),
    Arch("bailing_moe_linear", _LM, "bailing_moe_linear", S, "inclusionAI/Ring-mini-linear-2.0",
         "Ling 2.0's MoE (gate renamed by sanitize, expert_bias, group routing) with linear-attention layers "
         "(query_key_value, g_proj, group g_norm) and full-attention layers",
         # inclusionAI/Ring-mini-linear-2.0: bailing_moe's experts and router (mlp.gate.weight + expert_bias)
         family=Family("mlp.experts", "mlp.switch_mlp", _GLU),
         fixture="bailing_moe_linear"),
    Arch("bailing_hybrid", _LM, "bailing_hybrid", S, "inclusionAI Ling 2.5 (BailingMoeV2_5ForCausalLM)",
         "linear-attention + MLA (q_lora, kv_b_proj) layers, gate renamed by sanitize, expert_bias, group routing",
         # inclusionAI Ling 2.5 / Ling 3.0 (model_type bailing_hybrid; mlx-lm's module is bailing_hybrid, or
         # bailing_moe_v3 when architectures says BailingMoeV3ForCausalLM): mlp.experts.{e}.*, mlp.gate.weight
         family=Family("mlp.experts", "mlp.switch_mlp", _GLU),
         # transformers 5's BailingHybrid is Ling 3.0's Kimi Delta Attention + MLA (modeling_bailing_hybrid.py:
         # BailingHybridDeltaAttention), which mlx-lm runs as bailing_moe_v3; mlx-lm picks that module only for
         # architectures BailingMoeV3ForCausalLM, and otherwise Ling 2.5's lightning-attention bailing_hybrid
         architectures=(("BailingHybridForCausalLM", "bailing_moe_v3"),),
         fixture="bailing_hybrid"),
    Arch("bailing_moe_v3", _LM, "bailing_moe_v3", S, "inclusionAI/Ling-3.0-Flash (BailingMoeV3ForCausalLM)",
         "config.json says model_type bailing_hybrid; mlx-lm picks this module by architectures "
         "BailingMoeV3ForCausalLM (or transformers' BailingHybridForCausalLM save): Kimi Delta Attention (conv1d "
         "transposed) + MLA without q_lora, word_embeddings, mlp.gate + expert_bias, group routing",
         # not a config.json model_type: the key of the tiny release mlx-lm runs with its bailing_moe_v3 module
         # (model_type bailing_hybrid + BailingMoeV3ForCausalLM), which converts with the row above (same layout)
         family=Family("mlp.experts", "mlp.switch_mlp", _GLU),
         # transformers' BailingHybrid (Ling 3.0; mlx-lm's bailing_moe_v3): the attribute_map names, KDA heads of
         # linear_head_dim (config.json's head_dim is qk_rope_head_dim), shared experts of moe_intermediate_size,
         # interleaved RoPE, f_proj without LoRA, layer_types / mlp_layer_types for the layer kinds
         renames=(
             Rename("num_experts_per_tok", "num_experts_per_token"),
             Rename("n_group", "num_expert_group"),
             Rename("max_position_embeddings", "model_max_length"),
             Rename("head_dim", "linear_head_dim", overrides=True),
             Rename("moe_shared_expert_intermediate_size", "moe_intermediate_size", overrides=True),
             Rename("layer_group_size", "layer_types", "layer_group_size", overrides=True),
             Rename("first_k_dense_replace", "mlp_layer_types", "dense_then_sparse", overrides=True),
             Rename("short_conv_kernel_size", "linear_conv_kernel_dim", overrides=True),
             Rename("rope_interleave", "", fixed(True), overrides=True),
             Rename("no_kda_lora", "", fixed(True), overrides=True),
         ),
         # transformers' conversion_mapping.py (bailing_hybrid): .self_attn.dense. <-> .o_proj., saved as dense for
         # the Kimi Delta Attention layers too, whose output projection mlx-lm reads as attention.o_proj
         tensor_renames=((r"\.attention\.dense\.", ".attention.o_proj."),),
         fixture="bailing_moe_v3"),
    Arch("mimo_v2_flash", _LM, "mimo_v2_flash", S, "XiaomiMiMo/MiMo-V2-Flash",
         "full + sliding layers (hybrid_layer_pattern) with their own kv heads and rope theta, attention sinks, "
         "q/k head dim != v head dim, dense first layer, sigmoid router + e_score_correction_bias. A release's "
         "sliding_window_size S: mlx-lm's sliding layers attend to the last S positions (query included), "
         "transformers' to S + 1 (configuration_mimo_v2_flash.py: sliding_window = sliding_window_size + 1, as the "
         "SGLang reference): the two differ once a sequence is longer than S; a config written by transformers with "
         "only sliding_window converts to sliding_window_size = sliding_window, transformers' window",
         # XiaomiMiMo/MiMo-V2-Flash: mlp.experts.{e}.*, mlp.gate.weight + e_score_correction_bias
         family=Family("mlp.experts", "mlp.switch_mlp", _GLU, "n_routed_experts"),
         # transformers' MiMoV2Flash: sliding layers have twice the kv heads and attention sinks, full layers
         # neither; per-layer-type rope_parameters; no shared experts; sigmoid noaux_tc routing
         renames=(
             Rename("hybrid_layer_pattern", "layer_types", "sliding_ints"),
             Rename("moe_layer_freq", "mlp_layer_types", "sparse_ints"),
             Rename("add_swa_attention_sink_bias", "", fixed(True)),
             Rename("add_full_attention_sink_bias", "", fixed(False)),
             # both mask kv > q - window; transformers' window is sliding_window (a release's sliding_window_size + 1),
             # mlx-lm's is sliding_window_size: filled from sliding_window only where the config has no
             # sliding_window_size (a stated one is what mlx-lm reads; its row's note says how the two differ)
             Rename("sliding_window_size", "sliding_window"),
             Rename("n_shared_experts", "", fixed(None)),
             Rename("topk_method", "", fixed("noaux_tc")),
             Rename("scoring_func", "", fixed("sigmoid")),
             Rename("layernorm_epsilon", "rms_norm_eps"),
             Rename("rope_theta", "rope_parameters.full_attention.rope_theta"),
             Rename("swa_rope_theta", "rope_parameters.sliding_attention.rope_theta"),
             Rename("swa_num_attention_heads", "num_attention_heads"),
             Rename("swa_num_key_value_heads", "num_key_value_heads", "twice"),
             Rename("swa_head_dim", "head_dim"),
             Rename("swa_v_head_dim", "v_head_dim"),
             Rename("partial_rotary_factor", "rope_parameters", "same_partial_rotary_factor"),
         ),
         fixture="mimo_v2_flash"),
    Arch("longcat_flash", _LM, "longcat_flash", S, "meituan-longcat/LongCat-Flash-Chat",
         "two MLA blocks and two dense MLPs per layer (self_attn.{0,1}, mlps.{0,1}), shortcut MoE whose router "
         "(mlp.router.classifier, out = E + zero_expert_num) also scores identity experts, correction bias",
         # meituan-longcat/LongCat-Flash-Chat: mlp.experts.{e}.*, router mlp.router.classifier scoring the routed
         # and the zero (identity) experts, so its out is E + zero_expert_num
         family=Family("mlp.experts", "mlp.switch_mlp", _GLU, "n_routed_experts"),
         # transformers' LongcatFlash: MLA that always scales q and kv latents by sqrt(hidden / rank), routing that
         # sends the zero experts' share through unchanged (identity)
         renames=(
             Rename("attention_method", "", fixed("MLA")),
             Rename("zero_expert_type", "", fixed("identity")),
             Rename("mla_scale_q_lora", "", fixed(True)),
             Rename("mla_scale_kv_lora", "", fixed(True)),
         ),
         fixture="longcat_flash"),
    Arch("longcat_flash_ngram", _LM, "longcat_flash_ngram", S, "LongCat-Flash (n-gram embeddings)",
         "LongCat-Flash's layers, embed_tokens renamed by sanitize, n-gram embedders and projections "
         "(ngram_embeddings.*: embedding role)",
         # LongCat-Flash with n-gram embeddings (mlx-lm's longcat_flash_ngram): LongCat-Flash's experts
         family=Family("mlp.experts", "mlp.switch_mlp", _GLU, "n_routed_experts"),
         fixture="longcat_flash_ngram"),
    Arch("mistral4", _LM, "mistral4", S, "Mistral Small 4 (language model, transformers' Mistral4ForCausalLM)",
         "MLA with q_lora, YaRN + Llama-4 attention scaling, fused experts (gate_up_proj [E, 2I, H]), correction "
         "bias, shared experts. The Mistral Small 4 release itself (a mistral3 vision-language checkpoint, "
         "text_config model_type mistral4) is not converted yet; its language model as transformers' "
         "Mistral4ForCausalLM saves it is",
         # Mistral Small 4's language model as transformers' Mistral4ForCausalLM saves it (model_type mistral4):
         # mlp.experts.gate_up_proj [E, 2I, H] (gate rows first) and mlp.experts.down_proj [E, H, I]
         family=Family("mlp.experts", "mlp.switch_mlp", _GLU, "n_routed_experts", layout="fused"),
         fixture="mistral4"),
    # ---- need mlx-lm's sanitize over the whole checkpoint (Qwen3-Next family), or MXFP4 sources ----
    Arch("qwen3_next", _LM, "qwen3_next", S, "Qwen/Qwen3-Next-80B-A3B-Instruct",
         "Gated DeltaNet + attention, shared expert gate, (1 + w) norms",
         # Qwen/Qwen3-Next-80B-A3B
         family=Family("mlp.experts", "mlp.switch_mlp", _GLU, "num_experts",
                       handoff=Handoff.PER_EXPERT),
         # transformers' Qwen3Next: layer_types (full_attention_interval is only read to build it)
         renames=(
             Rename("full_attention_interval", "layer_types", "full_attention_interval"),
         ),
         fixture="qwen3_next"),
    Arch("qwen3_5_moe", _LM, "qwen3_5_moe", S, "Qwen3.5-35B-A3B",
         "fused experts under model.language_model, Gated DeltaNet, (1 + w) norms, for mlx-lm (text only); and the "
         "whole release (model.visual, no deepstack) for mlx-vlm's qwen3_5_moe: " + VLM_DONE + ". transformers' "
         "text-only Qwen3_5MoeForCausalLM (model_type qwen3_5_moe_text) converts for mlx-lm's qwen3_5_moe",
         # Qwen/Qwen3.5-35B-A3B: model.language_model.layers.{l}.mlp.experts.gate_up_proj [E, 2I, H]
         # (gate rows first) and mlp.experts.down_proj [E, H, I]
         family=Family("mlp.experts", "mlp.switch_mlp", _GLU, "num_experts",
                       layout="fused"),
         # Qwen/Qwen3.5-35B-A3B: model.visual.{patch_embed, pos_embed, blocks.{b}, merger} (no deepstack)
         # beside model.language_model.*; mlx-vlm: vision_tower.*, language_model.model.*
         vision=VisionLanguage("qwen3_5_moe", fixture="qwen3_5_moe"),
         # transformers' Qwen3_5Moe (text_config): layer_types (full_attention_interval is only read to build it)
         renames=(
             Rename("full_attention_interval", "layer_types", "full_attention_interval"),
         ),
         text_args="mlx_lm.models.qwen3_5.TextModelArgs",
         fixture="qwen3_5_moe"),
    # transformers' Qwen3_5MoeForCausalLM (the language model alone, model.layers.*): mlx-lm's qwen3_5_moe reads a
    # flat config as its text_config and prefixes the tensors with language_model. itself (sanitize)
    Arch("qwen3_5_moe_text", runs_as="qwen3_5_moe"),
    Arch("qwen3_vl_moe", _LM, "qwen3_vl_moe", S, "Qwen/Qwen3-VL-30B-A3B-Instruct",
         "fused in x out experts under model.language_model, for mlx-lm (text only); and the whole release (model.visual "
         "+ deepstack mergers) for mlx-vlm's qwen3_vl_moe: " + VLM_DONE + ". mlx-vlm's vision tower swaps "
         "transformers' two GELUs (exact in its blocks, the tanh approximation in its mergers), so logits of prompts "
         "with an image differ from transformers' slightly (5e-4 on a tiny model; the plan notes it)",
         # Qwen/Qwen3-VL-30B-A3B: model.language_model.layers.{l}.mlp.experts.gate_up_proj [E, H, 2I]
         # (gate columns first) and down_proj [E, I, H]; transformers 5's save_pretrained writes them out x in,
         # [E, 2I, H] and [E, H, I] (its loader transposes only a shape that is not its model's)
         family=Family("mlp.experts", "mlp.switch_mlp", _GLU, "num_experts",
                       fused="halves_transposed_or_rows", layout="fused"),
         # Qwen/Qwen3-VL-30B-A3B-Instruct: model.visual.{patch_embed, pos_embed, blocks.{b}, merger,
         # deepstack_merger_list.{d}} beside model.language_model.*; mlx-vlm: vision_tower.*, language_model.model.*
         vision=VisionLanguage("qwen3_vl_moe", fixture="qwen3_vl_moe"),
         # transformers' Qwen3VLMoeText always renormalizes the top-k routing weights (modeling_qwen3_vl_moe.py:166,
         # Qwen3VLMoeTextTopKRouter) and has no norm_topk_prob; mlx-lm's qwen3_moe (qwen3_vl_moe's language model)
         # requires it
         renames=(
             Rename("norm_topk_prob", "", fixed(True)),
         ),
         ignored_by_vlm=(Ignored("vision_config.hidden_act", "always", (
             "on prompts with an image: transformers' Qwen3-VL vision blocks apply vision_config.hidden_act (the releases' "
             "gelu_pytorch_tanh, GELU's tanh approximation) and its patch mergers exact GELU (modeling_qwen3_vl_moe.py "
             "Qwen3VLMoeVisionMLP, Qwen3VLMoeVisionPatchMerger); mlx-vlm's qwen3_vl_moe applies exact GELU in the blocks "
             "and the tanh approximation in the mergers (mlx_vlm/models/qwen3_vl_moe/vision.py MLP, PatchMerger), so "
             "image features and the logits of prompts with an image differ (5e-4 on a tiny Qwen3-VL-MoE); text-only "
             "prompts are unaffected")),),
         text_args="mlx_lm.models.qwen3_moe.ModelArgs",
         fixture="qwen3_vl_moe"),
    # qwen3_vl_moe's vision_config: transformers 5 names it qwen3_vl_moe_vision; mlx-vlm's VisionModel takes only the
    # releases' qwen3_vl_moe (mlx_vlm/models/qwen3_vl_moe/vision.py:195), the same tower
    Arch("qwen3_vl_moe_vision", renames=(
        Rename("model_type", "", fixed("qwen3_vl_moe"), overrides=True),
    )),
    Arch("minimax_m3_vl", _LM, "minimax_m3_vl", S, "MiniMaxAI/MiniMax-M3",
         "language model under language_model.model, for mlx-lm (text only; mlx-lm drops the vision tower): "
         "block_sparse_moe.experts.{e}.w1/w2/w3, shared experts, dense first layer (mlp.*), e_score_correction_bias, "
         "lightning-indexer sparse attention (self_attn.index_*), (1 + w) norms; and the whole release (CLIP-like "
         "vision tower, patch-merging projector) for mlx-vlm's minimax_m3_vl: " + VLM_DONE + ", the shared expert "
         "beside the routed stack (pack_shared_expert false). mlx-vlm's indexer selects one set of key blocks for "
         "all index heads where transformers' selects per head, so on prompts longer than index_block_size x "
         "index_topk_blocks tokens its logits differ from transformers' (the plan notes it; mlx-lm's do not)",
         # MiniMaxAI/MiniMax-M3: language_model.model.layers.{l}.block_sparse_moe.experts.{e}.w1/w2/w3 (mlx-lm runs
         # the language model; the vision tower is dropped), shared_experts and dense layers' mlp.{gate,up,down}_proj
         family=Family("block_sparse_moe.experts", "block_sparse_moe.switch_mlp", _W123, "num_local_experts"),
         # MiniMaxAI/MiniMax-M3: vision_tower.vision_model.* (CLIP-like, Conv3d patch embedding), multi_modal_projector.*
         # and patch_merge_mlp.* beside language_model.model.*, which mlx-vlm keeps as they are
         vision=VisionLanguage("minimax_m3_vl", fixture="minimax_m3_vl"),
         renames=(
             # transformers' MiniMaxM3VL rotates int(head_dim * rope_parameters.partial_rotary_factor) dims (default
             # 1.0, modeling_minimax_m3_vl.py:309) and never reads rotary_dim, which mlx-lm and mlx-vlm rotate
             Rename("rotary_dim", "", "rotary_dim", overrides=True),
             # mlx-vlm packs the shared expert into the routed stack (switch_mlp.gate_up_proj [E + 1, 2I, H]) where
             # shared_intermediate_size == intermediate_size, unless pack_shared_expert is false
             # (mlx_vlm/models/minimax_m3_vl/config.py TextConfig): false keeps mlx-lm's layout, per-projection
             # switch_mlp beside shared_experts, the same function (the shared expert's weight is 1 either way)
             Rename("pack_shared_expert", "", fixed(False)),
         ),
         ignored_by_vlm=(Ignored("text_config.index_n_heads", "index_heads_pooled", (
             "on prompts longer than index_block_size x index_topk_blocks tokens: transformers' lightning indexer "
             "selects key blocks for each index head, one selection per key/value head group "
             "(modeling_minimax_m3_vl.py MiniMaxM3VLIndexer.forward, build_block_mask); mlx-vlm's takes the maximum "
             "block score over the index heads and selects one set of blocks for every head "
             "(mlx_vlm/models/minimax_m3_vl/language.py MiniMaxM3Indexer.select_blocks, "
             "_select_sparse_block_indices_compiled), so the sparse layers attend to other keys and the logits "
             "differ (5.9 max abs on a tiny MiniMax-M3 at 32 tokens); shorter prompts are unaffected, and mlx-lm's "
             "minimax_m3_vl selects as transformers does")),),
         text_args="mlx_lm.models.minimax_m3_vl.TextArgs",
         fixture="minimax_m3_vl"),
    # minimax_m3_vl's vision_config: mlx-vlm's VisionConfig takes its merge and temporal patch sizes from
    # img_token_compression_config only (mlx_vlm/models/minimax_m3_vl/config.py VisionConfig.__post_init__), where
    # transformers' MiniMaxM3VLVisionConfig states them flat
    Arch("minimax_m3_vl_vision", renames=(
        Rename("img_token_compression_config", "", "img_token_compression_config"),
    )),
    Arch("step3p5", _LM, "step3p5", S, "stepfun-ai/Step-3.5-Flash",
         "experts published stacked (moe.{gate,up,down}_proj [E, out, in]) and handed to sanitize under those names, "
         "which renames them and adds 1 to every zero-centred norm on seeing them; router_bias, share_expert, "
         "full + sliding layers with their own heads, per-layer rope theta, head-wise attention gate, clamped SwiGLU",
         # stepfun-ai/Step-3.5-Flash: experts published stacked, moe.{gate,up,down}_proj.weight [E, out, in]; they
         # reach mlx-lm's sanitize under those names (no per-expert key matches `moe.{e}.…`), which renames
         # them to mlp.switch_mlp and, on seeing them, adds 1 to every zero-centred norm
         family=Family("moe", "mlp.switch_mlp", _GLU, "moe_num_experts", layout="stacked"),
         # transformers 5.25 reads step3p5 only as step3p7's text_config (Step3p7TextConfig), in its own names: a
         # head-wise attention gate always (gating), sigmoid routing with router_bias always, the MoE layers in
         # mlp_layer_types, the sliding layers' heads in num_sliding_attention_heads, RoPE (and its scaling) per
         # layer type
         renames=(
             Rename("use_head_wise_attn_gate", "", fixed(True)),
             Rename("use_moe_router_bias", "", fixed(True)),
             Rename("moe_router_activation", "", fixed("sigmoid")),
             Rename("moe_layers_enum", "mlp_layer_types", "sparse_indices"),
             Rename("attention_other_setting", "num_sliding_attention_heads", "sliding_attention_setting"),
             Rename("rope_theta", "rope_parameters", "per_layer_rope_theta"),
             Rename("partial_rotary_factors", "rope_parameters", "per_layer_partial_rotary_factors"),
             Rename("rope_scaling", "rope_parameters", "scaled_rope_scaling"),
             Rename("yarn_only_types", "rope_parameters", "scaled_layer_types"),
         ),
         fixture="step3p5"),
    Arch("gpt_oss", _LM, "gpt_oss", S, "openai/gpt-oss-20b",
         "MXFP4 fused experts (gate/up rows interleaved) read as MLX mxfp4, fused biases, router bias, sinks; and "
         "transformers' own float save (gate_up_proj [E, H, 2I], columns interleaved). mlx-lm's YaRN always "
         "truncates the correction range, the releases say truncate false: logits differ slightly from "
         "transformers' (a plan note)",
         # openai/gpt-oss-20b: mlp.experts.gate_up_proj_blocks [E, 2I, H/32, 16] (gate and up rows
         # interleaved) + _scales, down_proj_blocks/_scales — read as gate_up_proj.weight/.scales (MLX
         # mxfp4) — and fused biases gate_up_proj_bias [E, 2I], down_proj_bias [E, H]; mlx-lm stacks in
         # place (mlp.experts.{proj}). transformers 5's save_pretrained (and the BF16 re-releases) write the
         # float parameters bare: gate_up_proj [E, H, 2I] (gate and up columns interleaved: gate_up[..., ::2]
         # is gate, modeling_gpt_oss.GptOssExperts._apply_gate) and down_proj [E, I, H]; I == H in gpt-oss, so
         # the names, not the shapes, tell the two apart
         family=Family("mlp.experts", "mlp.experts", _GLU, "num_local_experts", fused="interleaved",
                       fused_names=("gate_up_proj.weight", "down_proj.weight"), layout="fused",
                       fused_bias_names=("gate_up_proj_bias", "down_proj_bias"),
                       fused_also=(FusedAlso(("gate_up_proj", "down_proj"), "interleaved_transposed"),)),
         # gpt-oss releases (and transformers' GptOssConfig) say truncate false
         ignored=(Ignored("rope_parameters.truncate", "false", (
             "transformers' YaRN keeps the correction range unrounded (modeling_rope_utils.py:473, `if truncate`), "
             "mlx-lm's always floors and ceils it (mlx_lm/models/gpt_oss.py builds it with initialize_rope; "
             "mlx_lm/models/rope_utils.py:151-152), so every rotary frequency in "
             "the blend range differs slightly and so do the logits (6e-3 at most on a tiny gpt-oss)")),),
         fixture="gpt_oss"),
    # databricks/dbrx-instruct (and transformers 5's save): transformer.blocks.{l}.ffn.experts.mlp.w1 / v1 / w2, each
    # [E·I, H] (w2 holds each expert's down weight transposed), router ffn.router.layer; mlx-lm's sanitize splits them
    # into per-expert Linear modules ffn.experts.{e}.w1/v1/w2 (no SwitchLinear), which plan.find_roles takes as
    # routed experts and quantizes one by one, as mlx_lm.convert does. The fused tensors reach sanitize as they are
    # (row_blocks, checked first); mlx_lm.convert's own output (per expert) is handed over per expert
    Arch("dbrx", _LM, "dbrx", S, "databricks/dbrx-instruct",
         "ffn.experts.mlp.w1/v1/w2 fused [E·I, H], split by mlx-lm's sanitize into one Linear per expert (each "
         "quantized on its own, as mlx_lm.convert does); ffn.router.layer is the router gate; transformers 5 "
         "rotates with rope_parameters.rope_theta, mlx-lm with attn_config.rope_theta: where config.json states "
         "both and they differ, the output takes transformers' (the plan notes it)",
         family=Family("ffn.experts", "ffn.experts", {"w1": "w1", "v1": "v1", "w2": "w2"},
                       "ffn_config.moe_num_experts", handoff=Handoff.PER_EXPERT,
                       row_blocks=("mlp.w1", "mlp.v1", "mlp.w2")),
         # transformers 5.25 reads rope_parameters.rope_theta (its default 10000 where config.json has none:
         # DbrxConfig never reads attn_config.rope_theta) and attn_config.clip_qkv
         renames=(Rename("attn_config", "rope_parameters.rope_theta", "attn_config_rope_theta", overrides=True),),
         fixture="dbrx"),
    # ---- not yet ----
    # MiniMax-Text-01/M1 in transformers: lightning (linear) attention layers beside softmax attention
    # (modeling_minimax.py MiniMaxLightningAttention) and a softmax router; mlx-lm's minimax module is
    # MiniMax-M2's architecture (softmax attention everywhere, sigmoid router with e_score_correction_bias)
    Arch("minimax", _LM, "minimax", N, "MiniMaxAI/MiniMax-Text-01",
         "MiniMax-Text-01 / MiniMax-M1 (lightning attention) cannot run in mlx-lm: its minimax model is MiniMax-M2's "
         "architecture. MiniMax-M2 checkpoints (model_type minimax_m2) are supported"),
    Arch("flex_olmo", _LM, "flex_olmo", N, "allenai/FlexOlmo-7x7B-1T",
         "mlx-lm 0.32.2 has no model for it (FlexOlmo normalizes after attention and after the MoE block, OLMo-2 "
         "style; mlx-lm's olmoe normalizes before them, so it cannot run FlexOlmo's weights): run it with "
         "transformers, or convert once mlx-lm has a flex_olmo model"),
    Arch("granitemoeshared", _LM, "granitemoeshared", N, "ibm-research/moe-7b-1b-active-shared-experts",
         "mlx-lm 0.32.2 has no model for it (GraniteMoE with a shared MLP beside the experts; mlx-lm's granitemoe "
         "has no shared MLP): run it with transformers, or convert once mlx-lm has a granitemoeshared model"),
    Arch("jetmoe", _LM, "jetmoe", N, "jetmoe/jetmoe-8b",
         "mlx-lm 0.32.2 has no model for it (JetMoE routes attention heads too: a mixture of attention heads, "
         "experts.input_linear / output_linear per attention layer): run it with transformers, or convert once "
         "mlx-lm has a jetmoe model"),
    # mlx-lm's phixtral ModelArgs reads model_dim / num_heads / num_layers / num_vocab, which the release's
    # config.json (model_type phi-msft: n_embd, n_head, n_layer, vocab_size) does not carry, so mlx-lm runs it
    # only at its defaults (phi-2's 2560 x 32 layers); mixer.Wqkv and lm_head.linear would need role patterns
    Arch("phixtral", _LM, "phixtral", N, "mlabonne/phixtral-4x2_8",
         "mlx-lm cannot read phixtral's published config.json (it expects model_dim, num_heads, num_layers, "
         "num_vocab; the release has n_embd, n_head, n_layer, vocab_size), so no output would load: run it with "
         "transformers"),
    # tried: a tiny release in Kimi-Linear's layout (custom code, no transformers class; names inferred from
    # mlx-lm's sanitize) converted exactly at --no-quantize; the attention-residual projections (*_res_proj) now
    # stay float (rule model-keeps). What remains: a family like kimi_linear's and that tiny release
    Arch("kimi_k3", _LM, "kimi_k3", N, "Kimi-K3",
         "not converted yet (no Kimi-K3 checkpoint layout checked against its producer); mlx_lm.convert converts "
         "it meanwhile"),
    # mlx-lm's attention holds its block-diagonal output projection as a SwitchLinear (self_attn.o_a_proj), which
    # plan.find_roles takes for routed experts (and the hyper-connection mixers for router gates); the release is
    # DeepSeek's own (layers.{l}.ffn.experts.{e}.w1/w2/w3, attn.wq_a/wkv/wo_a) in fp8/fp4 with ue8m0 `.scale`
    # tensors, a source format moequant does not read
    Arch("deepseek_v41", _LM, "deepseek_v41", N, "DeepSeek-V4.1",
         "not converted yet (DeepSeek's own fp8/fp4 release format, and an attention layer moequant would mistake "
         "for experts); mlx_lm.convert converts it meanwhile"),
    Arch("deepseek_v41_text", _LM, "deepseek_v41", N, "DeepSeek-V4.1",
         "not converted yet, as deepseek_v41; mlx_lm.convert converts it meanwhile"),
    # mlx-lm's muse_spark attention calls Metal-only kernels (mlx_lm.kernels.qk_norm_rope, qk_norm,
    # rms_norm_sigmoid_gate): no Linux CPU smoke test. mlx-vlm 0.7.10's muse_spark (transformers'
    # MuseSparkForConditionalGeneration, whole) likewise: its attention calls mlx_vlm.kernels.qk_norm_rope
    # (mlx_vlm/models/muse_spark/language.py:153; qk_norm at :157, rms_norm_sigmoid_gate at :172, expert_routing at
    # :235, norm_add_norm at :293), each an mx.fast.metal_kernel with no CPU path: on Linux CPU the first forward
    # raises "RuntimeError [metal_kernel] No Metal back-end." (mlx_vlm/kernels/qk_norm_rope.py:83). The rest is
    # rows: fused experts (mlp.experts.gate_up_proj [E, 2I, h], h = moe_hidden_size, stacked in place) and a tiny
    # release
    Arch("muse_spark", _LM, "muse_spark", N, "meta-models/Muse-Spark-Open-816B-A42B",
         "not converted yet: mlx-lm and mlx-vlm run it only on Apple GPUs (Metal kernels in its attention and "
         "router), so moequant cannot check its output; mlx_lm.convert or mlx_vlm.convert on a Mac converts it "
         "meanwhile"),
    # ---- VLMs (mlx-vlm; mlx-lm runs some of their language models) ----
    Arch("kimi_vl", _VLM, "kimi_vl", S, "moonshotai/Kimi-VL-A3B-Instruct",
         "MoonViT vision tower (vision_tower.encoder.*) + projector + DeepSeek-V3 MoE (MLA without q_lora, shared "
         "experts, correction bias, MoEGate) under language_model.model, for mlx-vlm only: " + VLM_DONE + ". No "
         "text-only output: mlx-lm 0.32.2's kimi_vl cannot load the release itself (its sanitize never splits "
         "self_attn.kv_b_proj into the embed_q / unembed_out its DeepSeek-V3 attention has)",
         # moonshotai/Kimi-VL-A3B-Instruct: language_model.model.layers.{l}.mlp.experts.{e}.* (DeepSeek-V3 layout)
         family=Family("mlp.experts", "mlp.switch_mlp", _GLU, "n_routed_experts"),
         # moonshotai/Kimi-VL-A3B-Instruct: vision_tower.{patch_embed, encoder.blocks.{b}.{wqkv, wo, norm0, norm1,
         # mlp.fc0/fc1}, encoder.final_layernorm} and multi_modal_projector.{pre_norm, linear_1, linear_2} beside
         # language_model.model.*; mlx-vlm drops `encoder.` and nests wqkv/wo under attn
         vision=VisionLanguage("kimi_vl", fixture="kimi_vl")),
    Arch("glm4v_moe", _VLM, "glm4v_moe", S, "zai-org/GLM-4.5V",
         "GLM ViT (model.visual: Conv3d patch embedding, downsample Conv2d, merger) + GLM-4.5-Air's MoE (mrope with "
         "partial rotary, attention bias, dense first layer, shared experts, correction bias) under "
         "model.language_model, for mlx-vlm only: " + VLM_DONE + ". No text-only output: mlx-lm 0.32.2 has no "
         "glm4v_moe model",
         # zai-org/GLM-4.5V (mlx-vlm only): GLM-4.5's experts under model.language_model.layers.{l}.mlp.experts.{e}
         family=Family("mlp.experts", "mlp.switch_mlp", _GLU, "n_routed_experts"),
         # zai-org/GLM-4.5V: model.visual.{patch_embed.proj (Conv3d), post_conv_layernorm, embeddings.position_embedding,
         # blocks.{b}, post_layernorm, downsample (Conv2d), merger} beside model.language_model.* (GLM-4.5-Air's MoE);
         # mlx-vlm: vision_tower.*, language_model.model.*
         vision=VisionLanguage("glm4v_moe", fixture="glm4v_moe"),
         # transformers' Glm4vMoeConfig names the token before an image image_start_token_id; mlx-vlm's glm4v_moe
         # ModelConfig reads vision_start_token_id (default 151339, GLM-4.5V's) to find images for their 3-D positions
         # (mlx_vlm/models/glm4v_moe/language.py get_rope_index), else gives image tokens text positions
         renames=(
             Rename("vision_start_token_id", "image_start_token_id"),
             Rename("vision_end_token_id", "image_end_token_id"),
         )),
    # glm4v_moe's text_config: transformers' Glm4vMoeText has no q/k norm (modeling_glm4v_moe.py
    # Glm4vMoeTextAttention); mlx-vlm's glm4v_moe TextConfig requires use_qk_norm
    Arch("glm4v_moe_text", renames=(
        Rename("use_qk_norm", "", fixed(False)),
    )),
    Arch("kimi_k25", _VLM, "kimi_k25", S, "moonshotai/Kimi-K2.5",
         "MoonViT vision tower (vision_tower.encoder.*) + projector (mm_projector) + DeepSeek-V3 MoE (MLA, dense first "
         "layer, shared experts, correction bias, MoEGate) under language_model.model, as transformers' "
         "Kimi_K25ForConditionalGeneration saves it and as the release publishes it (routed experts in compressed-tensors "
         "pack-quantized int4, read exactly), for mlx-vlm: " + VLM_DONE + "; for mlx-lm, mlx-lm's kimi_k25 runs the "
         "language model (text only)",
         # moonshotai/Kimi-K2.5: language_model.model.layers.{l}.mlp.experts.{e}.* (DeepSeek-V3 layout)
         family=Family("mlp.experts", "mlp.switch_mlp", _GLU, "n_routed_experts"),
         # vision_tower.{patch_embed.{proj, pos_emb}, encoder.blocks.{b}.{wqkv, wo, norm0, norm1, mlp.fc0/fc1},
         # encoder.final_layernorm} and mm_projector.{pre_norm, proj.0, proj.2} beside language_model.*; mlx-vlm drops
         # `encoder.` and nests wqkv/wo under attn
         vision=VisionLanguage("kimi_k25", fixture="kimi_k25"),
         # transformers 5.25's save_pretrained undoes its own load renames (conversion_mapping.py "kimi_k25"): its
         # blocks -> layers rename, meant for the vision tower, writes the language model's layers as blocks, and
         # the projector's pre_norm (no rename) keeps the model. prefix
         source_prefixes=(("language_model.model.blocks.", "language_model.model.layers."),
                          ("model.mm_projector.", "mm_projector.")),
         # mlx-vlm's kimi_k25 ModelConfig finds image tokens by media_placeholder_token_id (the release's name)
         renames=(Rename("media_placeholder_token_id", "image_token_id"),),
         ignored_by_vlm=(Ignored("vision_config.hidden_act", "always", (
             "on prompts with an image: transformers' Kimi-K2.5 vision blocks apply vision_config.hidden_act (the "
             "release's gelu_pytorch_tanh, GELU's tanh approximation) in their MLPs and LayerNorms with eps 1e-5 "
             "(modeling_kimi_k25.py Kimi_K25VisionMLP, Kimi_K25VisionEncoderLayer); mlx-vlm's kimi_k25 applies exact "
             "GELU and eps 1e-6 (mlx_vlm/models/kimi_k25/vision.py MLP, Qwen2VLVisionBlock, VisionModel), so image "
             "features and the logits of prompts with an image differ (5e-5 on a tiny Kimi-K2.5); text-only prompts "
             "are unaffected")),)),
    # kimi_k25's vision_config in transformers' names; mlx-vlm's VisionConfig reads the release's (its defaults are
    # the release's 27 layers x 1152 x 16 heads) and builds its tower only for model_type moonvit
    Arch("kimi_k25_vision", renames=(
        Rename("model_type", "", fixed("moonvit"), overrides=True),
        Rename("depth", "num_hidden_layers"),
        Rename("embed_dim", "hidden_size"),
        Rename("num_heads", "num_attention_heads"),
        Rename("init_pos_emb_height", "pos_emb_height"),
        Rename("init_pos_emb_width", "pos_emb_width"),
    )),
    # transformers 5.25 writes it as model_type ernie4_5_vl_moe (Ernie4_5_VLMoeForConditionalGeneration) in the
    # release's tensor names: model.layers.{l}.mlp.experts.{0..2E-1}.{gate,up,down}_proj (text experts, then the
    # multimodal ones, each set its own moe_intermediate_size), mlp.gate.weight and mlp.gate.weight_1 stored [H, E],
    # mlp.moe_statics.e_score_correction_bias [2, E], model.vision_model.*, model.resampler_model.*; its config.json
    # nested (text_config: moe_num_experts = E per set, mlp_layer_types, rope_parameters.mrope_section). mlx-vlm's
    # sanitize stacks experts 0..E-1 into switch_mlp and E..2E-1 into switch_mlp_1 (its moe_num_experts [E, E]),
    # transposes both gates and splits the bias
    Arch("ernie4_5_moe_vl", _VLM, "ernie4_5_moe_vl", S, "baidu/ERNIE-4.5-VL-28B-A3B-PT",
         "DFNRope vision tower (vision_model) + resampler + ERNIE-4.5's MoE with two expert sets per layer "
         "(text and multimodal, each with its router and correction bias), shared experts, dense first layer, "
         "3-D RoPE, for mlx-vlm only: " + VLM_DONE + ". No text-only output: mlx-lm 0.32.2 has no ernie4_5_moe_vl "
         "model. On prompts with an image, mlx-vlm sends the image's start and end tokens to the text experts, "
         "transformers to the multimodal ones; mlx-vlm's resampler norms and vision rotary base are constants (the "
         "plan notes a config stating others)",
         family=Family("mlp.experts", "mlp.switch_mlp", _GLU, "moe_num_experts", handoff=Handoff.PER_EXPERT),
         vision=VisionLanguage("ernie4_5_moe_vl", text_at_root=True, fixture="ernie4_5_moe_vl"),
         # mlx-vlm's ModelConfig: the resampler's sizes, and the image token by the release's name (im_patch_id,
         # which replaces image_token_id in its __post_init__)
         renames=(
             Rename("im_patch_id", "image_token_id"),
             Rename("pixel_hidden_size", "vision_config.hidden_size"),
             Rename("spatial_conv_size", "vision_config.spatial_merge_size"),
             Rename("temporal_conv_size", "vision_config.temporal_merge_size"),
         ),
         ignored_by_vlm=(Ignored("image_start_token_id", "always", (
             "on prompts with an image: transformers' Ernie4_5_VLMoeMoeBlock sends the image's start and end "
             "tokens (image_start_token_id, image_end_token_id) to the multimodal experts with its image tokens "
             "(moe_mm_token_type_ids, processing_ernie4_5_vl_moe.py create_moe_mm_token_type_ids); mlx-vlm's "
             "ernie4_5_moe_vl sends only the image tokens there, the start and end tokens to the text experts "
             "(mlx_vlm/models/ernie4_5_moe_vl/ernie4_5_moe_vl.py Model._build_token_type_ids), so the logits of "
             "prompts with an image differ; text-only prompts are unaffected")),
             # constants of mlx-vlm's ernie4_5_moe_vl where transformers reads config values (their defaults)
             Ignored("rms_norm_eps", other_than(1e-5), (
                 "on prompts with an image: transformers' resampler normalizes its output with "
                 "text_config.rms_norm_eps (modeling_ernie4_5_vl_moe.py "
                 "Ernie4_5_VLMoeVariableResolutionResamplerModel.after_norm); mlx-vlm's "
                 "with 1e-5 (mlx_vlm/models/ernie4_5_moe_vl/ernie4_5_moe_vl.py VariableResolutionResamplerModel), so "
                 "image features differ; text-only prompts are unaffected")),
             Ignored("vision_config.rms_norm_eps", other_than(1e-6), (
                 "on prompts with an image: transformers' resampler LayerNorms use vision_config.rms_norm_eps "
                 "(modeling_ernie4_5_vl_moe.py Ernie4_5_VLMoeVisionMLP); mlx-vlm's 1e-6 "
                 "(mlx_vlm/models/ernie4_5_moe_vl/ernie4_5_moe_vl.py VariableResolutionResamplerModel), so image "
                 "features differ; text-only prompts are unaffected")),
             Ignored("vision_config.rope_parameters.rope_theta", other_than(10000.0), (
                 "on prompts with an image: transformers' vision tower rotates by vision_config.rope_parameters."
                 "rope_theta (modeling_ernie4_5_vl_moe.py Ernie4_5_VLMoeVisionRotaryEmbedding); mlx-vlm's by 10000 "
                 "(mlx_vlm/models/ernie4_5_moe_vl/vision.py VisionRotaryEmbedding), so image features differ; "
                 "text-only prompts are unaffected")),
         )),
    # transformers' Ernie4_5_VLMoeConfig, which mlx-vlm runs as ernie4_5_moe_vl. Its save_pretrained undoes its load
    # rename vision_model -> vision_tower under its model. prefix (conversion_mapping.py "ernie4_5_vl_moe"); the
    # release and mlx-vlm's sanitize have vision_model.*
    Arch("ernie4_5_vl_moe", runs_as="ernie4_5_moe_vl", source_prefixes=(("model.vision_model.", "vision_model."),)),
    # its text_config: mlx-vlm's TextConfig takes the two sets' expert counts as a list (an int: no multimodal
    # experts) and MoE layers as start / end / interval (its default start is layer 3)
    Arch("ernie4_5_vl_moe_text", renames=(
        Rename("moe_num_experts", "moe_num_experts", "text_and_multimodal", overrides=True),
        Rename("moe_layer_start_index", "mlp_layer_types", "moe_layer_start_index"),
        Rename("moe_layer_end_index", "mlp_layer_types", "moe_layer_end_index"),
        Rename("moe_layer_interval", "mlp_layer_types", "moe_layer_interval"),
        Rename("freq_allocation", "rope_parameters.mrope_section", "last"),
    )),
    # its vision_config in transformers' names; mlx-vlm's VisionConfig reads the release's
    Arch("ernie4_5_vl_moe_vision", renames=(
        Rename("embed_dim", "hidden_size"),
        Rename("mlp_ratio", "", "mlp_ratio"),
        Rename("layer_norm_eps", "rms_norm_eps"),
    )),
    # config.json names its language model language_config (not text_config), where experts.num_experts does not
    # look; then a tiny release (language.model.layers.{l}.mlp.experts.{e}.*, vision.* SigLIP via timm,
    # projector.*, image_newline, view_seperator) and its custom processor's image inputs
    Arch("deepseek_vl_v2", _VLM, "deepseek_vl_v2", N, "deepseek-ai/deepseek-vl2",
         "not converted yet (its config nests the language model under language_config); mlx_vlm.convert converts "
         "it meanwhile"),
    Arch("qwen3_omni_moe", _VLM, "qwen3_omni_moe", S, "Qwen/Qwen3-Omni-30B-A3B-Instruct",
         "the whole release for mlx-vlm only (no mlx-lm model): the thinker (vision tower, audio tower, MoE language "
         "model) and the talker (a second MoE with a shared expert, each stack with its own expert count), code "
         "predictor and code2wav; the vision and audio towers and the code predictor copied float (as "
         "mlx_vlm.convert keeps them), processor files copied. The thinker's logits match transformers' on text and "
         "with an image; the output loads with mlx_vlm.utils.load_model, but not with mlx_vlm.load here: mlx-vlm's "
         "processor needs torchvision (Qwen3VLVideoProcessor), which the test extra does not install",
         # Qwen/Qwen3-Omni-30B-A3B-Instruct: thinker.model.layers.{l}.mlp.experts.{e}.* and
         # talker.model.layers.{l}.mlp.experts.{e}.* (+ shared_expert, shared_expert_gate), counts under
         # thinker_config.text_config / talker_config.text_config (num_local_experts, transformers 5); mlx-vlm's
         # sanitize renames thinker.model -> thinker.language_model.model, thinker.visual -> thinker.vision_tower
         family=Family("mlp.experts", "mlp.switch_mlp", _GLU, "thinker_config.text_config.num_experts",
                       num_experts_at=(("talker.", "talker_config.text_config.num_experts"),)),
         # thinker_config holds the towers and the thinker's text_config; the sub-configs two levels down reach
         # mlx-vlm's config classes through target.resolve_config (rope_theta, head_dim)
         vision=VisionLanguage("qwen3_omni_moe", vision_keys=("thinker_config",), text="thinker_config.text_config")),
    Arch("glm5_next", _VLM, "glm5_next", S, "zai-org/GLM-5.3-Flash",
         "GLM ViT (model.visual: Conv3d patch embedding, SwiGLU blocks with q/k norms, downsample Conv2d, merger) + "
         "GLM-5-Next's MoE (KDA linear attention, MLA with a DSA indexer, multi-stream hyper-connections, dense "
         "first layers, shared experts, correction bias) under model.language_model, for mlx-vlm only: " + VLM_DONE +
         ". No text-only output: mlx-lm 0.32.2 has no glm5_next model",
         # zai-org/GLM-5.3-Flash (mlx-vlm only): model.language_model.layers.{l}.mlp.experts.{e}.{gate,up,down}_proj
         # as transformers 5 writes them; mlx-vlm's sanitize fuses the attention projections itself
         family=Family("mlp.experts", "mlp.switch_mlp", _GLU, "n_routed_experts"),
         # model.visual.{patch_embed.proj, blocks.{b}, post_layernorm, downsample, merger} beside
         # model.language_model.*; mlx-vlm: vision_tower.*, language_model.model.*
         vision=VisionLanguage("glm5_next", fixture="glm5_next")),
    Arch("qwen4_exp", _VLM, "qwen4_exp", S, "Qwen/Qwen4-Exp",
         "Qwen3-VL's vision tower (model.visual, no deepstack) + Qwen4-Exp's MoE (Gated DeltaNet, gated attention "
         "with a QSA block indexer, hyper-connections, per-layer n-gram embeddings, shared expert gate) under "
         "model.language_model, for mlx-vlm only: " + VLM_DONE + ". No text-only output: mlx-lm 0.32.2 has no "
         "qwen4_exp model. Where QSA block scores tie exactly, mlx-vlm may keep another of the tied blocks than "
         "transformers",
         # Qwen/Qwen4-Exp: model.language_model.layers.{l}.mlp.experts.{e}.{gate,up,down}_proj as transformers 5
         # writes them; mlx-vlm's sanitize would stack them itself
         family=Family("mlp.experts", "mlp.switch_mlp", _GLU, "num_experts"),
         # model.visual.{patch_embed, pos_embed, blocks.{b}, merger} beside model.language_model.*; mlx-vlm:
         # vision_tower.*, language_model.model.*
         vision=VisionLanguage("qwen4_exp", fixture="qwen4_exp")),
    # qwen4_exp's text_config: transformers' Qwen4ExpTextConfig writes the releases' full_attention layers as
    # indexed_attention and leaves output_gate_type None, meaning hidden_act (modeling_qwen4_exp.py
    # Qwen4ExpTextGatedDeltaNet); mlx-vlm's TextConfig takes full_attention and defaults output_gate_type to sigmoid
    Arch("qwen4_exp_text", renames=(
        Rename("layer_types", "layer_types", "indexed_as_full_attention", overrides=True),
        Rename("output_gate_type", "", "output_gate_type", overrides=True),
    )),
    # google/diffusiongemma-26B-A4B-it (transformers' DiffusionGemmaForBlockDiffusion): Gemma 4's language model run
    # twice, as a causal encoder of the prompt and a bidirectional decoder of the canvas over the encoder's KV cache,
    # with the same weights (saved once, under model.decoder.*; the encoder keeps only its layer_scalar buffers), a
    # self-conditioning MLP on the decoder's input, and Gemma 4's vision tower under model.encoder.*. Experts fused as
    # gemma4's: model.decoder.layers.{l}.experts.gate_up_proj [E, 2I, H] (gate rows first), down_proj [E, H, I];
    # mlx-vlm's model holds them fused too (experts.gate_up_proj, one SwitchLinear), as its sanitize writes them
    Arch("diffusion_gemma", _VLM, "diffusion_gemma", S, "google/diffusiongemma-26B-A4B-it",
         "block-diffusion language model (transformers' DiffusionGemmaForBlockDiffusion: logits over a canvas given a "
         "prompt) with Gemma 4's MoE layers shared by a causal prompt encoder and a bidirectional canvas decoder, a "
         "self-conditioning MLP and Gemma 4's vision tower, for mlx-vlm only (mlx-lm 0.32.2 has no diffusion_gemma "
         "model): vision tower and projector copied float, the rest in mlx-vlm's names (model.decoder.*, "
         "model.encoder.*), processor files copied; checked on the one deterministic step both have, the logits "
         "over a given canvas after a given prompt (verify gives both the prompt's own tokens as the canvas)",
         family=Family("experts", "experts", _GLU, "num_experts", layout="fused"),
         vision=VisionLanguage("diffusion_gemma"),
         canvas=("decoder_input_ids", "canvas_ids"),
         # read from the code alone: transformers 5.25 cannot run "all" itself (its encoder attention passes
         # is_causal twice: TypeError in modeling_diffusion_gemma.py DiffusionGemmaEncoderTextAttention.forward)
         ignored_by_vlm=(
             Ignored("text_config.use_bidirectional_attention", "all", (
                 "transformers' prompt encoder then attends both ways over the prompt, sliding layers within "
                 "sliding_window / 2 each way (configuration_diffusion_gemma.py, modeling_diffusion_gemma.py "
                 "DiffusionGemmaEncoderTextAttention: is_causal false), mlx-vlm's causally, only image blocks both "
                 "ways (mlx_vlm/models/diffusion_gemma/language.py EncoderModel._make_encoder_masks), so every "
                 "prompt is read otherwise")),
         )),
    # diffusion_gemma's text_config: the full-attention layers' head_dim / kv heads in per_layer_config (as
    # gemma4_text's); mlx-vlm's TextConfig reads global_head_dim / num_global_key_value_heads (defaults 512 and 2)
    Arch("diffusion_gemma_text", renames=(
        Rename("global_head_dim", "per_layer_config", "full_attention_head_dim"),
        Rename("num_global_key_value_heads", "per_layer_config", "full_attention_kv_heads"),
    )),
    # ---- text models only mlx-vlm runs (no vision part): output for mlx-vlm, config.json as the source's ----
    # CohereLabs/command-a-plus-05-2026 (transformers' Cohere2MoeForCausalLM): mlp.experts.gate_up_proj / down_proj
    # fused as Mixtral's, mlp.gate.weight the router, a shared MLP (mlp.shared_experts) per MoE layer
    Arch("cohere2_moe", _VLM, "cohere2_moe", S, "CohereLabs/command-a-plus-05-2026",
         _text_by_vlm("Cohere2MoeForCausalLM") + "Parallel attention + MoE, dense first layers, shared experts, "
         "sliding + full layers, tied logits "
         "(an untied lm_head is refused: mlx-vlm's cohere2_moe has none). mlx-vlm's cohere2_moe computes otherwise "
         "than transformers where norm_topk_prob is false with softmax routing, where RoPE is scaled, and where "
         "layer_types makes a dense first layer sliding-window: its outputs differ then (the plan notes it)",
         family=Family("mlp.experts", "mlp.switch_mlp", _GLU, "num_experts"),
         # transformers' Cohere2Moe: a layer is dense iff mlp_layer_types says so (first_k_dense_replace is only a
         # constructor argument); mlx-vlm's reads first_k_dense_replace (dense layers first)
         renames=(Rename("first_k_dense_replace", "mlp_layer_types", "dense_then_sparse", overrides=True),
                  Rename("prefix_dense_intermediate_size", "", "prefix_dense_intermediate_size", overrides=True)),
         ignored_by_vlm=(
             Ignored("tie_word_embeddings", "untied", (
                 "an lm_head of its own (transformers' Cohere2MoeForCausalLM uses it), but mlx-vlm's cohere2_moe "
                 "computes logits with embed_tokens (mlx_vlm/models/cohere2_moe/language.py LanguageModel.__call__: "
                 "embed_tokens.as_linear) and has no lm_head"), expected="tie_word_embeddings true"),
             Ignored("norm_topk_prob", "softmax_top_k_unnormalized", (
                 "transformers' Cohere2Moe router takes the softmax over the chosen experts' logits alone "
                 "(modeling_cohere2_moe.py Cohere2MoeTopKRouter), mlx-vlm's cohere2_moe the softmax over every expert, "
                 "not renormalized when norm_topk_prob is false (mlx_vlm/models/cohere2_moe/language.py "
                 "CohereMoeSparseMoeBlock), so expert outputs are weighed differently")),
             Ignored("rope_parameters.rope_type", "scaled_rope", (
                 "transformers' Cohere2Moe scales its RoPE as rope_parameters says (Cohere2MoeRotaryEmbedding), "
                 "mlx-vlm's cohere2_moe rotates with plain RoPE at rope_theta (mlx_vlm/models/cohere2_moe/language.py "
                 "Attention: nn.RoPE), so positions are encoded differently")),
             Ignored("layer_types", "sliding_dense_prefix", (
                 "transformers' Cohere2Moe gives a dense first layer the attention layer_types says, here a sliding "
                 "window (modeling_cohere2_moe.py Cohere2MoeAttention), mlx-vlm's cohere2_moe always full attention "
                 "there (mlx_vlm/models/cohere2_moe/language.py is_sliding_layer), and RoPE only where "
                 "prefix_dense_sliding_window_pattern is 1, so outputs differ on prompts longer than sliding_window")),
         )),
    # openai/privacy-filter (transformers' OpenAIPrivacyFilterForTokenClassification): gpt-oss-style experts as
    # transformers saves them, mlp.experts.gate_up_proj [E, H, 2I] (gate columns, then up: _apply_gate chunks) and
    # down_proj [E, I, H], fused biases, mlp.router with a bias, self_attn.sinks; score (the classifier) in place of
    # an lm_head. mlx-vlm stacks in place (mlp.experts.{gate,up,down}_proj)
    Arch("openai_privacy_filter", _VLM, "openai_privacy_filter", S, "openai/privacy-filter",
         "token classifier (transformers' OpenAIPrivacyFilterForTokenClassification: class logits per token, score in "
         "place of an lm_head) that mlx-vlm runs, mlx-lm has none: output for mlx-vlm. gpt-oss-style fused in x out "
         "experts with biases, router bias, attention sinks, bidirectional attention within sliding_window",
         family=Family("mlp.experts", "mlp.experts", _GLU, "num_local_experts", fused="halves_transposed",
                       layout="fused", fused_bias_names=("gate_up_proj_bias", "down_proj_bias")),
         pipeline_tag="token-classification"),
    # thinkingmachines/Inkling: config.json says inkling_mm_model (mlx-vlm's MODEL_REMAPPING: inkling), and the
    # tensors are the release's own names, which transformers 5.25's save_pretrained writes back
    # (conversion_mapping.py inkling_mm_model): model.llm.layers.{l}.{attn.wq_du/wk_dv/wv_dv/wr_du/wo_ud,
    # mlp.experts.w13_weight [E, 2I, H] (gate and up rows interleaved), mlp.experts.w2_weight [E, H, I],
    # mlp.shared_experts.shared_w13_weight / shared_w2_weight, mlp.gate (weight [E + shared, H], bias)},
    # model.visual.layers.{linear_j, norm_j}, model.audio.{encoder, final_norm}; mlx-vlm's sanitize reads them
    Arch("inkling_mm_model", _VLM, "inkling", S, "thinkingmachines/Inkling",
         "interleaved fused experts (mlp.experts.w13_weight), shared experts scored by the router, relative-position "
         "attention with short convolutions, sliding layers, under the release's own names (model.llm.*; vision "
         "tower model.visual, audio tower model.audio, kept float as mlx_vlm.convert keeps both), for mlx-vlm "
         "only: " + VLM_DONE + ". No text-only output: mlx-lm 0.32.2 has no inkling model",
         family=Family("mlp.experts", "mlp.switch_mlp", _GLU, "n_routed_experts", fused="interleaved",
                       fused_names=("w13_weight", "w2_weight"), layout="fused"),
         vision=VisionLanguage("inkling", vision_keys=("vision_config", "audio_config"))),
    # inkling_mm_model's text_config: transformers' intermediate_size is the dense MLP's and moe_intermediate_size
    # the experts'; mlx-vlm's inkling TextConfig reads intermediate_size for the experts (and shared experts) and
    # dense_intermediate_size for the dense MLP (mlx_vlm/models/inkling/config.py)
    Arch("inkling_text", renames=(
        Rename("dense_intermediate_size", "intermediate_size"),
        Rename("intermediate_size", "moe_intermediate_size", overrides=True),
    )),
    # stepfun-ai/Step-3.7-Flash (transformers 5.25's save_pretrained writes the release's names back,
    # conversion_mapping.py step3p7): Step-3.5's language model under model.layers.{l} (moe.{gate,up,down}_proj
    # [E, out, in], moe.gate, moe.router_bias, share_expert.*), vision_model.{conv1, positional_embedding, ln_pre,
    # transformer.resblocks.{b}, vit_downsampler1/2} and vit_large_projector; mlx-vlm's sanitize reads them
    Arch("step3p7", _VLM, "step3p7", S, "stepfun-ai/Step-3.7-Flash",
         "Step-3.5's language model (experts published stacked, router_bias, share_expert, full + sliding layers "
         "with their own heads, head-wise attention gate, RoPE per layer type) under model.layers, its vision tower "
         "(vision_model with two downsamplers) and vit_large_projector, for mlx-vlm only: " + VLM_DONE + ". No "
         "text-only output: mlx-lm 0.32.2 has no step3p7 model (its step3p5 model is this language model, but "
         "reads a Step-3.5 release's flat config.json, not text_config). mlx-vlm's step3p7 scales attention by head_dim, transformers' by query_pre_attn_scalar "
         "(head_dim unless config.json says otherwise): where they differ, logits differ (the plan notes it)",
         family=Family("moe", "mlp.switch_mlp", _GLU, "n_routed_experts", layout="stacked"),
         vision=VisionLanguage("step3p7"),
         ignored_by_vlm=(Ignored("text_config.query_pre_attn_scalar", "not_head_dim", (
             "transformers' Step-3.7 attention scales its scores by query_pre_attn_scalar ** -0.5 "
             "(modeling_step3p7.py Step3p7Attention); mlx-vlm's step3p7 by head_dim ** -0.5 "
             "(mlx_vlm/models/step3p7/language.py Attention), so every logit differs where the two differ")),)),
    # step3p7's vision_config: transformers' Step3p7VisionConfig names the perception encoder's dims as CLIP does;
    # mlx-vlm's step3p7 VisionConfig reads the release's width / layers / heads / ls_init_value
    Arch("step3p5_vision", renames=(
        Rename("width", "hidden_size"),
        Rename("layers", "num_hidden_layers"),
        Rename("heads", "num_attention_heads"),
        Rename("ls_init_value", "layer_scale_init_value"),
    )),
    # tencent/Hy4-preview (transformers' HYV4ForCausalLM; mlx-vlm's hy_v4, built on its deepseek_v32): MLA whose
    # kv_b_proj mlx-vlm splits into embed_q / unembed_out only from the release's MXFP8 (hy_v4/language.py
    # Model.sanitize), a DSA indexer on the "full" layers (the "shared" ones reuse its top-k), an attention output
    # gate and sinks, hyper-connections (hc_mult streams: hc_fn / hc_base / hc_scale, float32) around attention and
    # MLP and before the final norm, fused experts split in halves here and fused back by mlx-vlm's sanitize
    # (switch_mlp.gate_up_proj), a sigmoid router with e_score_correction_bias (MoEGate: no to_quantized).
    # Not noted, as it stays below float32 rounding: transformers adds hc_eps (1e-6) to the hyper-connections' post
    # weights (modeling_hy_v4.py HYV4HyperConnection), mlx-vlm does not (hy_v4/hyper_connection.py)
    Arch("hy_v4", _VLM, "hy_v4", S, "tencent/Hy4-preview",
         _text_by_vlm("HYV4ForCausalLM") + "MLA (kv_b_proj split into embed_q / unembed_out), sparse-attention "
         "indexer, gated attention with sinks, hyper-connections kept float32, dense first layer, fused and shared "
         "experts, sigmoid router with correction bias. mlx-vlm's hy_v4 differs from transformers on prompts longer than index_topk (its indexer rotates "
         "other dimensions) and where an expert's SwiGLU input passes swiglu_limit (no clamp): the plan notes both",
         family=Family("mlp.experts", "mlp.switch_mlp", _GLU, "n_routed_experts", layout="fused"),
         # transformers' HYV4: MoE iff mlp_layer_types[l] == "sparse"; mlx-vlm's (deepseek_v32's) decoder layer reads
         # first_k_dense_replace / moe_layer_freq
         renames=(
             Rename("first_k_dense_replace", "mlp_layer_types", "first_k_dense_replace", overrides=True),
             Rename("moe_layer_freq", "mlp_layer_types", "moe_layer_freq", overrides=True),
         ),
         # transformers' conversion_mapping.py (hy_v4) renames the release's names on load (.hc_pre.hc_ -> .hc_,
         # .linear_gate -> .gate_proj, hc_attn_layer.hc_fn -> attn_hc.fn, hc_head_fn -> hc_fn, ...) and undoes the
         # renames in another order on save: its hyper-connections come back as hc_pre.hc_attn_layer.hc_fn /
         # hc_pre.hc_head.hc_head_fn, and every MLP's gate_proj as linear_gate
         tensor_renames=(
             (r"\.hc_pre\.(hc_attn_layer|hc_mlp_layer)\.hc_", r".\1.hc_pre.hc_"),
             (r"\.hc_pre\.hc_head\.", ".hc_head."),
             (r"\.mlp\.(shared_experts\.)?linear_gate\.", r".mlp.\1gate_proj."),
         ),
         splits=("mla_kv_b",),
         ignored_by_vlm=(
             Ignored("index_topk", "window_shorter_than_context", (
                 "transformers' indexer rotates the last qk_rope_head_dim dimensions of each indexer head "
                 "(modeling_hy_v4.py HYV4Indexer.forward), mlx-vlm's the first ones (mlx_vlm/models/hy_v4/indexer.py, "
                 "rope from deepseek_v32's Indexer), so prompts longer than index_topk attend to other tokens")),
             Ignored("swiglu_limit", "finite", (
                 "transformers clamps each routed expert's gate to at most swiglu_limit and its up projection to "
                 "within it (modeling_hy_v4.py HYV4Experts._apply_gate); mlx-vlm's fused experts do not clamp "
                 "(mlx_vlm/models/hy_v4/fused_switch_glu.py), so outputs differ where a projection passes the limit")),
         )),
    # deepseek-ai/DeepSeek-V4-Flash (transformers' DeepseekV4ForCausalLM; mlx-vlm's deepseek_v4, text only without
    # vision_n_layers): DeepSeek's own names (layers.{l}.attn.wq_a / wkv / wo_a / compressor / indexer,
    # ffn.experts.{e}.w1/w2/w3, ffn.gate with tid2eid on the hash-routed layers, hc_attn_fn / hc_ffn_fn, head),
    # which transformers saves again and mlx-vlm's sanitize renames; wo_a is a grouped projection (MultiLinear in
    # mlx-vlm, not experts), the hyper-connection mixers and the router stay float32, tid2eid stays integer
    Arch("deepseek_v4", _VLM, "deepseek_v4", S, "deepseek-ai/DeepSeek-V4-Flash",
         _text_by_vlm("DeepseekV4ForCausalLM") + "Sliding, compressed-sparse (indexer) and heavily compressed "
         "attention layers, grouped output projection, sinks, hyper-connections kept float32, hash-routed first layers (tid2eid), shared experts, sqrt-softplus "
         "router. mlx-vlm's deepseek_v4 picks the indexer's top-k hierarchically (HISA) on prompts long enough for "
         "index_block x index_keep compressed entries (4096 tokens at its defaults): the plan notes it",
         family=Family("ffn.experts", "ffn.switch_mlp", _W123, "n_routed_experts"),
         # transformers' DeepseekV4: the attention of layer l is layer_types[l] (compress_rates per type), the first
         # layers hash-routed per mlp_layer_types, YaRN only for the compressed branches (rope_parameters.compress);
         # mlx-vlm's reads compress_ratios (0 / 4 / 128 per layer), num_hash_layers and rope_scaling
         renames=(
             Rename("compress_ratios", "", "compress_ratios", overrides=True),
             Rename("num_hash_layers", "mlp_layer_types", "hash_layers", overrides=True),
             Rename("rope_scaling", "rope_parameters.compress", "scaled_rope", overrides=True),
         ),
         # transformers' conversion_mapping.py (deepseek_v4): .norm. -> .kv_norm. and hc_head_fn -> hc_head.hc_fn on
         # load; saved back, the attention's kv_norm is attn.norm and the head's mixer model.hc_head.hc_fn, names
         # mlx-vlm's sanitize does not rename (it reads attn.kv_norm and hc_head.fn)
         tensor_renames=(
             (r"\.attn\.norm\.", ".attn.kv_norm."),
             (r"\.hc_head\.hc_", ".hc_head."),
         ),
         # called without a cache, mlx-vlm's compressed attention lets every token see every compressed window,
         # later ones too (language.py CompressedAttention / SparseCompressedAttention: no pool cache, no pool mask)
         needs_cache=True,
         ignored_by_vlm=(
             Ignored("index_topk", "hierarchical_top_k", (
                 "transformers' indexer keeps the exact top index_topk compressed entries (modeling_deepseek_v4.py "
                 "DeepseekV4Indexer.forward); mlx-vlm's picks them among the best index_keep blocks of index_block "
                 "entries (HISA: mlx_vlm/models/deepseek_v4/language.py Indexer, hisa_kernel.py) once a layer has "
                 "index_block x index_keep of them, so long prompts attend to other entries (index_block 0 in "
                 "config.json makes mlx-vlm select exactly)")),
         )),
    # RecursiveSI/flint (transformers' FlintForCausalLM): Qwen3-MoE's layout (fused experts, mlp.gate router,
    # q/k norm) plus an ungated mlp.shared_expert and per-head attention sinks (self_attn.sinks)
    Arch("flint", _VLM, "flint", S, "RecursiveSI/flint",
         _text_by_vlm("FlintForCausalLM") + "Sliding layers with RoPE, full-attention layers without (NoPE), "
         "attention sinks, q/k norm, dense first "
         "layers, an ungated shared expert, sigmoid routing. mlx-vlm's flint always renormalizes the chosen experts' "
         "weights: with norm_topk_prob false its outputs differ from transformers' (the plan notes it)",
         family=Family("mlp.experts", "mlp.switch_mlp", _GLU, "num_experts"),
         # transformers' Flint: RoPE only in sliding layers (mlx-vlm: every layer but no_rope_layer_indices); a layer
         # is dense as Qwen-MoE's rule says (mlx-vlm: mlp_only_layers alone); sliding layers whatever
         # use_sliding_window says (FlintConfig has none; mlx-vlm drops the window when it is false)
         renames=(Rename("no_rope_layer_indices", "layer_types", "full_attention_indices", overrides=True),
                  Rename("mlp_only_layers", "", "qwen_dense_layers", overrides=True),
                  Rename("use_sliding_window", "", fixed(True), overrides=True)),
         # transformers' per-head sink logits are mlx-vlm's softmax_offset (named so after its sanitize)
         tensor_renames=((r"\.self_attn\.sinks$", ".self_attn.softmax_offset"),),
         ignored_by_vlm=(
             Ignored("norm_topk_prob", "false", (
                 "transformers' Flint router weighs the chosen experts by their sigmoid scores as they are when "
                 "norm_topk_prob is false (modeling_flint.py FlintTopKRouter), mlx-vlm's flint always divides them by "
                 "their sum (mlx_vlm/models/flint/language.py SparseMoeBlock.route), so expert outputs are weighed "
                 "differently")),
         )),
    # Aleph-Alpha/Kolibri-1 (transformers' Kolibri1ForCausalLM): Qwen3-MoE's fused experts, a router with
    # e_score_correction_bias, shared experts, GLM-4's four norms per layer (post_self_attn / post_mlp_layernorm)
    Arch("kolibri1", _VLM, "kolibri1", S, "Aleph-Alpha/Kolibri-1",
         _text_by_vlm("Kolibri1ForCausalLM") + "Sliding layers with RoPE, full-attention layers without, q/k norm, "
         "norms after attention and MoE, "
         "sigmoid routing with a correction bias, shared experts",
         family=Family("mlp.experts", "mlp.switch_mlp", _GLU, "num_experts"),
         # GLM-4's decoder-layer norms (transformers) under mlx-vlm's kolibri1 names
         tensor_renames=((r"\.post_self_attn_layernorm\.", ".post_attn_norm."),
                         (r"\.post_mlp_layernorm\.", ".post_ffn_norm."))),
    # baidu/Unlimited-OCR (transformers' UnlimitedOcrForConditionalGeneration, whose save_pretrained writes the
    # release's names back, conversion_mapping.py unlimited_ocr): DeepSeek-V2's MoE with plain multi-head attention
    # (q/k/v/o_proj, no MLA) under model.layers.{l} (mlp.experts.{e}.{gate,up,down}_proj, mlp.gate,
    # mlp.shared_experts), model.sam_model.* (a SAM ViT-B), model.vision_model.* (CLIP-L blocks fed SAM's features),
    # model.projector.layers, model.image_newline and model.view_seperator; mlx-vlm's sanitize (deepseekocr's) reads
    # them. mlx-vlm builds its SAM at the release's sizes whatever sam_config says (deepseekocr.py Model: SAMViTConfig())
    Arch("unlimited_ocr", _VLM, "unlimited_ocr", S, "baidu/Unlimited-OCR",
         "SAM + CLIP vision encoder (model.sam_model, model.vision_model), linear projector, DeepSeek-V2's MoE with "
         "multi-head attention (dense first layer, shared experts, greedy softmax routing) under model.layers, for "
         "mlx-vlm only: " + VLM_DONE + ". No text-only output: mlx-lm 0.32.2 has no unlimited_ocr model. mlx-vlm's "
         "CLIP blocks use exact GELU where transformers' use quick_gelu: logits of prompts with an image differ "
         "(the plan notes it)",
         family=Family("mlp.experts", "mlp.switch_mlp", _GLU, "n_routed_experts"),
         vision=VisionLanguage("unlimited_ocr"),
         # mlx-vlm's ModelConfig requires projector_config, which transformers' UnlimitedOcrConfig has no key for
         renames=(Rename("projector_config", "", "ocr_projector"),),
         # mlx-vlm's CLIP embeddings hold a patch convolution they never use (SAM's features are the patches);
         # transformers' model drops it (modeling_unlimited_ocr.py UnlimitedOcrVisionEmbeddings), the release has it
         absent_as_zeros=(AbsentAsZeros("", r"^vision_model\.embeddings\.patch_embedding\.weight$",
                                        "the CLIP patch embedding"),),
         ignored_by_vlm=(
             Ignored("vision_config.encoder_config.hidden_act", "always", (
                 "on prompts with an image: transformers' Unlimited-OCR CLIP blocks apply "
                 "vision_config.encoder_config.hidden_act (quick_gelu unless config.json says otherwise) in their "
                 "MLPs (modeling_unlimited_ocr.py UnlimitedOcrMLP); mlx-vlm's apply exact GELU "
                 "(mlx_vlm/models/unlimited_ocr/unlimitedocr.py, deepseekocr/vision.py MLP), so image features and "
                 "the logits of prompts with an image differ (0.28 max abs on a tiny Unlimited-OCR); text-only prompts "
                 "are unaffected")),
             Ignored("vision_config.sam_config", "not_release_sam", (
                 "transformers' Unlimited-OCR builds its SAM encoder from vision_config.sam_config; mlx-vlm's builds "
                 "one at the release's sizes whatever config.json says (mlx_vlm/models/unlimited_ocr/unlimitedocr.py "
                 "Model, deepseekocr.py Model.__init__: SAMViTConfig())"),
                     expected="the release's SAM (hidden_size 768, 12 layers and heads, mlp_dim 3072, window 14, "
                              "global attention in layers 2, 5, 8, 11, output 256 then 512, 1024 channels, image "
                              "1024, patch 16)"),
         )),
    # unlimited_ocr's text_config: transformers' MoE layers are mlp_layer_types' "sparse" ones and its routing is
    # always softmax; mlx-vlm's deepseekocr decoder layer reads first_k_dense_replace / moe_layer_freq, its gate
    # scoring_func, and its cache sliding_window_size (mlx_vlm/models/unlimited_ocr/config.py TextConfig)
    Arch("unlimited_ocr_text", renames=(
        Rename("first_k_dense_replace", "mlp_layer_types", "first_k_dense_replace", overrides=True),
        Rename("moe_layer_freq", "mlp_layer_types", "moe_layer_freq", overrides=True),
        Rename("scoring_func", "", fixed("softmax"), overrides=True),
        Rename("sliding_window_size", "sliding_window", overrides=True),
    )),
    # unlimited_ocr's vision_config: transformers nests the CLIP blocks' sizes under encoder_config; mlx-vlm's
    # deepseekocr VisionConfig reads them flat, and builds its tower only for model_type vision
    Arch("unlimited_ocr_vision", renames=(
        Rename("model_type", "", fixed("vision"), overrides=True),
        Rename("layers", "encoder_config.num_hidden_layers"),
        *(Rename(key, f"encoder_config.{key}") for key in ("hidden_size", "intermediate_size", "num_attention_heads",
                                                           "image_size", "patch_size", "num_channels", "layer_norm_eps")),
    )),
    # MoE model_types mlx-vlm 0.7.10 runs (Switch layers in its module) that no moequant row covers yet
    *(Arch(model_type, _VLM, model_type, N, "", NOT_BUILT_VLM) for model_type in (
        "llada2_moe", "longcat_flash_sparse", "moondream3", "youtu_vl",
        "zaya1_vl")),
)


def _index(rows) -> dict[str, Arch]:
    """model_type -> its row; a model_type with two rows is an error (the registry is one row each)."""
    index: dict[str, Arch] = {}
    for arch in rows:
        if arch.model_type in index:
            raise ValueError(f"registry: model_type {arch.model_type!r} has two rows; expected one")
        index[arch.model_type] = arch
    return index


REGISTRY: dict[str, Arch] = _index(ROWS)


def num_experts_keys(family: Family) -> tuple[str, ...]:
    """The config keys naming a family's expert count, first found wins: its own, then its aliases."""
    return (family.num_experts,) + next((a.sources for a in CONFIG_ALIASES if a.key == family.num_experts), ())


# ---- Views: the tables the pipeline reads, derived from the rows

# every MoE model_type of mlx-lm and mlx-vlm with its status (moequant archs)
ARCHITECTURES: tuple[Arch, ...] = tuple(a for a in ROWS if a.status is not None)
# model_type -> how its release publishes its experts (family_of); BLOCKED rows wait in PENDING
FAMILIES: dict[str, Family] = {a.model_type: a.family for a in ROWS if a.family and a.status != Status.BLOCKED}
PENDING: dict[str, Family] = {a.model_type: a.family for a in ROWS if a.family and a.status == Status.BLOCKED}
VISION_LANGUAGE: dict[str, VisionLanguage] = {a.model_type: a.vision for a in ROWS if a.vision}
# model_types only mlx-vlm has a model for, and no vision part: mlx-vlm runs the text model (no vision_config); a "not
# yet" row among them is refused (family_of) with its note
TEXT_BY_MLX_VLM: frozenset[str] = frozenset(a.model_type for a in ROWS if a.runner == _VLM and a.vision is None)
# transformers model_type -> the one mlx-lm runs it under (mlx-lm's own MODEL_REMAPPING needs no row)
MODEL_TYPES: dict[str, str] = {a.model_type: a.runs_as for a in ROWS if a.runs_as}
WRAPPED: dict[str, Wrapped] = {a.model_type: a.wrapped for a in ROWS if a.wrapped}
TEXT_ARGS: dict[str, str] = {a.model_type: a.text_args for a in ROWS if a.text_args}
# (transformers model_type, architectures[0]) -> the model_type mlx-lm runs it under
MODEL_ARCHITECTURES: dict[tuple[str, str], str] = {
    (a.model_type, architecture): runs_as for a in ROWS for architecture, runs_as in a.architectures}
TENSOR_RENAMES: dict[str, tuple[tuple[str, str], ...]] = {a.model_type: a.tensor_renames for a in ROWS
                                                          if a.tensor_renames}
# model_type -> the prefixes its SRC keys are read under: a wrapped language model's wrapper's, or source_prefixes
SOURCE_PREFIXES: dict[str, tuple[tuple[str, str], ...]] = {a.model_type: a.wrapped.prefixes if a.wrapped else a.source_prefixes
                                                         for a in ROWS if a.wrapped or a.source_prefixes}
ABSENT_AS_ZEROS: dict[str, tuple[AbsentAsZeros, ...]] = {a.model_type: a.absent_as_zeros for a in ROWS
                                                         if a.absent_as_zeros}
SPLITS: dict[str, tuple[str, ...]] = {a.model_type: a.splits for a in ROWS if a.splits}
NEEDS_CACHE: frozenset[str] = frozenset(a.model_type for a in ROWS if a.needs_cache)
CANVAS: dict[str, tuple[str, str]] = {a.model_type: a.canvas for a in ROWS if a.canvas}
PIPELINE_TAG: dict[str, str] = {a.model_type: a.pipeline_tag for a in ROWS if a.pipeline_tag}
# model_type (mlx-lm's; for mlx-vlm's sub-configs, text_config's and vision_config's own) -> its renames
RENAMES: dict[str, tuple[Rename, ...]] = {a.model_type: a.renames for a in ROWS if a.renames}
# mlx-lm model_type -> what its model ignores or computes differently
IGNORED_BY_MLX_LM: dict[str, tuple[Ignored, ...]] = {a.model_type: a.ignored for a in ROWS if a.ignored}
# mlx-vlm model_type -> what its model (vision tower, projector; a text model's language model) computes differently
IGNORED_BY_MLX_VLM: dict[str, tuple[Ignored, ...]] = {a.model_type: a.ignored_by_vlm for a in ROWS if a.ignored_by_vlm}


def family_of(config: dict) -> Family:
    """The family of config["model_type"] (mlx-lm's), or a one-line error: a model_type without one is never
    passed through (a "not yet" row says why)."""
    model_type = config["model_type"]
    if model_type not in FAMILIES:
        arch = REGISTRY.get(model_type)
        why = f" ({arch.note})" if arch is not None and arch.status == Status.NOT_YET else ""
        raise CheckpointError(
            f"config.json: model_type {model_type!r} is not a supported MoE family{why}; expected one of "
            f"{', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[model_type]


def arch_rows(status: Status | str | None = None) -> list[Arch]:
    """The architectures, supported rows first (for `moequant archs`; `Arch.to_dict()` for --json)."""
    order = {Status.SUPPORTED: 0, Status.BLOCKED: 1, Status.NOT_YET: 2}
    rows = [a for a in ARCHITECTURES if status is None or a.status == Status(status)]
    return sorted(rows, key=lambda a: (order[a.status], a.runner, a.model_type.lower()))


def supported(runner: str | None = None) -> list[str]:
    """model_types whose smoke test passes today (rows of one runner: mlx-lm's, or VLMs only mlx-vlm runs)."""
    return [a.model_type for a in ARCHITECTURES if a.status == Status.SUPPORTED and runner in (None, a.runner)]
