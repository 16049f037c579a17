"""What transformers' config says, in the names mlx-lm's ModelArgs reads: renames and their converters.

transformers 5 renamed keys that mlx-lm's models were written against (the published releases'
names), moved some under `rope_parameters`, and derives others in code (`head_dim` =
`hidden_size // num_attention_heads` when the config has none). After target.fill_defaults has
filled every key config.json left out with transformers' own defaults, each Rename (the model_type's
registry row's, then COMMON below) fills one ModelArgs key from transformers' value, so that a value
the source states (or transformers reads as its default) reaches ModelArgs instead of ModelArgs' own
default.

A Rename only fills a key the config lacks and the target ModelArgs takes (or, with `overrides`,
replaces the key's value where transformers reads another key instead of it); `convert` names a
function of CONVERTERS that turns transformers' value (and the config) into mlx-lm's. A converter
returning None fills nothing; one returning NONE fills the key with None; one that finds a value
mlx-lm cannot express raises CheckpointError (one line).
"""

from __future__ import annotations

from typing import Any, Callable

from .errors import CheckpointError
from .registry import FIXED, RENAMES, Rename, registrar

MISSING = object()
NONE = object()  # a converter's answer meaning "fill the key with None"


CONVERTERS: dict[str, Callable[[Any, dict], Any]] = {}
converter = registrar(CONVERTERS)


@converter("head_dim")
def _head_dim(config: dict, _: dict) -> int | None:
    """transformers' attention modules: getattr(config, "head_dim", hidden_size // num_attention_heads)."""
    if config.get("hidden_size") and config.get("num_attention_heads"):
        return config["hidden_size"] // config["num_attention_heads"]
    return None


