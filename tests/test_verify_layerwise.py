"""verify --against transformers, decoder layer by decoder layer (verify.compare_layers).

SRC is written by transformers' own save_pretrained (tests/producer.py); its decoder layers run in
transformers, one at a time, and DST's in mlx-lm on the same input. Each layer gets the reference's
input, so an error shows in the layer that makes it and nowhere else.
"""

from __future__ import annotations

import json
import shutil

import mlx.core as mx
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers", minversion="5.0")

import producer  # noqa: E402

from moequant.convert import Conversion  # noqa: E402
from moequant.evaluate import fixed_tokens  # noqa: E402
from moequant.formats import Quant  # noqa: E402
from moequant.verify import compare_layers, layer_tolerance, verify  # noqa: E402

TOKENS = fixed_tokens(producer.VOCAB, batch=2, length=32)
# MoE, MLA with a dense first layer, hybrid linear / full attention
ARCHS = ("qwen3_moe", "deepseek_v3", "qwen3_next")
MAX_ABS = 1e-4  # float32 on both sides: summation order only (measured up to 4.3e-5, qwen3_next)
# A 4-bit layer's relative RMS error, measured 0.07 to 0.30 on these fixtures
Q4_RANGE = (1e-3, 0.5)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(model_type, "float" or "q4") -> (DST, SRC), converted once per module."""
    cache: dict = {}

    def get(model_type: str, what: str):
        if (model_type, what) not in cache:
            root = tmp_path_factory.mktemp(model_type)
            src = root / "src"
            producer.write_produced(src, model_type)
            list(Conversion(src, dtype="float32").run(root / "float"))
            list(Conversion(src, Quant.make("affine", 4)).run(root / "q4"))
            cache.update({(model_type, w): (root / w, src) for w in ("float", "q4")})
        return cache[model_type, what]

    return get


@pytest.mark.parametrize("model_type", ARCHS)
def test_no_quantize_matches_every_transformers_layer(converted, model_type):
    dst, src = converted(model_type, "float")
    layers = compare_layers(dst, src, TOKENS)
    assert [e.layer for e in layers] == list(range(producer.LAYERS))
    assert all(e.max_abs <= MAX_ABS for e in layers), layers
    routed = [e.router_agreement for e in layers if e.router_agreement is not None]
    assert routed and all(a == 1.0 for a in routed), layers  # the MoE layers' routers were compared


@pytest.mark.parametrize("model_type", ARCHS)
def test_4bit_layers_differ_within_bounds_and_none_is_flagged(converted, model_type):
    dst, src = converted(model_type, "q4")
    layers = compare_layers(dst, src, TOKENS)
    assert all(Q4_RANGE[0] < e.rel_rms < Q4_RANGE[1] for e in layers), layers
    assert not [e for e in layers if e.rel_rms > layer_tolerance(layers)], layers


def _corrupted(dst, folder, change):
    """A copy of DST with `change` applied to layer 1's expert down projections (weight, scales, biases)."""
    shutil.copytree(dst, folder)
    weights = dict(mx.load(str(folder / "model.safetensors")))
    prefix = "model.layers.1.mlp.switch_mlp.down_proj."
    weights.update({prefix + p: change(p, weights[prefix + p]) for p in ("weight", "scales", "biases")})
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "mlx"})
    return folder


def test_a_corrupted_expert_changes_its_layer_only(converted, tmp_path, cli):
    """Expert 2 of layer 1 given expert 3's down projection (a mis-ordered expert): layer 1 alone
    changes; --max-layer-error between the two fails there, as a one-line error."""
    dst, src = converted("qwen3_moe", "q4")
    bad = _corrupted(dst, tmp_path / "bad", lambda _, w: mx.concatenate([w[:2], w[3:4], w[3:]]))
    good, broken = compare_layers(dst, src, TOKENS), compare_layers(bad, src, TOKENS)
    assert [e for e in broken if e.layer != 1] == [e for e in good if e.layer != 1]
    assert broken[1].rel_rms > 1.5 * good[1].rel_rms, (good, broken)
    limit = str(1.5 * good[1].rel_rms)
    assert cli("verify", dst, "--reference", src, "--against", "transformers", "--layerwise",
               "--max-layer-error", limit).exit_code == 0
    strict = cli("verify", bad, "--reference", src, "--against", "transformers", "--layerwise",
                 "--max-layer-error", limit)
    assert strict.exit_code == 1 and "Traceback" not in strict.output
    assert strict.output.strip().splitlines()[-1] == f"error: decoder layers 1 relative error > {limit}"
    assert "beyond tolerance" in strict.output


def test_a_wrongly_scaled_expert_is_flagged_at_its_layer(converted, tmp_path, cli):
    """Expert 2 of layer 1 with its scales 10 times too large: flagged without a threshold, in
    the JSON and the table."""
    dst, src = converted("qwen3_moe", "q4")
    bad = _corrupted(dst, tmp_path / "bad", lambda part, w: w.at[2].multiply(10.0) if part != "weight" else w)
    result = cli("verify", bad, "--reference", src, "--against", "transformers", "--layerwise", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["layerwise_reason"] == "asked for (--layerwise)" and data["flagged_layers"] == [1]
    assert [e["layer"] for e in data["layers"]] == [0, 1, 2] and data["transformers"] is None
    table = cli("verify", bad, "--reference", src, "--against", "transformers", "--layerwise")
    assert table.exit_code == 0 and "(10x the median layer, at least 0.0001): 1\n" in table.output


def test_layer_by_layer_when_src_would_not_fit_whole(converted, monkeypatch):
    """With less memory free than SRC's float32 weights, --against transformers goes layer by
    layer by itself and says why."""
    dst, src = converted("qwen3_moe", "float")
    monkeypatch.setattr("moequant.verify.free_memory", lambda: 10**6)
    report = verify(dst, src, TOKENS, against_transformers=True)
    assert report.transformers is None and len(report.layers) == producer.LAYERS
    assert report.layerwise_reason.endswith("0.0 GB are free") and "GB as a float32 transformers model" in \
        report.layerwise_reason
    assert report.flagged_layers() == []


def test_layerwise_needs_against_transformers(converted, cli):
    dst, src = converted("qwen3_moe", "float")
    result = cli("verify", dst, "--reference", src, "--layerwise")
    assert result.exit_code != 0 and "expected --against transformers" in result.output


@pytest.mark.parametrize("model_type", ["mistral4", "glm4v_moe"])
def test_models_beyond_auto_causal_lm_run_layer_by_layer(converted, model_type):
    """mistral4 runs as the class config.json names (transformers' AutoModelForCausalLM has no
    entry); glm4v_moe, a vision-language model converted for mlx-vlm, has its language model's
    rotary buffers made with that model's own config (the outer one has no initializer_range)."""
    if model_type in producer.PRODUCED_VLM:
        pytest.importorskip("mlx_vlm")
    dst, src = converted(model_type, "float")
    layers = compare_layers(dst, src, TOKENS)
    assert len(layers) == producer.LAYERS and all(e.max_abs <= MAX_ABS for e in layers), layers


def test_layers_that_hand_on_more_than_hidden_states_are_refused_in_one_line(converted, cli):
    """mlx-lm's hunyuan layers pass their keys and values on to the next layer (cross-layer
    attention): no layer runs alone, and verify says so instead of failing inside mlx-lm."""
    dst, src = converted("hunyuan_v1_moe", "float")
    result = cli("verify", dst, "--reference", src, "--against", "transformers", "--layerwise")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "its layers hand more than hidden states to the next" in result.output.strip().splitlines()[-1]
