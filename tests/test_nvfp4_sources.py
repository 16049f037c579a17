"""NVIDIA ModelOpt NVFP4 sources: repacked into MLX nvfp4 without changing a value, or dequantized."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest

from moequant.convert import Conversion
from moequant.dequant import mlx_global_scale
from moequant.evaluate import compare_logits
from moequant.formats import Quant
from moequant.tiny import ARCHS, write_tiny_checkpoint

from conftest import logits_of

E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], np.float32)


def modelopt_dequantize(packed: np.ndarray, block_scales: np.ndarray, weight_scale_2: np.float32) -> np.ndarray:
    """ModelOpt's own NVFP4 reading: low nibble = even element; value = e2m1 · (e4m3 · scale_2)."""
    codes = np.empty((*packed.shape[:-1], packed.shape[-1] * 2), np.uint8)
    codes[..., 0::2], codes[..., 1::2] = packed & 15, packed >> 4
    values = E2M1[codes].reshape(*codes.shape[:-1], -1, 16)
    return (values * (block_scales * weight_scale_2)[..., None]).reshape(codes.shape)


def test_expert_stacks_are_repacked_bit_for_bit(tmp_path):
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe", source="nvfp4")
    conversion = Conversion(src, Quant.make("nvfp4"))
    list(conversion.run(tmp_path / "dst"))
    stacks = [r.path for r in conversion.plan.rows if r.as_stored]
    assert stacks == [f"model.layers.{l}.mlp.switch_mlp.{p}" for l in (0, 1) for p in ("gate_proj", "up_proj", "down_proj")]
    raw = mx.load(str(src / "model.safetensors"))
    out = mx.load(str(tmp_path / "dst" / "model.safetensors"))
    key = "model.layers.1.mlp.switch_mlp.down_proj"
    for e in range(4):
        source = f"model.layers.1.mlp.experts.{e}.down_proj"
        assert mx.array_equal(out[f"{key}.weight"][e].view(mx.uint8), raw[f"{source}.weight"])
        assert mx.array_equal(out[f"{key}.scales"][e], raw[f"{source}.weight_scale"])
        ours = mx.dequantize(out[f"{key}.weight"][e], out[f"{key}.scales"][e], None, group_size=16, bits=4,
                             mode="nvfp4", global_scale=out[f"{key}.global_scale"][e], dtype=mx.float32)
        theirs = modelopt_dequantize(np.array(raw[f"{source}.weight"]),
                                     np.array(mx.from_fp8(raw[f"{source}.weight_scale"], dtype=mx.float32)),
                                     np.float32(raw[f"{source}.weight_scale_2"].item()))
        assert np.array_equal(np.array(ours).view(np.uint32), theirs.view(np.uint32)), e  # bit for bit


def test_global_scale_maps_back_to_weight_scale_2_exactly_as_modelopt_computes_it():
    amax = np.abs(np.random.default_rng(0).standard_normal(2000).astype(np.float32)) * np.float32(3.0)
    for a in amax:
        ws2 = np.float32(a / np.float32(6.0 * 448.0))  # ModelOpt: amax.float() / (6.0 * 448.0)
        g = np.float32(mlx_global_scale(mx.array(ws2)).item())
        assert np.float32(g / np.float32(2688.0)) == ws2, a


@pytest.mark.parametrize("weight_scale_2", [3.1e-3, 7.7e-5, 0.012345678, 2.5e-7])
def test_global_scale_of_any_other_scale_is_within_an_ulp(weight_scale_2):
    ws2 = np.float32(weight_scale_2)
    g = np.float32(mlx_global_scale(mx.array(ws2)).item())
    assert abs(np.float32(g / np.float32(2688.0)) - ws2) <= np.spacing(ws2)


@pytest.mark.parametrize("target", [("nvfp4", None), ("affine", 4), ("mxfp4", None), ("none", None)])
@pytest.mark.parametrize("arch", ARCHS)
def test_modelopt_nvfp4_converts_to_any_mode_close_to_float(tmp_path, reference_logits, arch, target):
    src = write_tiny_checkpoint(tmp_path / "src", arch, source="nvfp4")
    assert json.loads((src / "hf_quant_config.json").read_text())["quantization"]["quant_algo"] == "NVFP4"
    quant = None if target[0] == "none" else Quant.make(*target)
    list(Conversion(src, quant).run(tmp_path / "dst"))
    closeness = compare_logits(reference_logits(arch), logits_of(tmp_path / "dst"))
    # seen: cosine ≥ 0.909 (deepseek_v3 → affine 4), ≥ 0.96 for the others
    assert closeness.cosine >= 0.88, closeness
    config = json.loads((tmp_path / "dst" / "config.json").read_text())
    assert ("quantization" in config) == (quant is not None)


def test_modelopt_algorithm_other_than_nvfp4_is_refused(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe", source="nvfp4")
    settings = json.loads((src / "hf_quant_config.json").read_text())
    settings["quantization"]["quant_algo"] = "FP8"
    (src / "hf_quant_config.json").write_text(json.dumps(settings))
    result = cli("convert", src, tmp_path / "dst", "--quiet")
    assert result.exit_code == 1 and "ModelOpt quant_algo 'FP8'; expected 'NVFP4'" in result.output
