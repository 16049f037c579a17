"""Every release format of the same model converts to the same function: variants (tests/variants.py)
of transformers-written checkpoints (tests/producer.py), each converted with `--no-quantize` in
float32 and run by mlx-lm, against transformers' own forward.

Lossless variants (a transformers-4 config, the other expert layout) must match transformers'
forward of the original weights. Lossy ones (bf16, FP8, NVFP4, MLX 4-bit, compressed-tensors int4) store other weights;
they must match transformers' forward of exactly the weights they store (decoded by variants.py,
independently of moequant's readers) — the quantization error itself is not moequant's to hide.
Both sides compute in float32 from the same weights, so only summation order differs: measured
max |logit difference| 2e-6 .. 6e-6 over these model_types and variants (transformers 5.25.0,
mlx 0.32, mlx-lm 0.32.2), so 1e-4 (test_transformers_reference's bound) applies to every variant.
A variant read wrongly is far off: e.g. FP8 scales ignored, NVFP4 read as affine, or the 4-bit
variant compared with the original weights give 0.4 .. 2.9.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers", minversion="5.0")

import mlx.core as mx  # noqa: E402

import producer  # noqa: E402
import variants  # noqa: E402
from moequant.convert import Conversion  # noqa: E402
from moequant.errors import CheckpointError  # noqa: E402
from moequant.evaluate import compare_logits, load_float32  # noqa: E402

MAX_ABS = 1e-4
MODEL_TYPES = ["qwen3_moe", "mixtral", "deepseek_v3", "qwen2_moe"]
TOKENS = mx.array(producer.TOKENS.astype(np.int32))


def _transformers_logits(folder) -> np.ndarray:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.inference_mode():
        return model(torch.from_numpy(producer.TOKENS), use_cache=False).logits.float().numpy()


def _ours(src, dst) -> mx.array:
    conversion = Conversion(src, dtype="float32")
    assert conversion.options.quant is None  # --no-quantize
    list(conversion.run(dst))
    logits = load_float32(dst)(TOKENS)
    mx.eval(logits)
    return logits


def _assert_close(theirs, ours):
    closeness = compare_logits(mx.array(theirs), ours)
    assert closeness.max_abs <= MAX_ABS and closeness.top1 == 1.0, closeness


@pytest.fixture(scope="module")
def produced(tmp_path_factory):
    """model_type -> (folder written by transformers, transformers' logits), written once."""
    root, cache = tmp_path_factory.mktemp("produced"), {}

    def get(model_type):
        if model_type not in cache:
            cache[model_type] = (root / model_type, producer.write_produced(root / model_type, model_type))
        return cache[model_type]

    return get


LOSSLESS = {"legacy_config": variants.to_legacy_config, "fused": variants.to_fused}


@pytest.mark.parametrize("variant", LOSSLESS)
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_lossless_variant_matches_transformers_forward_of_the_original(tmp_path, produced, model_type, variant):
    src, reference = produced(model_type)
    LOSSLESS[variant](src, tmp_path / "variant")
    _assert_close(reference, _ours(tmp_path / "variant", tmp_path / "dst"))


def test_legacy_config_has_the_older_names(tmp_path, produced):
    src, _ = produced("qwen3_moe")
    variants.to_legacy_config(src, tmp_path / "variant")
    config = json.loads((tmp_path / "variant" / "config.json").read_text())
    assert "rope_parameters" not in config and config["rope_theta"] == 10000.0
    assert config["num_experts"] == 4 and "num_local_experts" not in config


def test_fused_variant_of_a_natively_fused_family_round_trips_per_expert(tmp_path):
    """GraniteMoE: transformers 5 writes it fused (input_linear [E, 2I, H]); its per-expert form
    converts to the same function."""
    reference = producer.write_produced(tmp_path / "src", "granitemoe")
    tensors, origin = variants.to_per_expert(tmp_path / "src", tmp_path / "variant")
    assert origin and all(".block_sparse_moe.input_linear.weight" in o or ".output_linear.weight" in o
                          for o in origin.values())
    _assert_close(reference, _ours(tmp_path / "variant", tmp_path / "dst"))


LOSSY = {"bf16": variants.to_bf16, "fp8_128": variants.to_fp8,
         "fp8_48x80": lambda src, dst: variants.to_fp8(src, dst, (48, 80)),  # partial edge blocks both ways
         "nvfp4": variants.to_modelopt_nvfp4, "compressed_tensors": variants.to_compressed_tensors}


@pytest.mark.parametrize("variant", LOSSY)
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_lossy_variant_matches_transformers_forward_of_the_weights_it_stores(tmp_path, produced, model_type, variant):
    src, _ = produced(model_type)
    stored = LOSSY[variant](src, tmp_path / "variant")
    theirs = _transformers_logits(variants.float_copy(src, tmp_path / "reference", stored))
    _assert_close(theirs, _ours(tmp_path / "variant", tmp_path / "dst"))


def test_a_compressed_tensors_format_other_than_pack_quantized_is_refused_in_one_line(tmp_path, produced):
    src, _ = produced("deepseek_v3")
    variants.to_compressed_tensors(src, tmp_path / "variant")
    config = json.loads((tmp_path / "variant" / "config.json").read_text())
    config["quantization_config"]["format"] = "marlin-24"
    (tmp_path / "variant" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"^quantization_config: compressed-tensors format 'marlin-24'; "
                                              r"expected 'pack-quantized'$"):
        Conversion(tmp_path / "variant", dtype="float32")


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_mlx_lm_quantized_variant_with_8bit_gates_matches_the_weights_it_stores(tmp_path, produced, model_type):
    src, _ = produced(model_type)
    variants.to_mlx_quantized(src, tmp_path / "variant")
    quantization = json.loads((tmp_path / "variant" / "config.json").read_text())["quantization"]
    gates = {p: q for p, q in quantization.items() if p.endswith(variants.GATE_SUFFIXES)}
    if model_type != "deepseek_v3":  # deepseek's MoEGate has no to_quantized: mlx-lm keeps it float
        assert gates and all(q == {"group_size": 64, "bits": 8} for q in gates.values()), quantization
    ours = _ours(tmp_path / "variant", tmp_path / "dst")
    stored = variants.mlx_dequantized(tmp_path / "variant", src)
    assert (stored is None) == (model_type == "deepseek_v3")
    if stored is None:  # mlx-lm's sanitize renamed more than the experts (deepseek_v3's kv_b_proj)
        _assert_close(load_float32(tmp_path / "variant")(TOKENS), ours)
    else:
        _assert_close(_transformers_logits(variants.float_copy(src, tmp_path / "reference", stored)), ours)