def _layer_types(value, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CheckpointError(f"config.json: {what} is {value!r}; expected a list of layer type names")
    return value


@converter("attn_config_rope_theta")
def _attn_config_rope_theta(theta, config: dict) -> dict | None:
    """attn_config with rope_theta set to `theta`: DBRX's attention reads attn_config.rope_theta in mlx-lm,
    rope_parameters.rope_theta in transformers 5 (DbrxRotaryEmbedding)."""
    attn = config.get("attn_config")
    return {**attn, "rope_theta": theta} if isinstance(attn, dict) else None


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


@converter("prefix_dense_intermediate_size")
def _prefix_dense_intermediate_size(config: dict, _: dict) -> int | None:
    """transformers' Cohere2Moe dense layers: prefix_dense_intermediate_size, None meaning intermediate_size."""
    size = config.get("prefix_dense_intermediate_size")
    return config.get("intermediate_size") if size is None else size


@converter("full_attention_indices")
def _full_attention_indices(layer_types, _: dict) -> list[int]:
    """layer_types -> the indices of its full-attention layers (transformers' Flint: NoPE there, RoPE in
    the sliding ones; mlx-vlm's flint: no_rope_layer_indices)."""
    return [i for i, t in enumerate(_layer_types(layer_types, "layer_types")) if t == "full_attention"]


@converter("qwen_dense_layers")
def _qwen_dense_layers(config: dict, _: dict) -> list[int] | None:
    """transformers' Qwen-MoE decoder layers (Flint's): MoE iff the layer is not in mlp_only_layers and
    num_experts > 0 and (layer + 1) % decoder_sparse_step == 0; the dense ones' indices."""
    n, step = config.get("num_hidden_layers"), config.get("decoder_sparse_step") or 1
    if not isinstance(n, int):
        return None
    dense = config.get("mlp_only_layers") or []
    return [i for i in range(n) if i in dense or not ((config.get("num_experts") or 0) > 0 and (i + 1) % step == 0)]


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


@converter("sparse_indices")
def _sparse_indices(mlp_layer_types, _: dict) -> list[int]:
    """mlp_layer_types -> the indices of the MoE layers (step3p5's moe_layers_enum)."""
    return [i for i, t in enumerate(_layer_types(mlp_layer_types, "mlp_layer_types")) if t == "sparse"]


@converter("sliding_attention_setting")
def _sliding_attention_setting(heads, config: dict) -> dict | None:
    """transformers' Step3p7TextConfig: the sliding layers' own head count (num_sliding_attention_heads), their
    key/value heads every layer's; step3p5 reads both from attention_other_setting."""
    if not isinstance(heads, int):
        return None
    return {"num_attention_heads": heads, "num_attention_groups": config.get("num_key_value_heads")}


def _per_layer_rope(key: str, default):
    """transformers' Step3p7TextConfig keeps RoPE per layer type (rope_parameters {"full_attention": {…},
    "sliding_attention": {…}}); step3p5 reads one value per layer (rope_theta, partial_rotary_factors)."""
    def convert(rope, config: dict):
        types = config.get("layer_types")
        if not isinstance(rope, dict) or not isinstance(types, list) or not all(
                isinstance(rope.get(t), dict) for t in types):
            return None
        return [rope[t].get(key, default) for t in types]
    return convert


CONVERTERS["per_layer_rope_theta"] = _per_layer_rope("rope_theta", None)
CONVERTERS["per_layer_partial_rotary_factors"] = _per_layer_rope("partial_rotary_factor", 1.0)


def _scaled_layer_types(rope) -> dict[str, dict]:
    """Layer type -> its scaled RoPE (rope_type not plain, without the per-layer theta / rotary share) in a
    rope_parameters kept per layer type; a CheckpointError where two layer types scale differently."""
    scaled = {t: {k: v for k, v in p.items() if k not in ("rope_theta", "partial_rotary_factor")}
              for t, p in rope.items() if isinstance(p, dict) and p.get("rope_type") not in PLAIN_ROPE_TYPES}
    if len({repr(sorted(p.items())) for p in scaled.values()}) > 1:
        raise CheckpointError(f"config.json: rope_parameters scales RoPE differently per layer type ({scaled!r}); "
                              "expected one scaling (step3p5 reads one rope_scaling for the layer types it names)")
    return scaled


@converter("scaled_rope_scaling")
def _scaled_rope_scaling(rope, config: dict) -> dict | None:
    """transformers' Step3p7TextConfig scales RoPE per layer type (a release's rope_scaling goes to
    rope_parameters["full_attention"]): the one scaling, as step3p5's rope_scaling."""
    scaled = _scaled_layer_types(rope) if isinstance(rope, dict) else {}
    scaling = next(iter(scaled.values()), None)
    return {**scaling, "type": scaling["rope_type"]} if scaling else None


@converter("scaled_layer_types")
def _scaled_layer_types_list(rope, config: dict) -> list[str] | None:
    """The layer types whose RoPE transformers scales, as step3p5's yarn_only_types (the others rotate plainly)."""
    scaled = _scaled_layer_types(rope) if isinstance(rope, dict) else {}
    return sorted(scaled) or None


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


def _moe_span(mlp_layer_types) -> tuple[int, int, int]:
    """(moe_layer_start_index, moe_layer_end_index, moe_layer_interval) for which mlx-vlm's ernie4_5_moe_vl rule
    "MoE iff start <= l <= end and (l + 1) % interval == 0" gives exactly mlp_layer_types, or a one-line error."""
    types = _layer_types(mlp_layer_types, "mlp_layer_types")
    sparse = [t == "sparse" for t in types]
    if True in sparse:
        start, end = sparse.index(True), len(types) - 1 - sparse[::-1].index(True)
        for interval in range(1, len(types) + 1):
            if sparse == [start <= i <= end and (i + 1) % interval == 0 for i in range(len(types))]:
                return start, end, interval
    raise CheckpointError(
        f"config.json: mlp_layer_types {types!r} is not an MoE layer every n within one span of layers; expected a "
        "pattern mlx-vlm's moe_layer_start_index / moe_layer_end_index / moe_layer_interval can say")


CONVERTERS.update({key: (lambda i: lambda types, _: _moe_span(types)[i])(i) for i, key in enumerate(
    ("moe_layer_start_index", "moe_layer_end_index", "moe_layer_interval"))})


@converter("text_and_multimodal")
def _text_and_multimodal(moe_num_experts, _: dict) -> list[int] | None:
    """transformers' ERNIE-4.5-VL: moe_num_experts experts in each of its two sets (text, multimodal); mlx-vlm's
    ernie4_5_moe_vl builds the multimodal set only from a list of the two counts."""
    return [moe_num_experts, moe_num_experts] if isinstance(moe_num_experts, int) else None


@converter("last")
def _last(values, _: dict):
    return values[-1] if isinstance(values, list) and values else None


@converter("mlp_ratio")
def _mlp_ratio(config: dict, _: dict) -> float | None:
    """A vision MLP's width as a multiple of its tower's: intermediate_size / hidden_size."""
    if config.get("intermediate_size") and config.get("hidden_size"):
        return config["intermediate_size"] / config["hidden_size"]
    return None


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


@converter("img_token_compression_config")
def _img_token_compression_config(config: dict, _: dict) -> dict | None:
    """transformers' vision_config spatial_merge_size / temporal_patch_size, as the img_token_compression_config
    mlx-vlm's minimax_m3_vl vision tower reads them from (2 and 2 where it has none)."""
    sizes = {k: config[k] for k in ("spatial_merge_size", "temporal_patch_size") if k in config}
    return sizes or None


@converter("ocr_projector")
def _ocr_projector(config: dict, _: dict) -> dict | None:
    """transformers' Unlimited-OCR projector, one Linear from SAM's last channels and the CLIP blocks' width side by
    side to the language model's width, as the projector_config mlx-vlm's deepseekocr MlpProjector reads."""
    sam = lookup(config, "vision_config.sam_config.downsample_channels")
    width, hidden = lookup(config, "vision_config.encoder_config.hidden_size"), lookup(config, "text_config.hidden_size")
    if not isinstance(sam, list) or not sam or not isinstance(width, int) or not isinstance(hidden, int):
        return None
    return {"projector_type": "linear", "input_dim": sam[-1] + width, "n_embed": hidden}


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


# the converters the registry's rows name with registry.fixed(value): each always answers its value
CONVERTERS.update({name: (lambda value: lambda _value, _config: NONE if value is None else value)(value)
                   for name, value in FIXED.items()})

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


@converter("indexed_as_full_attention")
def _indexed_as_full_attention(layer_types, _: dict) -> list[str]:
    """transformers' Qwen4ExpTextConfig renames the releases' full_attention layers (QSA-indexed attention) to
    indexed_attention; mlx-vlm's qwen4_exp takes the releases' name."""
    return ["full_attention" if t == "indexed_attention" else t for t in _layer_types(layer_types, "layer_types")]


@converter("output_gate_type")
def _output_gate_type(config: dict, _: dict) -> str | None:
    """transformers' Qwen4-Exp gates its linear attention's output with output_gate_type, or hidden_act when that
    is None; mlx-vlm's qwen4_exp defaults it to sigmoid."""
    return config.get("output_gate_type") or config.get("hidden_act")


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


# transformers' DeepseekV4 attention types -> mlx-vlm's compress_ratios entry (0: sliding window only)
_COMPRESSED = {"sliding_attention": None, "compressed_sparse_attention": 4, "heavily_compressed_attention": 128}


@converter("compress_ratios")
def _compress_ratios(config: dict, _: dict) -> list[int] | None:
    """transformers' DeepseekV4 layer_types and compress_rates -> mlx-vlm's compress_ratios (one per layer: 0 for
    a sliding-window layer, else its type's rate), or a one-line error for a rate mlx-vlm's model does not run."""
    types, rates = _layer_types(config.get("layer_types"), "layer_types"), config.get("compress_rates")
    if not isinstance(rates, dict):
        return None
    if bad := [t for t in types if t not in _COMPRESSED]:
        raise CheckpointError(f"config.json: layer_types has {bad[0]!r}; expected one of {', '.join(_COMPRESSED)}")
    ratios = [0 if _COMPRESSED[t] is None else rates.get(t) for t in types]
    for t, ratio in zip(types, ratios):
        if _COMPRESSED[t] is not None and ratio != _COMPRESSED[t]:
            raise CheckpointError(f"config.json: compress_rates[{t!r}] is {ratio!r}; expected {_COMPRESSED[t]} "
                                  "(mlx-vlm's deepseek_v4 compresses by 4 with an indexer, by 128 without)")
    return ratios


@converter("hash_layers")
def _hash_layers(mlp_layer_types, _: dict) -> int:
    """transformers' DeepseekV4 mlp_layer_types -> mlx-vlm's num_hash_layers (the first layers hash-routed)."""
    types = _layer_types(mlp_layer_types, "mlp_layer_types")
    n = next((i for i, t in enumerate(types) if t != "hash_moe"), len(types))
    if "hash_moe" in types[n:]:
        raise CheckpointError(f"config.json: mlp_layer_types {types!r} has hash_moe after a moe layer; expected "
                              "hash_moe layers first (mlx-vlm reads num_hash_layers)")
    return n


@converter("scaled_rope")
def _scaled_rope(rope: dict, _: dict):
    """One rope_parameters entry (DeepseekV4's compress) -> a rope_scaling: None for plain RoPE, else its
    values without the base and the rotary share (read from their own keys)."""
    if not isinstance(rope, dict):
        return None
    if rope.get("rope_type", rope.get("type")) in PLAIN_ROPE_TYPES:
        return NONE
    return {k: v for k, v in rope.items() if k not in ("rope_theta", "partial_rotary_factor")}


# Renames every model_type gets, after its registry row's (registry.RENAMES; tried in order, the first
# source found wins).
COMMON: tuple[Rename, ...] = (
    Rename("head_dim", "", "head_dim"),
)

# config.json keys transformers keeps for itself: never filled from its defaults
TRANSFORMERS_BOOKKEEPING = frozenset({
    "architectures", "transformers_version", "_name_or_path", "return_dict", "output_hidden_states",
    "output_attentions", "chunk_size_feed_forward", "is_encoder_decoder", "id2label", "label2id", "problem_type",
    "dtype", "torch_dtype", "auto_map", "model_type", "quantization_config", "quantization",
})

# rope_parameters.rope_type values that mean "no scaling" (anything else becomes rope_scaling)
PLAIN_ROPE_TYPES = ("default", None)

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
        key = rename.key
        if isinstance(value, dict) and isinstance(stated, dict):  # one value inside a dict: say only that one
            changed = [k for k in value if stated.get(k, MISSING) != value[k]]
            if len(changed) == 1:
                key, value, stated = f"{key}.{changed[0]}", value[changed[0]], stated.get(changed[0], MISSING)
        instead = "" if stated is MISSING else f", which transformers reads instead of {key}={stated!r}"
        notes.append(f"{where}{key} = {value!r} (from {where}{rename.source or rename.convert}{instead})")
    return notes
