"""`moequant inspect`: the plan for a source, what is stored for an MLX-quantized checkpoint."""

from __future__ import annotations

import json

import pytest

from moequant.convert import Conversion, inspect_checkpoint
from moequant.formats import Quant
from moequant.plan import Options, Override, find_roles, plan_rules
from moequant.tiny import ARCHS, write_tiny_checkpoint


def test_inspect_prints_every_module_with_its_rule_and_totals(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "qwen2_moe")
    result = cli("inspect", src, "--all")
    assert result.exit_code == 0, result.output
    gate_row = next(line for line in result.output.splitlines() if "model.layers.1.mlp.shared_expert_gate " in line)
    assert "shared_expert_gate" in gate_row and "keep" in gate_row and "router-gate" in gate_row
    assert "bits/weight" in result.output and "parameters" in result.output


@pytest.mark.parametrize("arch", ARCHS)
def test_inspect_json_predicts_the_written_size_and_every_tensor(tmp_path, cli, arch):
    src = write_tiny_checkpoint(tmp_path / "src", arch)
    plan = json.loads(cli("inspect", src, "--json", "--bits", "4").stdout)
    assert cli("convert", src, tmp_path / "dst", "--bits", "4", "--quiet").exit_code == 0
    index = json.loads((tmp_path / "dst" / "model.safetensors.index.json").read_text())
    float32_extra = 2 * 4 if arch == "deepseek_v3" else 0  # e_score_correction_bias stays float32 (E=4)
    assert index["metadata"]["total_size"] == plan["totals"]["bytes_after"] + float32_extra
    modules = {m["path"] for m in plan["modules"]}
    assert {k.rsplit(".", 1)[0] for k in index["weight_map"]} == modules


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("options", [
    Options(Quant.make("affine", 4)), Options(None), Options(Quant.make("nvfp4"), 8),
    Options(Quant.make("affine", 3), recipe="mixed_3_6"), Options(Quant.make("mxfp4"), recipe="moe"),
    Options(Quant.make("affine", 4), overrides=(Override.parse("*=keep"), Override.parse("*.mlp.*=bits=8"))),
])
def test_exactly_one_rule_of_the_highest_precedence_applies(tmp_path, arch, options):
    conversion = Conversion(write_tiny_checkpoint(tmp_path / "src", arch))
    for module in find_roles(conversion.model):
        applying = [r for r in plan_rules(options, 2) if r.applies(module)]
        top = max(r.precedence for r in applying)
        assert len([r for r in applying if r.precedence == top]) == 1, module.path


def test_inspect_mlx_quantized_flags_a_config_that_disagrees_with_tensors(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe")
    assert cli("convert", src, tmp_path / "q", "--gate-bits", "8", "--quiet").exit_code == 0
    ok = cli("inspect", tmp_path / "q", "--check")
    assert ok.exit_code == 0 and "0 disagree with config.json" in ok.output
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    for key in ("quantization", "quantization_config"):  # the runner bug: 8-bit/g64 gate read as 4-bit/g16
        config[key]["model.layers.0.mlp.gate"] = {"group_size": 16, "bits": 4}
    (tmp_path / "q" / "config.json").write_text(json.dumps(config))
    bad = cli("inspect", tmp_path / "q", "--check", "--json")
    assert bad.exit_code == 1
    rows = {r["path"]: r for r in json.loads(bad.stdout)}
    assert rows["model.layers.0.mlp.gate"]["problem"] == ("config.json says affine·4·g16; "
                                                          "its tensors say affine·8·g64")
    assert sum(r["problem"] is not None for r in rows.values()) == 1


def test_inspect_prints_what_one_library_call_returns(tmp_path, cli):
    """`moequant inspect` is convert.inspect_checkpoint and printing: the plan (and its notices),
    or for an MLX-quantized SRC what it stores, unless --as-source."""
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe")
    seen = inspect_checkpoint(src, Quant.make("affine", 4), recipe="moe", target_bpw=4.5)
    assert seen.stored is None and seen.notices == ["--target-bpw: data-free proxy (relative weight reconstruction error)"]
    assert json.loads(cli("inspect", src, "--json", "--recipe", "moe", "--target-bpw", "4.5").stdout) == seen.plan.to_json()
    assert cli("convert", src, tmp_path / "q", "--quiet").exit_code == 0
    stored = inspect_checkpoint(tmp_path / "q")
    assert stored.plan is None and stored.stored and not any(r.problem for r in stored.stored)
    as_source = inspect_checkpoint(tmp_path / "q", Quant.make("affine", 4), as_source=True)
    assert as_source.stored is None and all(r.as_stored for r in as_source.plan.rows if r.quant is not None)
