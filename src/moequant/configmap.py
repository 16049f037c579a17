"""What transformers' config says, in the names mlx-lm's ModelArgs reads: one table of renames.

transformers 5 renamed keys that mlx-lm's models were written against (the published releases'
names), moved some under `rope_parameters`, and derives others in code (`head_dim` =
`hidden_size // num_attention_heads` when the config has none). After target.fill_defaults has
filled every key config.json left out with transformers' own defaults, each Rename below fills
one ModelArgs key from transformers' value, so that a value the source states (or transformers
reads as its default) reaches ModelArgs instead of ModelArgs' own default.

A Rename only fills a key the config lacks and the target ModelArgs takes (or, with `overrides`,
replaces the key's value where transformers reads another key instead of it); `convert` names a
function of CONVERTERS that turns transformers' value (and the config) into mlx-lm's. A converter
returning None fills nothing; one returning NONE fills the key with None; one that finds a value
mlx-lm cannot express raises CheckpointError (one line).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .errors import CheckpointError

MISSING = object()
NONE = object()  # a converter's answer meaning "fill the key with None"


@dataclass(frozen=True)
class Rename:
    key: str  # what mlx-lm's ModelArgs reads
    source: str  # transformers' key (dotted for nested: rope_parameters.rope_theta); "" = the whole config
    convert: str = ""  # a key of CONVERTERS, "" = the value as it is
    # True: transformers never reads `key` (it reads `source`), so the value from `source` replaces a
    # stated `key` too (e.g. first_k_dense_replace beside the mlp_layer_types transformers reads)
    overrides: bool = False


CONVERTERS: dict[str, Callable[[Any, dict], Any]] = {}


def converter(name: str):
    def register(fn):
        CONVERTERS[name] = fn
        return fn
    return register


@converter("head_dim")
def _head_dim(config: dict, _: dict) -> int | None:
    """transformers' attention modules: getattr(config, "head_dim", hidden_size // num_attention_heads)."""
    if config.get("hidden_size") and config.get("num_attention_heads"):
        return config["hidden_size"] // config["num_attention_heads"]
    return None


def fixed(value) -> str:
    """The name of a converter that always answers `value`: for a ModelArgs key whose value
    transformers' model hard-codes (e.g. DeepSeek-V3-style routing: topk_method "noaux_tc")."""
    name = f"={value!r}"
    CONVERTERS.setdefault(name, lambda _value, _config: NONE if value is None else value)
    return name


