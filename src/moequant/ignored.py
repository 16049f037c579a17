"""Where mlx-lm's model computes something other than transformers' for the same checkpoint: a
config value it ignores, a tensor it drops, a routing step it does differently. One table.

moequant feeds mlx-lm's model the checkpoint's weights exactly (a `--no-quantize` output is the
source's function as mlx-lm computes it); where mlx-lm's model itself differs from transformers'
forward, the output differs from transformers too, and moequant says so instead of being silently
wrong: each row below that a source triggers becomes one plan note and one warning line. The
rows name the code on both sides (mlx-lm 0.32.2, transformers 5.25.0); `moequant archs` says the
same in its note for the model_type.

A row is keyed by the model_type mlx-lm runs (target.resolve_config's) and reads the resolved
config (config.json with transformers' defaults filled in, so a key the file leaves out reads as
transformers reads it), or SRC's tensor names.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from .configmap import MISSING, lookup

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Ignored:
    key: str  # a config key (dotted for nested), or with tensor=True a glob on SRC tensor names
    matters: Callable[[Any, dict], bool]  # (value, resolved config) -> whether mlx-lm's output differs
    message: str  # for the user: what transformers does, what mlx-lm does, when it shows
    tensor: bool = False


def _window_shorter_than_context(window, config: dict) -> bool:
    """A sliding window that some sequence mlx-lm accepts is longer than."""
    return isinstance(window, int) and 0 < window < (config.get("max_position_embeddings") or float("inf"))


def _has_sliding_layers(layer_types, config: dict) -> bool:
    return isinstance(layer_types, list) and "sliding_attention" in layer_types and \
        _window_shorter_than_context(config.get("sliding_window"), config)


def _sliding(where: str) -> str:
    return (f"transformers attends within the last sliding_window tokens ({where}); mlx-lm's model has no "
            "sliding window and attends to every earlier token, so outputs differ on prompts longer than the window")


# mlx-lm model_type -> what its model ignores or computes differently; alphabetical by model_type.
IGNORED_BY_MLX_LM: dict[str, tuple[Ignored, ...]] = {
    "dots1": (Ignored("layer_types", _has_sliding_layers, _sliding(
        "layer_types sliding_attention, modeling_dots1.py:211,512; mlx_lm/models/dots1.py")),),
    "ernie4_5_moe": (Ignored("*.moe_statics.e_score_correction_bias", lambda v, c: True, (
        "transformers adds moe_statics.e_score_correction_bias to the routing scores before choosing the top-k "
        "experts (modeling_ernie4_5_moe.py:351); mlx-lm's ernie4_5_moe drops that tensor in sanitize "
        "(mlx_lm/models/ernie4_5_moe.py:269) and chooses by the scores alone, so expert choice (and output) "
        "differs wherever the bias is not zero"), tensor=True),),
    "jamba": (Ignored("num_experts_per_tok", lambda k, c: k < (c.get("num_experts") or 0), (
        "transformers weighs each chosen expert by its softmax over all experts, unnormalized "
        "(modeling_jamba.py:808-809); mlx-lm's jamba takes the softmax over the chosen top-k logits only "
        "(mlx_lm/models/jamba.py:241-244), which renormalizes the weights to sum to 1, so every MoE layer's "
        "output differs")),),
    "mixtral": (Ignored("sliding_window", _window_shorter_than_context, _sliding(
        "sliding_window, modeling_mixtral.py:444; mlx_lm/models/mixtral.py")),),
    "phimoe": (Ignored("sliding_window", _window_shorter_than_context, _sliding(
        "sliding_window, modeling_phimoe.py:636; mlx_lm/models/phimoe.py")),),
    "qwen2_moe": (Ignored("layer_types", _has_sliding_layers, _sliding(
        "use_sliding_window makes layers below max_window_layers sliding_attention, modeling_qwen2_moe.py:226,488; "
        "mlx_lm/models/qwen2_moe.py")),),
    "qwen3_moe": (Ignored("use_sliding_window", lambda v, c: v is True and _window_shorter_than_context(
        c.get("sliding_window"), c), _sliding("use_sliding_window, modeling_qwen3_moe.py:473; "
                                              "mlx_lm/models/qwen3_moe.py")),),
}


def ignored_notes(config: dict, tensor_keys: Iterable[str] = ()) -> list[str]:
    """One note (and one warning line) per IGNORED_BY_MLX_LM row that SRC triggers, for the
    resolved `config` (its model_type is mlx-lm's) and SRC's tensor names."""
    model_type = config.get("model_type")
    keys = list(tensor_keys)
    notes = []
    for row in IGNORED_BY_MLX_LM.get(model_type, ()):
        if row.tensor:
            found = [k for k in keys if fnmatch.fnmatchcase(k, row.key)]
            if not found or not row.matters(found, config):
                continue
            what = f"SRC has {row.key.lstrip('*.')} ({len(found)} tensors)"
        else:
            value = lookup(config, row.key)
            if value is MISSING or not row.matters(value, config):
                continue
            what = f"{row.key} = {value!r}"
        note = f"mlx-lm's {model_type} differs from transformers: {what}: {row.message}"
        log.warning("%s", note)
        notes.append(note)
    return notes
