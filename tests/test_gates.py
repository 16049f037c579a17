"""Router gates never reach the experts' bit width; the config's per-path entries agree with the tensors."""

from __future__ import annotations

import json

import mlx.core as mx
import pytest

from moequant.checkpoint import read_safetensors_header
from moequant.tiny import ARCHS, write_tiny_checkpoint

# Router gates (and Qwen2-MoE's shared-expert gate) by arch, as module paths in layer 1
GATES = {
    "qwen3_moe": ["model.layers.1.mlp.gate"],
    "qwen2_moe": ["model.layers.1.mlp.gate", "model.layers.1.mlp.shared_expert_gate"],
    "mixtral": ["model.layers.1.block_sparse_moe.gate"],
    "deepseek_v3": ["model.layers.1.mlp.gate"],  # mlx-lm's MoEGate: a bare weight, no to_quantized
}
CAN_QUANTIZE = {"qwen3_moe": True, "qwen2_moe": True, "mixtral": True, "deepseek_v3": False}


def _stored(dst):
    tensors = {}
    for file in dst.glob("*.safetensors"):
        tensors.update(read_safetensors_header(file))
    config = json.loads((dst / "config.json").read_text())
    return tensors, config


@pytest.mark.parametrize("mode", ["affine", "mxfp4", "nvfp4"])
@pytest.mark.parametrize("arch", ARCHS)
def test_router_gates_stay_float_by_default(tmp_path, cli, arch, mode):
    src = write_tiny_checkpoint(tmp_path / "src", arch)
    assert cli("convert", src, tmp_path / "dst", "--mode", mode, "--quiet").exit_code == 0
    tensors, config = _stored(tmp_path / "dst")
    for gate in GATES[arch]:
        assert tensors[f"{gate}.weight"].dtype == "BF16"
        assert f"{gate}.scales" not in tensors
        for key in ("quantization", "quantization_config"):
            if CAN_QUANTIZE[arch]:
                assert config[key][gate] is False
            else:  # never an entry for a module without to_quantized (the nemotron_h MoEGate crash)
                assert gate not in config[key]
    assert config["quantization"]["mode"] == mode


@pytest.mark.parametrize("arch", ARCHS)
def test_gate_bits_8_quantizes_gates_at_8_bit_affine_even_under_4_bit_experts(tmp_path, cli, arch):
    src = write_tiny_checkpoint(tmp_path / "src", arch)
    result = cli("convert", src, tmp_path / "dst", "--mode", "nvfp4", "--gate-bits", "8", "--quiet")
    assert result.exit_code == 0, result.output
    tensors, config = _stored(tmp_path / "dst")
    experts = tensors["model.layers.1." + ("block_sparse_moe" if arch == "mixtral" else "mlp")
                      + ".switch_mlp.up_proj.scales"]
    assert experts.dtype == "U8"  # the experts really are nvfp4
    for gate in GATES[arch]:
        if CAN_QUANTIZE[arch]:
            assert tensors[f"{gate}.weight"].dtype == "U32"
            assert tensors[f"{gate}.weight"].shape[-1] * 32 // 8 == tensors[f"{gate}.scales"].shape[-1] * 64
            assert tensors[f"{gate}.biases"].dtype == "BF16"
            for key in ("quantization", "quantization_config"):
                assert config[key][gate] == {"group_size": 64, "bits": 8, "mode": "affine"}
        else:
            assert tensors[f"{gate}.weight"].dtype == "BF16" and gate not in config["quantization"]


def test_gate_bits_below_8_is_refused(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe")
    result = cli("convert", src, tmp_path / "dst", "--gate-bits", "4")
    assert result.exit_code == 1
    assert "--gate-bits 4: expected 'float' or 8" in result.output
    assert not (tmp_path / "dst").exists()


def test_deepseek_correction_bias_is_kept_in_float32(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "deepseek_v3")
    assert cli("convert", src, tmp_path / "dst", "--quiet").exit_code == 0
    weights = mx.load(str(tmp_path / "dst" / "model.safetensors"))
    assert weights["model.layers.1.mlp.gate.e_score_correction_bias"].dtype == mx.float32