def _layer_types(value, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CheckpointError(f"config.json: {what} is {value!r}; expected a list of layer type names")
    return value


@converter("rope_scaling_with_factor")
def _rope_scaling_with_factor(rope: dict, _: dict) -> dict | None:
    """rope_parameters as a rope_scaling that always has `factor` (1.0 for plain RoPE): for mlx-lm
    models that read rope_scaling["factor"] unconditionally (deepseek_v2's YaRN rotary embedding,
    which with factor 1.0 is plain RoPE)."""
    if not isinstance(rope, dict):
        return None
    scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
    scaling.setdefault("type", scaling.get("rope_type"))
    scaling.setdefault("factor", 1.0)
    return scaling


@converter("partial_rotary_factor")
def _partial_rotary_factor(rope: dict, _: dict) -> float | None:
    """transformers: config.rope_parameters.get("partial_rotary_factor", 1.0)."""
    return rope.get("partial_rotary_factor", 1.0) if isinstance(rope, dict) else None


@converter("rotary_dim")
def _rotary_dim(config: dict, _: dict) -> int | None:
    """transformers: int(head_dim * rope_parameters.get("partial_rotary_factor", 1.0)), head_dim as
    getattr(config, "head_dim", hidden_size // num_attention_heads)."""
    head_dim = config.get("head_dim") or _head_dim(config, config)
    rope = config.get("rope_parameters")
    if not head_dim or not isinstance(rope, dict):
        return None
    return int(head_dim * rope.get("partial_rotary_factor", 1.0))


@converter("twice")
def _twice(value, _: dict):
    return 2 * value if isinstance(value, int) else None


@converter("sparse_flags")
def _sparse_flags(mlp_layer_types, _: dict) -> list[bool]:
    """mlp_layer_types ("dense" / "sparse" per layer) -> one bool per layer, True for MoE."""
    return [t == "sparse" for t in _layer_types(mlp_layer_types, "mlp_layer_types")]


@converter("sparse_ints")
def _sparse_ints(mlp_layer_types, _: dict) -> list[int]:
    """mlp_layer_types -> 1 for an MoE layer, 0 for a dense one (mimo_v2_flash's moe_layer_freq)."""
    return [int(t == "sparse") for t in _layer_types(mlp_layer_types, "mlp_layer_types")]


@converter("sliding_ints")
def _sliding_ints(layer_types, _: dict) -> list[int]:
    """layer_types -> 1 for a sliding-window layer, 0 for full attention (hybrid_layer_pattern)."""
    return [int(t == "sliding_attention") for t in _layer_types(layer_types, "layer_types")]


def _dense_then_every(mlp_layer_types) -> tuple[int, int]:
    """(first_k_dense_replace, moe_layer_freq) for which DeepSeek's rule "MoE iff layer >= first_k
    and layer % freq == 0" gives exactly mlp_layer_types, or a one-line error."""
    types = _layer_types(mlp_layer_types, "mlp_layer_types")
    sparse = [t == "sparse" for t in types]
    first = sparse.index(True) if True in sparse else len(types)
    for freq in range(1, len(types) + 1):
        if sparse == [i >= first and i % freq == 0 for i in range(len(types))]:
            return first, freq
    raise CheckpointError(
        f"config.json: mlp_layer_types {types!r} is not dense layers then an MoE layer every n; expected a "
        "pattern mlx-lm's first_k_dense_replace / moe_layer_freq can say")


@converter("first_k_dense_replace")
def _first_k_dense_replace(mlp_layer_types, _: dict) -> int:
    return _dense_then_every(mlp_layer_types)[0]


@converter("moe_layer_freq")
def _moe_layer_freq(mlp_layer_types, _: dict) -> int:
    return _dense_then_every(mlp_layer_types)[1]


@converter("dense_then_sparse")
def _dense_then_sparse(mlp_layer_types, _: dict) -> int:
    """mlp_layer_types -> first_k_dense_replace for models whose every layer from it on is MoE."""
    first, freq = _dense_then_every(mlp_layer_types)
    if freq != 1:
        raise CheckpointError(
            f"config.json: mlp_layer_types {mlp_layer_types!r} has dense layers after the first MoE layer; expected "
            "dense layers then MoE layers only (mlx-lm reads first_k_dense_replace alone)")
    return first


@converter("layer_group_size")
def _layer_group_size(layer_types, config: dict) -> int:
    """layer_types -> the group size g for which mlx-lm's bailing_moe_v3 rule "full attention iff (l + 1) % g
    == 0 or l is in the last, partial group" gives exactly layer_types, or a one-line error."""
    types = _layer_types(layer_types, "layer_types")
    full = [t == "full_attention" for t in types]
    n = len(types)
    for g in range(1, n + 1):
        if full == [(i + 1) % g == 0 or i >= n // g * g for i in range(n)]:
            return g
    raise CheckpointError(
        f"config.json: layer_types {types!r} is not linear attention with every g-th layer (and the last partial "
        "group) full attention; expected a pattern mlx-lm's layer_group_size can say")


@converter("kda_layers")
def _kda_layers(config: dict, _: dict) -> dict | None:
    """transformers' KimiLinear keys -> mlx-lm's linear_attn_config: linear_num_heads, linear_head_dim,
    linear_conv_kernel_dim, and the 1-based layer numbers of layer_types' linear / full attention layers."""
    types = _layer_types(config.get("layer_types"), "layer_types")
    if not all(config.get(k) for k in ("linear_num_heads", "linear_head_dim", "linear_conv_kernel_dim")):
        return None
    return {
        "num_heads": config["linear_num_heads"], "head_dim": config["linear_head_dim"],
        "short_conv_kernel_size": config["linear_conv_kernel_dim"],
        "kda_layers": [i + 1 for i, t in enumerate(types) if t == "linear_attention"],
        "full_attn_layers": [i + 1 for i, t in enumerate(types) if t == "full_attention"],
    }


@converter("same_partial_rotary_factor")
def _same_partial_rotary_factor(rope: dict, _: dict) -> float | None:
    """Per-layer-type rope_parameters ({"full_attention": {...}, "sliding_attention": {...}}) -> the
    one partial_rotary_factor mlx-lm applies to both (transformers' default 0.334 for MiMo-V2)."""
    if not isinstance(rope, dict) or not all(isinstance(v, dict) for v in rope.values()):
        return None
    factors = {k: v.get("partial_rotary_factor", 0.334) for k, v in rope.items()}
    if len(set(factors.values())) > 1:
        raise CheckpointError(
            f"config.json: rope_parameters has partial_rotary_factor {factors!r}; expected one value for every "
            "layer type (mlx-lm's mimo_v2_flash applies one partial_rotary_factor to all layers)")
    return next(iter(factors.values()), None)


def _full_attention_override(key: str):
    """transformers' Gemma4TextConfig states the full-attention layers' own head_dim / kv heads as
    per_layer_config {layer index: {key: value}} (from a release's global_head_dim /
    num_global_key_value_heads); mlx-lm's gemma4_text reads the one value of every such layer."""
    def convert(per_layer: dict, config: dict):
        types = config.get("layer_types") or []
        if not isinstance(per_layer, dict):
            return None
        values = {(per_layer.get(str(i)) or per_layer.get(i) or {}).get(key)
                  for i, t in enumerate(types) if t == "full_attention"}
        return values.pop() if len(values) == 1 else None
    return convert


CONVERTERS["full_attention_head_dim"] = _full_attention_override("head_dim")
CONVERTERS["full_attention_kv_heads"] = _full_attention_override("num_key_value_heads")


@converter("block_pattern")
def _block_pattern(layers_block_type, _: dict) -> str | None:
    """transformers' NemotronH layers_block_type -> the hybrid_override_pattern string releases state
    ("MEM*E"), by mlx-lm's own table (mlx-lm builds the same pattern as a list of characters)."""
    from mlx_lm.models.nemotron_h import ModelArgs

    table = ModelArgs._block_type_to_char
    if not isinstance(layers_block_type, list) or not all(t in table for t in layers_block_type):
        return None
    return "".join(table[t] for t in layers_block_type)


@converter("full_attention_interval")
def _full_attention_interval(layer_types, _: dict) -> int:
    """layer_types -> the n of mlx-lm's rule "layer l is full attention iff (l + 1) % n == 0"
    (qwen3_next, qwen3_5: full_attention_interval), or a one-line error for another pattern."""
    types = _layer_types(layer_types, "layer_types")
    full = [t == "full_attention" for t in types]
    for n in range(1, len(types) + 1):
        if full == [(i + 1) % n == 0 for i in range(len(types))]:
            return n
    raise CheckpointError(
        f"config.json: layer_types {types!r} is not full attention every n-th layer; expected a pattern mlx-lm's "
        "full_attention_interval can say (layer l full iff (l + 1) % n == 0)")


# transformers' layer type names -> mlx-lm's granitemoehybrid (modeling_granitemoehybrid: a layer is Mamba iff
# its type is "linear_attention", else attention; mlx-lm's GraniteMoeHybridLayer takes "mamba" / "attention")
_GRANITE_LAYER_TYPES = {"linear_attention": "mamba", "mamba": "mamba", "full_attention": "attention",
                        "attention": "attention"}


@converter("granite_layer_types")
def _granite_layer_types(layer_types, _: dict) -> list[str]:
    types = _layer_types(layer_types, "layer_types")
    if bad := [t for t in types if t not in _GRANITE_LAYER_TYPES]:
        raise CheckpointError(
            f"config.json: layer_types has {bad[0]!r}; expected linear_attention (mamba) or full_attention "
            "(attention), the layers mlx-lm's granitemoehybrid runs")
    return [_GRANITE_LAYER_TYPES[t] for t in types]


@converter("rope_or_nope")
def _rope_or_nope(position_embedding_type, _: dict) -> str:
    """transformers' GraniteMoeHybridModel builds RoPE only when position_embedding_type == "rope" (None:
    no position embedding); mlx-lm's applies RoPE unless it is "nope"."""
    return "rope" if position_embedding_type == "rope" else "nope"


@converter("ntk_alpha_rope_scaling")
def _ntk_alpha_rope_scaling(rope: dict, _: dict) -> dict | None:
    """rope_parameters -> mlx-lm's hunyuan rope_scaling, which it always reads (DynamicNTKAlphaRoPE:
    base * alpha ** (d / (d - 2))). transformers' HunYuanMoEV1RotaryEmbedding runs plain RoPE for
    rope_type "default" (alpha 1.0 in mlx-lm's terms) and that NTK-alpha base for a "dynamic" type
    with an alpha; any other scaling mlx-lm cannot say."""
    if not isinstance(rope, dict):
        return None
    kind = rope.get("rope_type", rope.get("type"))
    if kind in (None, "default"):
        return {"type": "dynamic", "factor": 1.0, "alpha": 1.0}
    if kind == "dynamic" and rope.get("alpha"):
        return {"type": "dynamic", "factor": rope.get("factor", 1.0), "alpha": rope["alpha"]}
    raise CheckpointError(
        f"config.json: rope_parameters {rope!r}; expected rope_type default, or dynamic with an alpha (mlx-lm's "
        "hunyuan runs NTK-alpha RoPE only)")


@converter("interleave_moe_layer_step")
def _interleave_moe_layer_step(moe_layers, config: dict) -> int | None:
    """moe_layers (transformers' Llama4TextConfig: the MoE layer indices) -> the step of mlx-lm's rule
    "layer l is MoE iff l % step == step - 1", or a one-line error for another pattern."""
    n = config.get("num_hidden_layers")
    if not isinstance(moe_layers, list) or not isinstance(n, int):
        return None
    for step in range(1, n + 1):
        if sorted(moe_layers) == list(range(step - 1, n, step)):
            return step
    raise CheckpointError(
        f"config.json: moe_layers {moe_layers!r} is not every step-th layer; expected a pattern mlx-lm's "
        "interleave_moe_layer_step can say (layer l MoE iff l % step == step - 1)")


# Renames every model_type gets (tried in order; the first source found wins).
COMMON: tuple[Rename, ...] = (
    Rename("head_dim", "", "head_dim"),
)

# model_type (mlx-lm's; for mlx-vlm's sub-configs, text_config's and vision_config's own, see
# target.resolve_config) -> its renames, in alphabetical order of model_type.
RENAMES: dict[str, tuple[Rename, ...]] = {
    # transformers' BailingHybrid (Ling 3.0; mlx-lm's bailing_moe_v3): the attribute_map names, KDA heads of
    # linear_head_dim (config.json's head_dim is qk_rope_head_dim), shared experts of moe_intermediate_size,
    # interleaved RoPE, f_proj without LoRA, layer_types / mlp_layer_types for the layer kinds
    "bailing_moe_v3": (
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
    # transformers' DeepseekV2 computes plain RoPE when rope_type is "default"; mlx-lm's deepseek_v2 always
    # builds its YaRN rotary embedding from rope_scaling["factor"] (plain RoPE at factor 1.0)
    "deepseek_v2": (
        Rename("rope_scaling", "rope_parameters", "rope_scaling_with_factor"),
        # transformers' DeepseekV2: MoE iff layer >= first_k_dense_replace (moe_layer_freq is never read)
        Rename("moe_layer_freq", "", fixed(1), overrides=True),
    ),
    # transformers' ExaoneMoe: layer l is MoE iff mlp_layer_types[l] == "sparse"
    "exaone_moe": (
        Rename("is_moe_layer", "mlp_layer_types", "sparse_flags"),
    ),
    # transformers' Gemma4Config keeps vocab_size in text_config only; mlx-lm's gemma4 reads the outer one (default
    # 262144) and writes it into text_config (mlx_lm/models/gemma4.py ModelArgs.__post_init__)
    "gemma4": (
        Rename("vocab_size", "text_config.vocab_size"),
    ),
    # transformers' Gemma4Text: the full-attention layers' head_dim / kv heads in per_layer_config
    "gemma4_text": (
        Rename("global_head_dim", "per_layer_config", "full_attention_head_dim"),
        Rename("num_global_key_value_heads", "per_layer_config", "full_attention_kv_heads"),
    ),
    # transformers' Glm4vMoeConfig names the token before an image image_start_token_id; mlx-vlm's glm4v_moe
    # ModelConfig reads vision_start_token_id (default 151339, GLM-4.5V's) to find images for their 3-D positions
    # (mlx_vlm/models/glm4v_moe/language.py get_rope_index), else gives image tokens text positions
    "glm4v_moe": (
        Rename("vision_start_token_id", "image_start_token_id"),
        Rename("vision_end_token_id", "image_end_token_id"),
    ),
    # transformers' Glm4vMoeText has no q/k norm (modeling_glm4v_moe.py Glm4vMoeTextAttention); mlx-vlm's
    # glm4v_moe TextConfig requires use_qk_norm
    "glm4v_moe_text": (
        Rename("use_qk_norm", "", fixed(False)),
    ),
    # transformers' GlmMoeDsa: sigmoid router with e_score_correction_bias and group-limited top-k (DeepSeek-V3's
    # noaux_tc), MoE iff mlp_layer_types[l] == "sparse" (first_k_dense_replace is only its default)
    "glm_moe_dsa": (
        Rename("topk_method", "", fixed("noaux_tc")),
        Rename("scoring_func", "", fixed("sigmoid")),
        Rename("first_k_dense_replace", "mlp_layer_types", "first_k_dense_replace", overrides=True),
        Rename("moe_layer_freq", "mlp_layer_types", "moe_layer_freq", overrides=True),
    ),
    # transformers' GraniteMoeHybrid spells its layer types linear_attention / full_attention (it remaps a
    # release's mamba / attention on reading); mlx-lm's takes mamba / attention
    "granitemoehybrid": (
        Rename("layer_types", "layer_types", "granite_layer_types", overrides=True),
        Rename("position_embedding_type", "position_embedding_type", "rope_or_nope", overrides=True),
    ),
    # transformers' HunYuanMoEV1 (model_type hunyuan_v1_moe, run by mlx-lm's hunyuan): every layer has one
    # shared MLP beside the experts and q/k RMSNorm after RoPE, no cross-layer KV sharing; experts and shared MLP
    # are intermediate_size wide (mlx-lm: moe_intermediate_size when set, else intermediate_size)
    "hunyuan": (
        Rename("use_mixed_mlp_moe", "", fixed(True)),
        Rename("num_shared_expert", "", fixed(1)),
        Rename("use_qk_norm", "", fixed(True)),
        Rename("use_cla", "", fixed(False)),
        Rename("cla_share_factor", "", fixed(1)),
        Rename("rope_scaling", "rope_parameters", "ntk_alpha_rope_scaling"),
    ),
    # transformers' KimiLinear: KDA dims and layer kinds in their own keys (mlx-lm: linear_attn_config), MLA
    # without RoPE (no rope_theta), sigmoid group-limited routing, MoE iff mlp_layer_types[l] == "sparse"
    "kimi_linear": (
        Rename("linear_attn_config", "", "kda_layers", overrides=True),
        Rename("rope_theta", "", fixed(None)),
        Rename("first_k_dense_replace", "mlp_layer_types", "first_k_dense_replace", overrides=True),
        Rename("moe_layer_freq", "mlp_layer_types", "moe_layer_freq", overrides=True),
        Rename("moe_router_activation_func", "", fixed("sigmoid"), overrides=True),
        Rename("use_grouped_topk", "", fixed(True), overrides=True),
    ),
    # transformers' Llama4TextConfig: the MoE layers are moe_layers (interleave_moe_layer_step only builds its default)
    "llama4": (
        Rename("interleave_moe_layer_step", "moe_layers", "interleave_moe_layer_step", overrides=True),
    ),
    # transformers' Llama4 projects the vision model's last hidden state (modeling_llama4.py get_image_features);
    # mlx-vlm's llama4 VisionConfig requires vision_feature_layer (the model reads its own argument, -1)
    "llama4_vision_model": (
        Rename("vision_feature_layer", "", fixed(-1)),
    ),
    # transformers' LongcatFlash: MLA that always scales q and kv latents by sqrt(hidden / rank), routing that
    # sends the zero experts' share through unchanged (identity)
    "longcat_flash": (
        Rename("attention_method", "", fixed("MLA")),
        Rename("zero_expert_type", "", fixed("identity")),
        Rename("mla_scale_q_lora", "", fixed(True)),
        Rename("mla_scale_kv_lora", "", fixed(True)),
    ),
    # transformers' MiMoV2Flash: sliding layers have twice the kv heads and attention sinks, full layers
    # neither; per-layer-type rope_parameters; no shared experts; sigmoid noaux_tc routing
    "mimo_v2_flash": (
        Rename("hybrid_layer_pattern", "layer_types", "sliding_ints"),
        Rename("moe_layer_freq", "mlp_layer_types", "sparse_ints"),
        Rename("add_swa_attention_sink_bias", "", fixed(True)),
        Rename("add_full_attention_sink_bias", "", fixed(False)),
        # both mask kv > q - window; transformers' window is sliding_window (a release's sliding_window_size + 1),
        # mlx-lm's is sliding_window_size: filled from sliding_window only where the config has no
        # sliding_window_size (a stated one is what mlx-lm reads; moequant.archs says how the two differ)
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
    # transformers' MiniMaxM2: partial RoPE over int(head_dim * partial_rotary_factor) dims, no shared expert
    # (mlx-lm's minimax reads shared_intermediate_size but builds nothing from it)
    "minimax_m2": (
        Rename("rotary_dim", "", "rotary_dim"),
        Rename("shared_intermediate_size", "", fixed(0)),
    ),
    # transformers' NemotronH: layers_block_type (a release's hybrid_override_pattern, read into it)
    "nemotron_h": (
        Rename("hybrid_override_pattern", "layers_block_type", "block_pattern"),
    ),
    # transformers' Qwen3_5Moe (text_config): layer_types (full_attention_interval is only read to build it)
    "qwen3_5_moe": (
        Rename("full_attention_interval", "layer_types", "full_attention_interval"),
    ),
    # transformers' Qwen3Next: layer_types (full_attention_interval is only read to build it)
    "qwen3_next": (
        Rename("full_attention_interval", "layer_types", "full_attention_interval"),
    ),
    # transformers' Qwen3VLMoeText always renormalizes the top-k routing weights (modeling_qwen3_vl_moe.py:166,
    # Qwen3VLMoeTextTopKRouter) and has no norm_topk_prob; mlx-lm's qwen3_moe (qwen3_vl_moe's language model)
    # requires it
    "qwen3_vl_moe": (
        Rename("norm_topk_prob", "", fixed(True)),
    ),
    # transformers 5 names Qwen3-VL-MoE's vision_config qwen3_vl_moe_vision; mlx-vlm's VisionModel takes only the
    # releases' qwen3_vl_moe (mlx_vlm/models/qwen3_vl_moe/vision.py:195), the same tower
    "qwen3_vl_moe_vision": (
        Rename("model_type", "", fixed("qwen3_vl_moe"), overrides=True),
    ),
    # transformers' SolarOpen: every layer MoE (no dense layer, so no intermediate_size is read), partial
    # rotary from rope_parameters
    "solar_open": (
        Rename("first_k_dense_replace", "", fixed(0), overrides=True),
        Rename("intermediate_size", "moe_intermediate_size"),
        Rename("partial_rotary_factor", "rope_parameters", "partial_rotary_factor"),
    ),
}


def lookup(config: dict, dotted: str):
    value = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return MISSING
        value = value[part]
    return value


def apply_renames(resolved: dict, takes, model_type: str, where: str = "") -> list[str]:
    """Fills (in place) the keys a ModelArgs taking `takes` lacks from their transformers
    spelling; one note per key filled."""
    notes = []
    for rename in RENAMES.get(model_type, ()) + COMMON:
        if (rename.key in resolved and not rename.overrides) or rename.key not in takes:
            continue
        value = resolved if rename.source == "" else lookup(resolved, rename.source)
        if value is MISSING:
            continue
        if rename.convert:
            value = CONVERTERS[rename.convert](value, resolved)
            if value is None:
                continue
            value = None if value is NONE else value
        stated = resolved.get(rename.key, MISSING)
        if stated == value:
            continue
        resolved[rename.key] = value
        instead = "" if stated is MISSING else f", which transformers reads instead of {rename.key}={stated!r}"
        notes.append(f"{where}{rename.key} = {value!r} (from {where}{rename.source or rename.convert}{instead})")
    return notes
