"""Where mlx-lm's model computes something other than transformers' for the same checkpoint: a
config value it ignores, a tensor it drops, a routing step it does differently.

moequant feeds mlx-lm's model the checkpoint's weights exactly (a `--no-quantize` output is the
source's function as mlx-lm computes it); where mlx-lm's model itself differs from transformers'
forward, the output differs from transformers too, and moequant says so instead of being silently
wrong: each `Ignored` entry of a registry row (registry.IGNORED_BY_MLX_LM) that a source triggers
becomes one plan note and one warning line. The entries name the code on both sides (mlx-lm
0.32.2, transformers 5.25.0); `moequant archs` says the same in its note for the model_type.
Whether an entry shows for a source is a predicate here, in MATTERS, that the entry names.

An entry belongs to the row of the model_type mlx-lm runs (target.resolve_config's) and reads the
resolved config (config.json with transformers' defaults filled in, so a key the file leaves out
reads as transformers reads it), or SRC's tensor names. A row's `ignored_by_vlm` entries
(registry.IGNORED_BY_MLX_VLM) say the same of mlx-vlm's models (0.7.10; their vision towers, a language
model of mlx-vlm's own, and the text models only mlx-vlm runs), for an output for mlx-vlm.
"""

from __future__ import annotations

import fnmatch
import logging
import math
from typing import Any, Callable, Iterable

from .configmap import MISSING, PLAIN_ROPE_TYPES, lookup
from .errors import CheckpointError
from .registry import IGNORED_BY_MLX_LM, IGNORED_BY_MLX_VLM, OTHER_THAN, registrar
from .target import MLX_VLM, runner_of

log = logging.getLogger(__name__)

MATTERS: dict[str, Callable[[Any, dict], bool]] = {}  # name -> (value, resolved config) -> whether it shows
matters = registrar(MATTERS)


@matters("window_shorter_than_context")
def _window_shorter_than_context(window, config: dict) -> bool:
    """A sliding window (or another length: hy_v4's index_topk) that some sequence the runner accepts is longer than."""
    return isinstance(window, int) and 0 < window < (config.get("max_position_embeddings") or float("inf"))


@matters("sliding_layers")
def _has_sliding_layers(layer_types, config: dict) -> bool:
    return isinstance(layer_types, list) and "sliding_attention" in layer_types and \
        _window_shorter_than_context(config.get("sliding_window"), config)


@matters("untied")
def _untied(tied, config: dict) -> bool:
    return tied is False


@matters("not_every_fourth_nope")
def _not_every_fourth_nope(no_rope_layers, config: dict) -> bool:
    """Whether transformers' Llama-4 layers are other than mlx-lm's: RoPE + chunked attention in every
    layer but each 4th (NoPE, global attention), 4 layers or more."""
    text = config.get("text_config") or {}
    n = text.get("num_hidden_layers")
    if not isinstance(n, int):
        return False
    pattern = [int((i + 1) % 4 != 0) for i in range(n)]
    chunked = ["chunked_attention" if p and text.get("attention_chunk_size") is not None else "full_attention"
               for p in pattern]
    return not (n >= 4 and list(no_rope_layers or pattern) == pattern and text.get("layer_types") in (None, chunked))


@matters("sliding_window_used")
def _sliding_window_used(use_sliding_window, config: dict) -> bool:
    return use_sliding_window is True and _window_shorter_than_context(config.get("sliding_window"), config)


@matters("always")
def _always(found, config: dict) -> bool:
    return True


@matters("softmax_top_k_unnormalized")
def _softmax_top_k_unnormalized(norm_topk_prob, config: dict) -> bool:
    """Softmax routing over fewer experts than there are, the chosen weights not renormalized."""
    return norm_topk_prob is False and config.get("expert_selection_fn") == "softmax" and \
        (config.get("num_experts_per_tok") or 0) < (config.get("num_experts") or 0)


@matters("scaled_rope")
def _scaled_rope(rope_type, config: dict) -> bool:
    return rope_type not in PLAIN_ROPE_TYPES


@matters("sliding_dense_prefix")
def _sliding_dense_prefix(layer_types, config: dict) -> bool:
    """A dense first layer (first_k_dense_replace) that layer_types makes sliding-window attention."""
    dense = config.get("first_k_dense_replace") or 0
    return isinstance(layer_types, list) and "sliding_attention" in layer_types[:dense]


@matters("false")
def _false(value, config: dict) -> bool:
    return value is False


@matters("hunyuan_v1_top_k")
def _hunyuan_v1_top_k(moe_topk, config: dict) -> bool:
    """transformers' HunYuanMoEV1 (which mlx-lm runs as hunyuan) choosing fewer experts than it has."""
    return "HunYuanMoEV1ForCausalLM" in (config.get("architectures") or ()) and moe_topk != config.get("num_experts")


