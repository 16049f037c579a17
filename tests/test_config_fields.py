"""Field by field: every value transformers reads from a config reaches mlx-lm's ModelArgs.

For each model_type transformers writes (tests/producer.py) and `moequant archs` supports, the
config.json save_pretrained wrote is resolved as moequant resolves it, mlx-lm's ModelArgs is built
from that (mlx-vlm's ModelConfig for a text model only mlx-vlm runs: registry.TEXT_BY_MLX_VLM), and each ModelArgs field with a counterpart in transformers' own config object — the
same name (transformers' attribute_map aliases included) or a registry row's Rename — must hold
transformers' value. A field that silently kept ModelArgs' own default while transformers reads
another value fails here, whatever the logits of a tiny model show.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

transformers = pytest.importorskip("transformers", minversion="5.0")
pytest.importorskip("torch")

from transformers.integrations.heterogeneity.configuration_utils import (  # noqa: E402
    AmbiguousGlobalPerLayerAttributeError,
)

from moequant.configmap import COMMON, CONVERTERS, MISSING, NONE, RENAMES, lookup  # noqa: E402
from moequant.registry import TEXT_ARGS, TEXT_BY_MLX_VLM  # noqa: E402
from moequant.target import MLX_VLM, build_model, model_classes, resolve_config, runner_of, text_args_class  # noqa: E402

from producer import BOOKKEEPING, PRODUCED, tiny_config  # noqa: E402
from test_producer import SUPPORTED  # noqa: E402

_MISSING = MISSING

# ModelArgs fields whose transformers namesake means something else (checked by the logit tests)
DIFFERENT_MEANING = {
    "model_type",  # mlx-lm's model_type may be an alias target (MODEL_TYPES)
    "rope_scaling",  # transformers 5 keeps it in rope_parameters; checked through rope_theta and the logits
    "rope_parameters",
    "layer_types", "mlp_layer_types",  # mlx-lm may spell the values differently; RENAMES rows convert them
    "position_embedding_type",  # granitemoehybrid: transformers' None (no RoPE) is mlx-lm's "nope" (a RENAMES row)
}


def _counterpart(field: str, ours: dict, theirs, full: dict):
    for rename in RENAMES.get(ours.get("model_type"), ()) + COMMON:
        # a rename fills what transformers' config lacks, or (overrides) replaces what it reads instead
        if rename.key == field and (rename.overrides or field not in full):
            value = full if rename.source == "" else lookup(full, rename.source)
            if value is MISSING or value is None and rename.convert:
                continue
            value = CONVERTERS[rename.convert](value, full) if rename.convert else value
            return None if value is NONE else value
    if field in DIFFERENT_MEANING:
        return _MISSING
    try:
        return getattr(theirs, field)
    except (AttributeError, AmbiguousGlobalPerLayerAttributeError):  # none, or one per layer (gemma4's per_layer_config: checked through a RENAMES row)
        return _MISSING


def _same(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, transformers.PretrainedConfig):
        b = b.to_dict()  # a sub-config (DBRX's ffn_config): ModelArgs holds it as the dict config.json has
    if isinstance(a, str) != isinstance(b, str) and isinstance(a, (str, list)) and isinstance(b, (str, list)):
        return list(a) == list(b)  # a pattern string and its list of characters (nemotron_h)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        keys = a.keys() - BOOKKEEPING
        return keys == b.keys() - BOOKKEEPING and all(_same(a[k], b[k]) for k in keys)
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-6)
    return a == b


@pytest.mark.parametrize("model_type", SUPPORTED)
def test_every_model_args_field_holds_transformers_value(tmp_path, model_type):
    config = tiny_config(model_type)
    config.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    theirs = type(config).from_pretrained(tmp_path)
    resolved, _ = resolve_config(written, MLX_VLM if model_type in TEXT_BY_MLX_VLM else "mlx-lm")
    if runner_of(resolved) == MLX_VLM:  # the ModelConfig mlx-vlm's loader builds
        args = build_model(resolved).config
    else:
        args = model_classes(resolved)[1].from_dict(resolved)
    if resolved["model_type"] in TEXT_ARGS:  # the language model's keys reach another class (text_config or flat)
        args = text_args_class(resolved).from_dict(resolved.get("text_config") or resolved)
    full = theirs.to_dict()
    checked, differ = [], []
    for f in dataclasses.fields(args):
        expected = _counterpart(f.name, resolved, theirs, full)
        if expected is _MISSING:
            continue
        checked.append(f.name)
        if not _same(getattr(args, f.name), expected):
            differ.append(f"{f.name}: ModelArgs {getattr(args, f.name)!r}, transformers {expected!r}")
    assert not differ, differ
    assert checked


def _sub_configs(ours, theirs, where: str = ""):
    """(path, mlx-vlm's sub-config, transformers' sub-config) for each sub-config mlx-vlm's ModelConfig builds
    from one of its own config classes, at any depth."""
    for f in dataclasses.fields(ours):
        sub, their_sub = getattr(ours, f.name), getattr(theirs, f.name, None)
        if dataclasses.is_dataclass(sub) and isinstance(their_sub, transformers.PretrainedConfig):
            yield f"{where}{f.name}", sub, their_sub
            yield from _sub_configs(sub, their_sub, f"{where}{f.name}.")


@pytest.mark.parametrize("model_type", ["qwen3_omni_moe"])  # sub-configs two levels down (thinker_config.text_config)
def test_every_nested_mlx_vlm_field_holds_transformers_value(tmp_path, model_type):
    config = tiny_config(model_type)
    config.save_pretrained(tmp_path)
    theirs = type(config).from_pretrained(tmp_path)
    resolved, _ = resolve_config(json.loads((tmp_path / "config.json").read_text()), MLX_VLM)
    checked, differ = [], []
    for where, sub, their_sub in _sub_configs(build_model(resolved).config, theirs):
        full = their_sub.to_dict()
        for f in dataclasses.fields(sub):
            expected = _counterpart(f.name, {}, their_sub, full)
            if f.name == "rope_theta" and expected is _MISSING:  # transformers 5 reads it in rope_parameters
                expected = lookup(full, "rope_parameters.rope_theta")
            if dataclasses.is_dataclass(getattr(sub, f.name)) or expected is _MISSING or f.name in BOOKKEEPING:
                continue
            checked.append(f"{where}.{f.name}")
            if not _same(getattr(sub, f.name), expected):
                differ.append(f"{where}.{f.name}: mlx-vlm {getattr(sub, f.name)!r}, transformers {expected!r}")
    assert not differ, differ
    assert {"thinker_config.text_config.rope_theta", "talker_config.text_config.num_experts",
            "talker_config.code_predictor_config.rope_theta"} <= set(checked)
