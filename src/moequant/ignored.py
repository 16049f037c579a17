"""Where mlx-lm's model computes something other than transformers' for the same checkpoint: a
config value it ignores, a tensor it drops, a routing step it does differently. One table per runner.

moequant feeds mlx-lm's model the checkpoint's weights exactly (a `--no-quantize` output is the
source's function as mlx-lm computes it); where mlx-lm's model itself differs from transformers'
forward, the output differs from transformers too, and moequant says so instead of being silently
wrong: each row below that a source triggers becomes one plan note and one warning line. The
rows name the code on both sides (mlx-lm 0.32.2, transformers 5.25.0); `moequant archs` says the
same in its note for the model_type.

A row is keyed by the model_type mlx-lm runs (target.resolve_config's) and reads the resolved
config (config.json with transformers' defaults filled in, so a key the file leaves out reads as
transformers reads it), or SRC's tensor names. IGNORED_BY_MLX_VLM's rows say the same of mlx-vlm's
models (0.7.10; their vision towers), for an output for mlx-vlm.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from .configmap import MISSING, lookup
from .errors import CheckpointError
from .target import MLX_VLM, runner_of

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Ignored:
    key: str  # a config key (dotted for nested), or with tensor=True a glob on SRC tensor names
    matters: Callable[[Any, dict], bool]  # (value, resolved config) -> whether mlx-lm's output differs
    message: str  # for the user: what transformers does, what mlx-lm does, when it shows
    tensor: bool = False
    # what mlx-lm's model can hold, where it cannot hold the source at all (a lm_head it has no place for):
    # converting is then refused in one line instead of noted
    expected: str = ""


def _window_shorter_than_context(window, config: dict) -> bool:
    """A sliding window that some sequence mlx-lm accepts is longer than."""
    return isinstance(window, int) and 0 < window < (config.get("max_position_embeddings") or float("inf"))


def _has_sliding_layers(layer_types, config: dict) -> bool:
    return isinstance(layer_types, list) and "sliding_attention" in layer_types and \
        _window_shorter_than_context(config.get("sliding_window"), config)


def _untied(tied, config: dict) -> bool:
    return tied is False


def _every_fourth_nope(no_rope_layers, config: dict) -> bool:
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
    # gpt-oss releases (and transformers' GptOssConfig) say truncate false
    "gpt_oss": (Ignored("rope_parameters.truncate", lambda v, c: v is False, (
        "transformers' YaRN keeps the correction range unrounded (modeling_rope_utils.py:473, `if truncate`), "
        "mlx-lm's always floors and ceils it (mlx_lm/models/gpt_oss.py builds it with initialize_rope; "
        "mlx_lm/models/rope_utils.py:151-152), so every rotary frequency in "
        "the blend range differs slightly and so do the logits (6e-3 at most on a tiny gpt-oss)")),),
    "hunyuan": (
        Ignored("tie_word_embeddings", _untied, (
            "an lm_head of its own (transformers' model uses it), but mlx-lm's hunyuan computes logits with embed_tokens (mlx_lm/models/hunyuan.py "
            "Model.__call__: embed_tokens.as_linear) and has no lm_head"), expected="tie_word_embeddings true"),
        # transformers' HunYuanMoEV1 (model_type hunyuan_v1_moe), which mlx-lm runs as hunyuan
        Ignored("moe_topk", lambda k, c: "HunYuanMoEV1ForCausalLM" in (c.get("architectures") or ()) and
                k != c.get("num_experts"), (
            "transformers' HunYuanMoEV1 renormalizes the chosen experts' softmax weights to sum to 1 "
            "(modeling_hunyuan_v1_moe.py:241), mlx-lm's hunyuan weighs them by their softmax over all experts "
            "(mlx_lm/models/hunyuan.py MoeBlock.__call__), so every MoE layer's output differs")),
    ),
    "jamba": (Ignored("num_experts_per_tok", lambda k, c: k < (c.get("num_experts") or 0), (
        "transformers weighs each chosen expert by its softmax over all experts, unnormalized "
        "(modeling_jamba.py:808-809); mlx-lm's jamba takes the softmax over the chosen top-k logits only "
        "(mlx_lm/models/jamba.py:241-244), which renormalizes the weights to sum to 1, so every MoE layer's "
        "output differs")),),
    "lfm2_moe": (Ignored("tie_word_embeddings", _untied, (
        "an lm_head of its own (transformers' model uses it), but mlx-lm's lfm2_moe computes logits with embed_tokens (mlx_lm/models/lfm2_moe.py "
        "Model.__call__: embed_tokens.as_linear) and has no lm_head"),
        expected="tie_word_embeddings true, as LiquidAI/LFM2-8B-A1B (and transformers' default)"),),
    "llama4": (Ignored("text_config.no_rope_layers", _every_fourth_nope, (
        "transformers' Llama4 uses RoPE and chunked attention where no_rope_layers (and layer_types) say, mlx-lm's "
        "llama4 in every layer but each 4th, which is NoPE with global attention (mlx_lm/models/llama4.py:59, 230), "
        "and needs 4 layers or more"),
        expected="no_rope_layers 1, 1, 1, 0 repeated over 4 layers or more, as the Llama-4 releases"),),
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


# mlx-vlm model_type -> what its model (vision tower, projector) computes differently from transformers' for
# the same weights; a row is read as an IGNORED_BY_MLX_LM row, for an output for mlx-vlm. Measured on the
# producer's tiny checkpoints (tests/test_producer_vlm.py), one image, float32: max abs logit difference.
IGNORED_BY_MLX_VLM: dict[str, tuple[Ignored, ...]] = {
    "llama4": (Ignored("vision_config.hidden_act", lambda v, c: True, (
        "on prompts with an image: transformers' Llama-4 vision encoder MLPs and pixel-shuffle MLP apply exact GELU "
        "(modeling_llama4.py Llama4VisionMLP, Llama4VisionMLP2: nn.GELU(), vision_config.hidden_act unread); "
        "mlx-vlm's llama4 applies mlx's fast approximation, x * sigmoid(1.702 x) (mlx_vlm/models/llama4/vision.py "
        "Llama4VisionMLP: nn.GELU(approx='fast')), so image features and the logits of prompts with an image "
        "differ (0.08 on a tiny Llama-4); text-only prompts are unaffected")),),
    "qwen3_vl_moe": (Ignored("vision_config.hidden_act", lambda v, c: True, (
        "on prompts with an image: transformers' Qwen3-VL vision blocks apply vision_config.hidden_act (the releases' "
        "gelu_pytorch_tanh, GELU's tanh approximation) and its patch mergers exact GELU (modeling_qwen3_vl_moe.py "
        "Qwen3VLMoeVisionMLP, Qwen3VLMoeVisionPatchMerger); mlx-vlm's qwen3_vl_moe applies exact GELU in the blocks "
        "and the tanh approximation in the mergers (mlx_vlm/models/qwen3_vl_moe/vision.py MLP, PatchMerger), so "
        "image features and the logits of prompts with an image differ (5e-4 on a tiny Qwen3-VL-MoE); text-only "
        "prompts are unaffected")),),
}


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
            if not found or not row.matters(found, config):
                continue
            what = f"SRC has {row.key.lstrip('*.')} ({len(found)} tensors)"
        else:
            value = lookup(config, row.key)
            if value is MISSING or not row.matters(value, config):
                continue
            what = f"{row.key} = {value!r}"
        if row.expected:
            raise CheckpointError(f"config.json: {what}: {row.message}; expected {row.expected}")
        note = f"{runner}'s {model_type} differs from transformers: {what}: {row.message}"
        log.warning("%s", note, extra={"notice": True})  # the CLI prints it after its summary line
        notes.append(note)
    return notes