@matters("index_heads_pooled")
def _index_heads_pooled(index_n_heads, config: dict) -> bool:
    """MiniMax-M3's sparse layers with more than one index head (mlx-vlm selects one set of blocks for all)."""
    text = config.get("text_config") or {}
    return isinstance(index_n_heads, int) and index_n_heads > 1 and "minimax_m3_sparse" in (text.get("layer_types") or ())
@matters("not_head_dim")
def _not_head_dim(query_pre_attn_scalar, config: dict) -> bool:
    """An attention scale other than 1/sqrt(head_dim) (of the language model: text_config's where it has one)."""
    text = config.get("text_config") or config
    return isinstance(query_pre_attn_scalar, (int, float)) and query_pre_attn_scalar != text.get("head_dim")


@matters("top_k_below_all")
def _top_k_below_all(num_experts_per_tok, config: dict) -> bool:
    return num_experts_per_tok < (config.get("num_experts") or 0)


@matters("all")
def _all(value, config: dict) -> bool:
    return value == "all"


@matters("finite")
def _finite(limit, config: dict) -> bool:
    return isinstance(limit, (int, float)) and math.isfinite(limit)


@matters("hierarchical_top_k")
def _hierarchical_top_k(index_topk, config: dict) -> bool:
    """Whether mlx-vlm's deepseek_v4 indexer (HISA) can take over from the exact top-k: a compressed sparse layer
    that holds index_block x index_keep entries (64 x 16 unless config.json says, mlx_vlm/models/deepseek_v4/
    config.py) at the longest context, and no more entries kept than those."""
    block, keep = config.get("index_block", 64), config.get("index_keep", 16)
    rate = (config.get("compress_rates") or {}).get("compressed_sparse_attention")
    entries = (config.get("max_position_embeddings") or 0) // rate if isinstance(rate, int) and rate > 0 else 0
    return ("compressed_sparse_attention" in (config.get("layer_types") or ()) and block > 0
            and entries >= block * keep >= index_topk)


# the predicates the registry's rows name with registry.other_than(value): each shows for any other value
MATTERS.update({name: (lambda value: lambda found, config: found != value)(value)
                for name, value in OTHER_THAN.items()})


# what mlx-vlm's unlimited_ocr builds its SAM encoder with whatever config.json says (mlx_vlm/models/deepseekocr/
# config.py SAMViTConfig, sam.py SAMEncoder defaults), in transformers' UnlimitedOcrSamVisionConfig names
_RELEASE_SAM = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "mlp_dim": 3072,
                "window_size": 14, "global_attn_indexes": [2, 5, 8, 11], "output_channels": 256,
                "downsample_channels": [512, 1024], "image_size": 1024, "patch_size": 16, "num_channels": 3,
                "qkv_bias": True, "use_abs_pos": True, "use_rel_pos": True, "layer_norm_eps": 1e-6, "hidden_act": "gelu"}


@matters("not_release_sam")
def _not_release_sam(sam_config, config: dict) -> bool:
    return isinstance(sam_config, dict) and any(
        list(v) != list(sam_config[k]) if isinstance(v, list) else sam_config.get(k, v) != v
        for k, v in _RELEASE_SAM.items() if k in sam_config)


def ignored_notes(config: dict, tensor_keys: Iterable[str] = ()) -> list[str]:
    """One note (and one warning line) per IGNORED_BY_MLX_LM row that SRC triggers, and per
    IGNORED_BY_MLX_VLM row for an output for mlx-vlm, for the resolved `config` (its model_type is
    the runner's) and SRC's tensor names."""
    model_type = config.get("model_type")
    keys = list(tensor_keys)
    notes = []
    rows = [("mlx-lm", row) for row in IGNORED_BY_MLX_LM.get(model_type, ())] + [
        ("mlx-vlm", row) for row in IGNORED_BY_MLX_VLM.get(model_type, ()) if runner_of(config) == MLX_VLM]
    for runner, row in rows:
        if row.tensor:
            found = [k for k in keys if fnmatch.fnmatchcase(k, row.key)]
            if not found or not MATTERS[row.matters](found, config):
                continue
            what = f"SRC has {row.key.lstrip('*.')} ({len(found)} tensors)"
        else:
            value = lookup(config, row.key)
            if value is MISSING or not MATTERS[row.matters](value, config):
                continue
            what = f"{row.key} = {value!r}"
        if row.expected:
            raise CheckpointError(f"config.json: {what}: {row.message}; expected {row.expected}")
        note = f"{runner}'s {model_type} differs from transformers: {what}: {row.message}"
        log.warning("%s", note, extra={"notice": True})  # the CLI prints it after its summary line
        notes.append(note)
    return notes
