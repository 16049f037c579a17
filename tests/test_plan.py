"""The plan as data: roles, recipes, overrides, plan files, and the output checked against it."""

from __future__ import annotations

import json
import re

import mlx.core as mx
import pytest
from mlx_lm.convert import mixed_quant_predicate_builder

from moequant.convert import Conversion
from moequant.errors import PlanError
from moequant.formats import Quant
from moequant.plan import GATE_ROLES, MIXED_RECIPES, Options, Override, Role, build_plan, find_roles
from moequant.target import build_model, resolve_config
from moequant.tiny import ARCHS, write_tiny_checkpoint


def _model(tmp_path, arch, **config_changes):
    src = write_tiny_checkpoint(tmp_path / "src", arch)
    config = {**json.loads((src / "config.json").read_text()), **config_changes}
    return build_model(resolve_config(config)[0])


@pytest.mark.parametrize("arch", ARCHS)
def test_every_module_of_a_supported_arch_has_a_known_role(tmp_path, arch):
    roles = {m.path: m.role for m in find_roles(_model(tmp_path, arch))}
    assert [p for p, r in roles.items() if r == Role.OTHER] == []
    assert Role.ROUTER_GATE in roles.values() and Role.ROUTED_EXPERTS in roles.values()


@pytest.mark.parametrize("recipe", MIXED_RECIPES)
@pytest.mark.parametrize("arch", ARCHS)
def test_mixed_recipes_decide_like_mlx_lm_except_that_gates_stay_float(tmp_path, arch, recipe):
    model = _model(tmp_path, arch, num_hidden_layers=16)  # enough layers for the first/last eighths
    plan = build_plan(find_roles(model), arch, Options(Quant.make("affine", 4), recipe=recipe))
    theirs = mixed_quant_predicate_builder(recipe, model, 64)
    compared = 0
    for row in plan.rows:
        if not row.quantizable:
            continue
        if row.role in GATE_ROLES:
            assert row.quant is None  # mlx-lm would give the gate the recipe's low bits
            continue
        assert row.quant.to_dict() == theirs(row.path, None), row.path
        compared += 1
    assert compared > 16 * 5


def test_moe_recipe_stays_within_5_percent_of_uniform_for_a_typical_moe(tmp_path):
    # Qwen3-30B-A3B's dimensions (experts hold ~97 % of the weights); the model is never materialized
    model = _model(tmp_path, "qwen3_moe", hidden_size=2048, num_hidden_layers=48, num_local_experts=128,
                   moe_intermediate_size=768, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
                   vocab_size=151936)
    modules = find_roles(model)
    uniform = build_plan(modules, "qwen3_moe", Options(Quant.make("affine", 4)))
    moe = build_plan(modules, "qwen3_moe", Options(Quant.make("affine", 4), recipe="moe"))
    experts = sum(r.params for r in uniform.rows if r.role == Role.ROUTED_EXPERTS) / uniform.params
    assert experts > 0.9
    assert 1.0 < moe.bytes_after / uniform.bytes_after <= 1.05
    attention = [r for r in moe.rows if r.role == Role.ATTENTION and r.quant]
    assert {str(r.quant) for r in attention} == {"affine·6·g64"}


def test_override_applies_after_the_recipe_and_is_the_reason(tmp_path):
    modules = find_roles(_model(tmp_path, "qwen2_moe"))
    plan = build_plan(modules, "qwen2_moe", Options(Quant.make("affine", 4), recipe="moe", overrides=(
        Override.parse("*.shared_expert.*=bits=8,group=32"), Override.parse("lm_head=keep"))))
    row = plan.by_path["model.layers.1.mlp.shared_expert.up_proj"]
    assert str(row.quant) == "affine·8·g32" and row.rule == "override *.shared_expert.*"
    assert "--override '*.shared_expert.*=bits=8,group=32'" in row.reason
    assert plan.by_path["lm_head"].quant is None and plan.by_path["lm_head"].rule == "override lm_head"
    assert str(plan.by_path["model.layers.1.self_attn.q_proj"].quant) == "affine·6·g64"  # recipe moe


@pytest.mark.parametrize("spec, match", [
    ("*.shared_experts.*=bits=8", r"matches no module of SRC \(a typo\?\)"),
    ("*.mlp.gate=bits=4", r"router gate model.layers.0.mlp.gate would get affine·4·g64; gates take float or ≥ 8 bits"),
    ("*.switch_mlp.down_proj=bits=4,group=128", r"in=64 is not a multiple of 128"),
    ("*.q_proj=bits=4,group=16", r"affine with bits=4, group_size=16; expected"),
    ("*.q_proj", r"expected PATTERN=SPEC"),
    ("*.q_proj=bitz=4", r"'bitz=4'; expected keep, or bits=N"),
])
def test_bad_overrides_are_refused_with_the_reason(tmp_path, spec, match):
    modules = find_roles(_model(tmp_path, "qwen2_moe"))
    with pytest.raises(PlanError, match=match):
        build_plan(modules, "qwen2_moe", Options(Quant.make("affine", 4), overrides=(Override.parse(spec),)))


