"""Where mlx-lm's model computes something other than transformers' (ignored.IGNORED_BY_MLX_LM):
a source that triggers a row gets a plan note and a warning, one that does not gets none, and the
row's claim holds: with the trigger taken away, the output matches transformers' forward."""

from __future__ import annotations

import logging

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers", minversion="5.0")

import mlx.core as mx  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

import producer  # noqa: E402
from moequant.convert import Conversion  # noqa: E402
from moequant.evaluate import compare_logits, load_float32  # noqa: E402
from moequant.ignored import IGNORED_BY_MLX_LM, IGNORED_BY_MLX_VLM, MATTERS  # noqa: E402


def _notes(src) -> list[str]:
    return [n for n in Conversion(src).plan.notes if n.startswith("mlx-lm's ")]


@pytest.mark.parametrize("model_type, extra, says", [
    ("mixtral", {"sliding_window": 16}, "sliding_window = 16"),
    ("qwen3_moe", {"use_sliding_window": True, "sliding_window": 16}, "use_sliding_window = True"),
    ("ernie4_5_moe", {}, "moe_statics.e_score_correction_bias (2 tensors)"),
    ("jamba", producer.PRODUCED["jamba"].extra, "num_experts_per_tok = 2"),
])
def test_a_value_mlx_lm_ignores_is_a_plan_note_and_a_warning(tmp_path, caplog, model_type, extra, says):
    config = producer.tiny_config(model_type)
    for k, v in extra.items():
        setattr(config, k, v)
    model = getattr(transformers, producer.PRODUCED[model_type].model_class).from_config(config)
    model.save_pretrained(tmp_path / "src")
    with caplog.at_level(logging.WARNING, logger="moequant.ignored"):
        notes = _notes(tmp_path / "src")
    assert len(notes) == 1 and says in notes[0] and "differs from transformers" in notes[0], notes
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == notes


@pytest.mark.parametrize("model_type", ["mixtral", "qwen3_moe", "qwen2_moe"])
def test_no_note_when_the_source_does_not_trigger_it(tmp_path, model_type):
    producer.write_produced(tmp_path / "src", model_type)  # mixtral's row drops sliding_window
    assert _notes(tmp_path / "src") == []


def test_every_row_names_a_predicate():
    tables = (IGNORED_BY_MLX_LM, IGNORED_BY_MLX_VLM)
    named = {row.matters for table in tables for rows in table.values() for row in rows}
    assert named == set(MATTERS)


def test_every_row_names_code_on_both_sides():
    for model_type, rows in IGNORED_BY_MLX_LM.items():
        for row in rows:
            assert "transformers" in row.message and f"mlx_lm/models/{model_type}.py" in row.message, row


def test_ernie_matches_transformers_once_the_dropped_bias_is_zero(tmp_path):
    """The note's claim, measured: the only difference is the correction bias mlx-lm drops."""
    config = producer.tiny_config("ernie4_5_moe")
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    producer.redraw(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("e_score_correction_bias"):
                p.zero_()
        theirs = model(torch.from_numpy(producer.TOKENS), use_cache=False).logits.float().numpy()
    model.save_pretrained(tmp_path / "src")
    list(Conversion(tmp_path / "src").run(tmp_path / "dst"))
    ours = load_float32(tmp_path / "dst")(mx.array(producer.TOKENS.astype(np.int32)))
    c = compare_logits(mx.array(theirs), ours)
    assert c.max_abs <= 1e-4 and c.top1 == 1.0, c
