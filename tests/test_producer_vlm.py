"""Vision-language MoE model_types transformers writes, converted and held to transformers' own forward.

The checkpoints are written whole by the producer (tests/producer.py PRODUCED_VLM: transformers'
...ForConditionalGeneration with a tiny text_config and vision_config, weights re-drawn,
save_pretrained); transformers' forward on text tokens (input_ids only, no pixels) is the reference.
Each must:
- convert with --no-quantize for mlx-vlm (vision tower kept) to logits within 1e-4 of
  transformers' (float32), top-1 equal, or the plan must say that mlx-vlm's model differs;
- convert at 4 bits for mlx-vlm to logits no further from transformers' than a simulated round trip
  of the same weights (producer.simulated_logits) is, and run quantized in mlx-vlm;
- convert text only for mlx-lm (`--for mlx-lm`) to logits within 1e-4 of transformers' too, where
  mlx-lm has the language model (else be refused in one line).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers", minversion="5.0")

import mlx.core as mx  # noqa: E402

from moequant.convert import Conversion  # noqa: E402
from moequant.errors import CheckpointError  # noqa: E402
from moequant.evaluate import compare_logits, load_float32  # noqa: E402
from moequant.families import VISION_LANGUAGE  # noqa: E402
from moequant.formats import Quant  # noqa: E402
from moequant.plan import Role  # noqa: E402

from producer import PRODUCED_VLM, TOKENS, produced, simulated_logits  # noqa: E402,F401  (produced: a fixture)

MAX_ABS = 1e-4  # as test_producer: float32 both sides, only summation order differs

# text-only outputs mlx-lm 0.32.2 has no model for: refused in one line
MLX_LM_HAS_NONE = {"glm4v_moe"}  # no mlx_lm.models.glm4v_moe (mlx-vlm runs it)


def _ids() -> mx.array:
    return mx.array(TOKENS.astype(np.int32))


def _differs(conversion: Conversion) -> list[str]:
    return [n for n in conversion.plan.notes if "differs from transformers" in n]


def test_every_vision_language_row_transformers_has_is_produced():
    # kimi_vl's release is custom code (trust_remote_code): transformers has no kimi_vl config class
    assert set(PRODUCED_VLM) == {m for m in VISION_LANGUAGE if m in transformers.CONFIG_MAPPING}


@pytest.mark.parametrize("runner", ["mlx-vlm", "mlx-lm"])
@pytest.mark.parametrize("model_type", list(PRODUCED_VLM))
def test_no_quantize_matches_transformers_or_says_why_not(tmp_path, produced, model_type, runner):
    src, reference = produced(model_type)
    if runner == "mlx-lm" and model_type in MLX_LM_HAS_NONE:
        with pytest.raises(CheckpointError, match=rf"model_type '{model_type}' is not supported by mlx-lm") as e:
            Conversion(src, None, dtype="float32", runner=runner)
        assert "\n" not in str(e.value)
        return
    conversion = Conversion(src, None, dtype="float32", runner=runner)
    list(conversion.run(tmp_path / "dst", pool="threads"))  # the process pool is tested elsewhere
    out = json.loads((tmp_path / "dst" / "config.json").read_text())
    vision_kept = all(out.get(k) for k in VISION_LANGUAGE[model_type].vision_keys)
    assert vision_kept == (runner == "mlx-vlm")
    closeness = compare_logits(mx.array(reference), load_float32(tmp_path / "dst")(_ids()))
    if _differs(conversion):  # said, and true
        assert closeness.max_abs > 100 * MAX_ABS, closeness
    else:
        assert closeness.max_abs <= MAX_ABS and closeness.top1 == 1.0, closeness


@pytest.mark.parametrize("model_type", list(PRODUCED_VLM))
def test_quantized_for_mlx_vlm_is_within_a_simulated_round_trip(tmp_path, produced, model_type):
    src, reference = produced(model_type)
    conversion = Conversion(src, Quant.make("affine", 4, 64), dtype="float32", runner="mlx-vlm")
    if _differs(conversion):
        pytest.skip("mlx-vlm's model differs from transformers' (the float test checks the note)")
    list(conversion.run(tmp_path / "dst", pool="threads"))  # the process pool is tested elsewhere
    ours = compare_logits(mx.array(reference), load_float32(tmp_path / "dst")(_ids()))
    # what the plan keeps float in the language model (the vision tower's paths would match its layers by
    # number and name, and no vision weight reaches logits on text tokens)
    kept = [r for r in conversion.plan.rows if r.quant is None and r.role != Role.VISION]
    keep = frozenset(r.path for r in kept) | frozenset(
        r.role.value for r in kept if r.role.value in ("embedding", "lm_head"))
    simulated = compare_logits(mx.array(reference), mx.array(simulated_logits(model_type, src, 4, keep=keep)))
    assert ours.kl <= 1.1 * simulated.kl + 1e-4, (ours, simulated)

    # the quantized model runs in mlx-vlm itself
    from mlx_vlm.utils import load_model

    out = load_model(tmp_path / "dst")(_ids(), pixel_values=None)
    logits = getattr(out, "logits", out)
    mx.eval(logits)
    assert logits.shape[:2] == TOKENS.shape and np.isfinite(np.array(logits)).all()