def test_override_typo_on_the_command_line_fails_before_any_work(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe")
    result = cli("convert", src, tmp_path / "dst", "--override", "*.self_atn.*=bits=8", "--quiet")
    assert result.exit_code == 1 and "matches no module of SRC (a typo?)" in result.output
    assert not (tmp_path / "dst").exists()


@pytest.mark.parametrize("arch", ARCHS)
def test_plan_file_round_trip_gives_a_byte_identical_output(tmp_path, cli, arch):
    src = write_tiny_checkpoint(tmp_path / "src", arch)
    options = ["--recipe", "moe", "--mode", "nvfp4", "--gate-bits", "8", "--override", "lm_head=bits=8"]
    inspected = cli("inspect", src, "--json", *options)
    assert inspected.exit_code == 0
    (tmp_path / "plan.json").write_text(inspected.stdout)
    assert cli("convert", src, tmp_path / "direct", *options, "--quiet").exit_code == 0
    assert cli("convert", src, tmp_path / "planned", "--plan", tmp_path / "plan.json", "--quiet").exit_code == 0
    for name in ("model.safetensors", "config.json", "model.safetensors.index.json"):
        assert (tmp_path / "direct" / name).read_bytes() == (tmp_path / "planned" / name).read_bytes(), name


def test_plan_file_round_trip_keeps_every_option(tmp_path, cli):
    """--target-bpw and --override are in the saved options too: a plan from `inspect --json` or
    DST's moequant_plan.json, reloaded with --plan, gives equal Options and the same output bytes."""
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe")
    options = ["--target-bpw", "3.5", "--gate-bits", "8", "--override", "*.self_attn.o_proj=bits=8"]
    (tmp_path / "plan.json").write_text(cli("inspect", src, "--json", *options).stdout)
    assert cli("convert", src, tmp_path / "direct", *options, "--quiet").exit_code == 0
    direct = Conversion(src, Quant.make("affine"), target_bpw=3.5, gate_bits=8,
                        overrides=(Override.parse("*.self_attn.o_proj=bits=8"),))
    for name, plan in (("inspected", tmp_path / "plan.json"), ("written", tmp_path / "direct" / "moequant_plan.json")):
        assert cli("convert", src, tmp_path / name, "--plan", plan, "--quiet").exit_code == 0
        for file in ("model.safetensors", "config.json"):
            assert (tmp_path / "direct" / file).read_bytes() == (tmp_path / name / file).read_bytes(), (name, file)
        assert Conversion(src, plan=json.loads(plan.read_text())).options == direct.options
        written = json.loads((tmp_path / name / "moequant_plan.json").read_text())["options"]
        assert written["target_bpw"] == 3.5 and written["overrides"] == ["*.self_attn.o_proj=bits=8"]


@pytest.mark.parametrize("options, flag, path", [
    (Options(Quant.make("mxfp4"), recipe="mixed_3_6"), "--recipe mixed_3_6: mlx-lm's mixed recipes are affine only",
     'options.recipe: "mixed_3_6"; mlx-lm\'s mixed recipes are affine only'),
    (Options(Quant.make("affine"), rounding="gptq"), "--rounding gptq: needs calibration data; expected --calib FILE",
     'options.rounding: "gptq"; needs calibration data; expected a calib file'),
    (Options(None, target_bpw=4.0), "--target-bpw 4.0: a size budget, but nothing is quantized",
     "options.target_bpw: 4.0; a size budget, but nothing is quantized"),
    (Options(Quant.make("affine"), target_bpw=0.5), "--target-bpw 0.5: expected a budget between 1 and 16",
     "options.target_bpw: 0.5; expected a budget between 1 and 16"),
    (Options(Quant.make("affine"), dtype="float8"), "--dtype float8: expected one of bfloat16, float16, float32",
     'options.dtype: "float8"; expected one of bfloat16, float16, float32'),
    (Options(Quant.make("affine"), target_bpw=4.0, calib="no/such.txt"), "--calib no/such.txt: not found",
     'options.calib: "no/such.txt"; not found'),
    (Options(Quant.make("affine"), calib_length=0), "--calib-length 0: expected 1 or more",
     "options.calib_length: 0; expected 1 or more"),
])
def test_options_are_checked_in_one_place_and_named_as_given(options, flag, path):
    """The same check for the command line (Conversion's keywords) and for a plan file's options."""
    with pytest.raises(PlanError, match=re.escape(flag)):
        options.validate()
    with pytest.raises(PlanError, match=re.escape(f"plan.json: {path}")):
        Options.from_dict(options.to_dict(), "plan.json: options")


def test_edited_plan_file_is_followed(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "mixtral")
    plan = json.loads(cli("inspect", src, "--json").stdout)
    row = next(r for r in plan["modules"] if r["path"] == "model.layers.1.self_attn.v_proj")
    row["quant"] = {"mode": "affine", "bits": 8, "group_size": 32}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    assert cli("convert", src, tmp_path / "dst", "--plan", tmp_path / "plan.json", "--quiet").exit_code == 0
    config = json.loads((tmp_path / "dst" / "config.json").read_text())
    assert config["quantization"]["model.layers.1.self_attn.v_proj"] == {"group_size": 32, "bits": 8, "mode": "affine"}


K_PROJ = "model.layers.0.self_attn.k_proj"


def _row(plan, path=K_PROJ):
    return next(r for r in plan["modules"] if r["path"] == path)


@pytest.mark.parametrize("edit, match", [
    (lambda p: p["modules"].remove(_row(p)), f"plan.json: has no row for {K_PROJ}"),
    (lambda p: _row(p).update(path=K_PROJ + "x"), f"plan.json: has no row for {K_PROJ}"),
    (lambda p: p["modules"].append({**_row(p), "path": "model.layers.7.mlp.gate"}), "model.layers.7.mlp.gate is not a module of SRC"),
    (lambda p: _row(p).update(shape=[64, 256]), f"({K_PROJ}).shape: [64, 256]; SRC has [64, 128]"),
    (lambda p: p.update(model_type="qwen2_moe"), "model_type 'qwen2_moe'; SRC is 'mixtral'"),
    (lambda p: _row(p).update(quant={"bits": 4, "group_size": 48}), "affine with bits=4, group_size=48"),
    (lambda p: _row(p, "model.layers.0.block_sparse_moe.gate").update(quant={"bits": 4, "group_size": 64}),
     "router gate model.layers.0.block_sparse_moe.gate would get affine·4·g64"),
    (lambda p: _row(p, "model.norm").update(quant={"bits": 8, "group_size": 64}), "no to_quantized; expected null"),
])
def test_plan_file_that_does_not_fit_src_is_refused_at_the_first_mismatch(tmp_path, cli, edit, match):
    src = write_tiny_checkpoint(tmp_path / "src", "mixtral")
    plan = json.loads(cli("inspect", src, "--json").stdout)
    edit(plan)
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    result = cli("convert", src, tmp_path / "dst", "--plan", tmp_path / "plan.json", "--quiet")
    assert result.exit_code == 1 and match in result.output, result.output
    assert not (tmp_path / "dst").exists()


def test_output_that_does_not_match_the_plan_fails_the_convert(tmp_path, cli, monkeypatch):
    """What would have caught 'NVFP4 export succeeded but wrote bf16': a module planned quantized
    that reaches DST as float fails the check, and no DST is left."""
    import moequant.quantize as quantize

    real_run = quantize.Quantizer.run
    victim = "model.layers.1.mlp.switch_mlp.up_proj"

    def run_that_drops_one_quantization(self, weights):
        if f"{victim}.weight" in weights:
            float_weight = weights[f"{victim}.weight"]
            out = real_run(self, weights)
            for suffix in ("scales", "biases", "global_scale"):
                out.pop(f"{victim}.{suffix}", None)
            out[f"{victim}.weight"] = float_weight
            return out
        return real_run(self, weights)

    monkeypatch.setattr(quantize.Quantizer, "run", run_that_drops_one_quantization)
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe")
    result = cli("convert", src, tmp_path / "dst", "--mode", "nvfp4", "--quiet", "--pool", "threads")  # patched here
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {victim}: stored as BF16 [4, 64, 128], no scales; expected uint32 "
                                    "[4, 64, 16] with scales [4, 64, 8] for nvfp4·4·g16·gs (plan)")
    assert not (tmp_path / "dst").exists() and not list(tmp_path.glob(".dst.moequant-*"))


