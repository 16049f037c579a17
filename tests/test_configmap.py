"""configmap: transformers 5's config keys reach mlx-lm's ModelArgs with the same meaning."""

from __future__ import annotations

import pytest

from moequant.configmap import CONVERTERS, apply_renames
from moequant.errors import CheckpointError
from moequant.registry import RENAMES


def test_every_rename_names_a_converter():
    named = {r.convert for renames in RENAMES.values() for r in renames if r.convert}
    assert named and named <= set(CONVERTERS)


def test_plain_rope_reaches_deepseek_v2_as_yarn_factor_one():
    config = {"model_type": "deepseek_v2", "rope_parameters": {"rope_theta": 1e4, "rope_type": "default"}}
    apply_renames(config, {"rope_scaling", "moe_layer_freq"}, "deepseek_v2")
    assert config["rope_scaling"]["factor"] == 1.0 and config["moe_layer_freq"] == 1


@pytest.mark.parametrize("types, first, freq", [
    (["dense", "sparse", "sparse"], 1, 1),
    (["sparse", "dense", "sparse", "dense"], 0, 2),
    (["dense", "dense", "dense"], 3, 1),
])
def test_mlp_layer_types_become_first_k_dense_replace_and_moe_layer_freq(types, first, freq):
    assert CONVERTERS["first_k_dense_replace"](types, {}) == first
    assert CONVERTERS["moe_layer_freq"](types, {}) == freq


def test_mlp_layer_types_mlx_lm_cannot_say_is_one_line():
    with pytest.raises(CheckpointError, match=r"mlp_layer_types .* expected a pattern"):
        CONVERTERS["moe_layer_freq"](["dense", "sparse", "dense", "sparse", "sparse"], {})
    with pytest.raises(CheckpointError, match=r"mlp_layer_types is 7; expected a list"):
        CONVERTERS["sparse_flags"](7, {})


def test_a_stated_key_transformers_does_not_read_is_replaced_with_a_note():
    config = {"model_type": "glm_moe_dsa", "first_k_dense_replace": 3, "mlp_layer_types": ["dense", "sparse", "sparse"]}
    notes = apply_renames(config, {"first_k_dense_replace", "moe_layer_freq"}, "glm_moe_dsa")
    assert config["first_k_dense_replace"] == 1 and config["moe_layer_freq"] == 1
    assert any("instead of first_k_dense_replace=3" in n for n in notes)


def test_fixed_none_fills_the_key_with_none():
    config = {"model_type": "mimo_v2_flash"}
    apply_renames(config, {"n_shared_experts"}, "mimo_v2_flash")
    assert "n_shared_experts" in config and config["n_shared_experts"] is None


def test_layer_types_mlx_lm_bailing_moe_v3_cannot_say_is_one_line():
    assert CONVERTERS["layer_group_size"](["linear_attention", "linear_attention", "full_attention"], {}) == 3
    with pytest.raises(CheckpointError, match=r"layer_types .* expected a pattern mlx-lm's layer_group_size"):
        CONVERTERS["layer_group_size"](["linear_attention", "full_attention", "linear_attention"], {})


def test_different_partial_rotary_factors_per_layer_type_is_one_line():
    rope = {"full_attention": {"partial_rotary_factor": 0.5}, "sliding_attention": {"partial_rotary_factor": 0.25}}
    with pytest.raises(CheckpointError, match=r"expected one value for every layer type"):
        CONVERTERS["same_partial_rotary_factor"](rope, {})


def test_deepseek_v4_layer_schedule_reaches_mlx_vlm_or_is_one_line():
    config = {"layer_types": ["sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"],
              "compress_rates": {"compressed_sparse_attention": 4, "heavily_compressed_attention": 128}}
    assert CONVERTERS["compress_ratios"](config, config) == [0, 4, 128]
    assert CONVERTERS["hash_layers"](["hash_moe", "hash_moe", "moe"], {}) == 2
    with pytest.raises(CheckpointError, match=r"compress_rates\['heavily_compressed_attention'\] is 64; expected 128"):
        CONVERTERS["compress_ratios"]({**config, "compress_rates": {**config["compress_rates"],
                                                                     "heavily_compressed_attention": 64}}, config)
    with pytest.raises(CheckpointError, match=r"has hash_moe after a moe layer; expected hash_moe layers first"):
        CONVERTERS["hash_layers"](["hash_moe", "moe", "hash_moe"], {})


# transformers-written tiny checkpoints (tests/producer.py) whose conversion these renames make exact
PRODUCED_HERE = ("deepseek_v2", "glm_moe_dsa", "longcat_flash", "mimo_v2_flash", "solar_open", "exaone_moe",
                 "minimax_m2", "mistral4")


@pytest.mark.parametrize("model_type", PRODUCED_HERE)
def test_transformers_written_checkpoint_converts_to_transformers_logits(tmp_path, model_type):
    pytest.importorskip("torch")
    pytest.importorskip("transformers", minversion="5.0")
    import mlx.core as mx
    import numpy as np

    import producer
    from moequant.convert import Conversion
    from moequant.evaluate import compare_logits, load_float32

    reference = producer.write_produced(tmp_path / "src", model_type)
    list(Conversion(tmp_path / "src").run(tmp_path / "dst"))
    ours = load_float32(tmp_path / "dst")(mx.array(producer.TOKENS.astype(np.int32)))
    closeness = compare_logits(mx.array(reference), ours)
    assert closeness.max_abs <= 1e-4 and closeness.top1 == 1.0, closeness


def test_minimax_text_01_says_why_it_does_not_convert(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers", minversion="5.0")
    import producer
    from moequant.convert import Conversion

    producer.write_produced(tmp_path / "src", "minimax")
    with pytest.raises(CheckpointError, match=r"model_type 'minimax' .*lightning .*attention"):
        list(Conversion(tmp_path / "src").run(tmp_path / "dst"))
