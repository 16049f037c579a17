"""`verify`: logit closeness and per-MoE-layer router (expert set) agreement of DST against SRC."""

from __future__ import annotations

import json
import shutil
from functools import lru_cache
from pathlib import Path

import mlx.core as mx
import pytest

from moequant.convert import Conversion
from moequant.errors import LayoutError
from moequant.cli import _failures
from moequant.evaluate import Closeness, load_float32
from moequant.formats import Quant
from moequant.tiny import ARCHS, write_tiny_checkpoint
from moequant.surgery import expert_containers
from moequant.verify import Report, recording_routes, tokens_for_prompt, verify

MOE_BLOCKS = {
    "qwen3_moe": ["model.layers.0.mlp", "model.layers.1.mlp"],
    "qwen2_moe": ["model.layers.0.mlp", "model.layers.1.mlp"],
    "mixtral": ["model.layers.0.block_sparse_moe", "model.layers.1.block_sparse_moe"],
    "deepseek_v3": ["model.layers.1.mlp"],  # first_k_dense_replace = 1: layer 0 is a dense MLP
}
QUANTS = {"float": None, "8bit": Quant.make("affine", 8), "4bit": Quant.make("affine", 4)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """tiny(arch, what): the published-style SRC ("src") or its conversion ("float", "8bit", "4bit")."""
    root = tmp_path_factory.mktemp("verify")

    @lru_cache(maxsize=None)
    def get(arch: str, what: str) -> Path:
        src = root / arch / "src"
        if not src.exists():
            write_tiny_checkpoint(src, arch)
        if what == "src":
            return src
        list(Conversion(src, QUANTS[what]).run(root / arch / what))
        return root / arch / what

    return get


@pytest.mark.parametrize("arch", ARCHS)
def test_float_conversion_agrees_exactly(tiny, arch):
    report = verify(tiny(arch, "float"), tiny(arch, "src"))
    assert report.closeness.top1 == 1.0 and report.closeness.kl < 1e-6, report.closeness
    assert list(report.router_agreement) == MOE_BLOCKS[arch]
    assert all(v == 1.0 for v in report.router_agreement.values()), report.router_agreement
    assert report.top_k == {block: 2 for block in MOE_BLOCKS[arch]}
    assert report.tokens == 4 * 64


# Figures seen with the default 256 tokens (mean router agreement, KL nats/token):
#   arch          8-bit            4-bit
#   qwen3_moe     0.986 / 0.0012   0.914 / 0.023
#   qwen2_moe     0.996 / 0.0004   0.900 / 0.022
#   mixtral       0.992 / 0.0005   0.926 / 0.022
#   deepseek_v3   0.980 / 0.0037   0.906 / 0.047
# Every layer's 8-bit agreement is above its 4-bit one, by ≥ 0.04.
@pytest.mark.parametrize("arch", ARCHS)
def test_router_agreement_per_moe_layer_and_8bit_routes_closer_than_4bit(tiny, arch):
    four = verify(tiny(arch, "4bit"), tiny(arch, "src"))
    eight = verify(tiny(arch, "8bit"), tiny(arch, "src"))
    for report in (four, eight):
        assert list(report.router_agreement) == MOE_BLOCKS[arch]
        assert all(0.0 <= v <= 1.0 for v in report.router_agreement.values()), report.router_agreement
    assert four.mean_router_agreement < 1.0  # 4-bit random weights do flip some near-tied choices
    assert eight.mean_router_agreement >= four.mean_router_agreement + 0.02, (eight.router_agreement,
                                                                             four.router_agreement)
    assert eight.closeness.kl < four.closeness.kl and eight.closeness.top1 >= four.closeness.top1


def _swap_first_two(path: Path, keys) -> None:
    """Swap index 0 and 1 along the first axis of the given tensors in DST's safetensors."""
    file = path / "model.safetensors"
    weights = mx.load(str(file))
    for key in keys(weights):
        a = weights[key]
        weights[key] = a[mx.array([1, 0] + list(range(2, a.shape[0])))]
    mx.save_safetensors(str(file), weights, metadata={"format": "mlx"})


@pytest.mark.parametrize("arch", ARCHS)
def test_swapped_experts_raise_kl_and_swapped_gate_rows_break_routing(tiny, tmp_path, arch):
    first = MOE_BLOCKS[arch][0]
    experts, gate = tmp_path / "experts", tmp_path / "gate"
    shutil.copytree(tiny(arch, "float"), experts)
    shutil.copytree(tiny(arch, "float"), gate)
    # experts 0 and 1 of the first MoE layer trade weights: its routing is unchanged, its output is not
    _swap_first_two(experts, lambda w: [k for k in w if k.startswith(f"{first}.switch_mlp.")])
    report = verify(experts, tiny(arch, "src"))
    assert report.router_agreement[first] == 1.0
    assert report.closeness.kl > 0.02 and report.closeness.top1 < 0.8, report.closeness  # seen ≥ 0.045, ≤ 0.66
    for later in MOE_BLOCKS[arch][1:]:  # what the changed hidden states do to later routers
        assert report.router_agreement[later] < 0.9, report.router_agreement  # seen ≤ 0.80
    # the router's rows for experts 0 and 1 trade places: most tokens now pick a different set
    _swap_first_two(gate, lambda w: [f"{first}.gate.weight"])
    report = verify(gate, tiny(arch, "src"))
    assert report.router_agreement[first] < 0.5, report.router_agreement  # seen 0.30 … 0.36
    assert report.closeness.kl > 0.02, report.closeness


def test_reference_loaded_directly_or_through_conversion_gives_the_same_report(tiny, tmp_path):
    """Published config (transformers-5 keys) is converted first; legacy keys load in mlx-lm as
    they are: both must describe the same reference model."""
    legacy = write_tiny_checkpoint(tmp_path / "legacy", "qwen3_moe", style="legacy")
    converted = verify(tiny("qwen3_moe", "4bit"), tiny("qwen3_moe", "src"))
    direct = verify(tiny("qwen3_moe", "4bit"), legacy)
    assert converted.reference_converted and not direct.reference_converted
    assert converted.router_agreement == direct.router_agreement
    assert converted.closeness.kl == pytest.approx(direct.closeness.kl, rel=1e-5, abs=1e-7)


def test_prompt_tokens_come_from_the_checkpoint_tokenizer(tiny):
    dst = tiny("mixtral", "4bit")
    tokens = tokens_for_prompt(dst, "def f(x): return x")
    assert tokens.tolist() == [list(b"def f(x): return x")]  # the tiny byte-level tokenizer
    report = verify(dst, tiny("mixtral", "src"), tokens)
    assert report.tokens == len(b"def f(x): return x")
    assert list(report.router_agreement) == MOE_BLOCKS["mixtral"]
    one_d = verify(dst, tiny("mixtral", "src"), tokens[0])  # a 1-D batch is one sequence
    assert one_d.router_agreement == report.router_agreement


def test_report_to_dict_is_json(tiny):
    report = verify(tiny("deepseek_v3", "4bit"), tiny("deepseek_v3", "src"))
    data = json.loads(json.dumps(report.to_dict()))
    assert data["router_agreement"] == report.router_agreement
    assert data["closeness"]["top1"] == report.closeness.top1
    only = report.router_agreement["model.layers.1.mlp"]
    assert data["mean_router_agreement"] == data["min_router_agreement"] == only


def test_recording_leaves_the_model_as_it_was(tiny):
    model = load_float32(tiny("qwen2_moe", "float"))
    containers = expert_containers(model)
    assert containers == {b: f"{b}.switch_mlp" for b in MOE_BLOCKS["qwen2_moe"]}
    before = [id(m) for _, m in model.named_modules()]
    with recording_routes(model) as seen:
        model(mx.array([[1, 2, 3]]))
    assert [id(m) for _, m in model.named_modules()] == before
    assert {b: [a.shape for a in calls] for b, calls in seen.items()} == {b: [(1, 3, 2)] for b in containers}


def test_models_of_different_architectures_are_refused(tiny):
    with pytest.raises(LayoutError, match="MoE blocks"):
        verify(tiny("qwen3_moe", "4bit"), tiny("mixtral", "src"))


def test_verify_cli_reports_and_exits_1_when_a_threshold_is_missed(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe")
    assert cli("convert", src, tmp_path / "q4", "--bits", "4", "--quiet").exit_code == 0
    ok = cli("verify", tmp_path / "q4", "--reference", src, "--json", "--min-top1", "0.1", "--quiet")
    assert ok.exit_code == 0, ok.output
    report = json.loads(ok.stdout)
    assert set(report["router_agreement"]) == {"model.layers.0.mlp", "model.layers.1.mlp"}
    assert report["failed"] == []
    missed = cli("verify", tmp_path / "q4", "--reference", src, "--min-router", "0.999", "--quiet")
    assert missed.exit_code == 1
    assert missed.output.strip().splitlines()[-1].startswith("error: router agreement ")
    prompt = cli("verify", tmp_path / "q4", "--reference", src, "--prompt", "def main():\n    pass\n", "--json", "--quiet")
    assert prompt.exit_code == 0 and json.loads(prompt.stdout)["tokens"] == len("def main():\n    pass\n")


def test_against_transformers_compares_with_the_producers_forward(tmp_path, cli):
    """verify --against transformers: the conversion of a transformers-written checkpoint is
    compared with transformers' own forward; an --no-quantize output agrees to float noise."""
    pytest.importorskip("torch")
    import producer

    src = tmp_path / "src"
    producer.write_produced(src, "qwen3_moe")
    assert cli("convert", src, tmp_path / "float", "--no-quantize", "--dtype", "float32").exit_code == 0
    assert cli("convert", src, tmp_path / "q4").exit_code == 0
    exact = verify(tmp_path / "float", src, against_transformers=True)
    assert exact.transformers.max_abs < 1e-4 and exact.transformers.top1 == 1.0
    result = cli("verify", tmp_path / "q4", "--reference", src, "--against", "transformers", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert 0 < data["transformers"]["kl"] < 0.5 and data["transformers"]["kl"] == pytest.approx(
        data["closeness"]["kl"], rel=1e-3)


def test_against_transformers_refuses_what_transformers_cannot_load(tiny, cli):
    dst = tiny("qwen3_moe", "4bit")
    result = cli("verify", dst, "--reference", dst, "--against", "transformers")
    assert result.exit_code == 1 and "cannot load" in result.output and "Traceback" not in result.output


def test_min_router_fails_on_a_measured_zero():
    """A router agreement of 0.0 is a figure, not a missing one (it once read as 1.0 and passed)."""
    report = Report(Closeness(0.0, 0.0, 1.0, 0.0, 1.0), {"model.layers.0.mlp": 0.0, "model.layers.1.mlp": 1.0}, 8)
    assert _failures(report, None, None, 0.5) == ["router agreement 0 < 0.5"]
    assert _failures(Report(report.closeness, {}, 8), None, None, 0.5) == []  # a model without MoE layers