def test_inspect_collapses_identical_layers_unless_all(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe")
    collapsed, expanded = cli("inspect", src).stdout, cli("inspect", src, "--all").stdout
    assert "model.layers.{0-1}.mlp.gate " in collapsed and "model.layers.1.mlp.gate " not in collapsed
    assert "model.layers.0.mlp.gate " in expanded and "model.layers.1.mlp.gate " in expanded


def test_modules_the_mlx_lm_model_never_quantizes_stay_float(tmp_path, cli):
    """A model's own quant_predicate returning False (Ling 3.0: embeddings, lm_head, MLA parts) is
    a rule above overrides: mlx-lm's convert never quantizes them, and some forwards read their
    weight directly (Kimi-K3's res_proj)."""
    from moequant.target import build_model, resolve_config

    src = write_tiny_checkpoint(tmp_path / "src", "bailing_moe_v3")
    conversion = Conversion(src, Quant.make("affine", 4), overrides=(Override.parse("lm_head=bits=8"),))
    rows = conversion.plan.by_path
    model = build_model(resolve_config(conversion.ckpt.config)[0])
    predicate = model.quant_predicate
    kept = [r for r in conversion.plan.rows if r.rule == "model-keeps"]
    assert {"model.word_embeddings", "lm_head"} <= {r.path for r in kept}
    assert all(r.quant is None and predicate(r.path, None) is False for r in kept)
    assert all(rows[p].quant is not None for p in rows if rows[p].quantizable and predicate(p, None) is not False
               and rows[p].rule == "default")
    assert cli("convert", src, tmp_path / "dst", "--quiet").exit_code == 0
    stored = mx.load(str(tmp_path / "dst" / "model.safetensors"))
    assert "lm_head.scales" not in stored and "model.word_embeddings.scales" not in stored
