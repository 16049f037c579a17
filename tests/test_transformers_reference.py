"""Unquantized output against an independent reference: transformers' own PyTorch forward pass.

The other float references in this suite are computed by mlx-lm, the same code that loads
moequant's output; here the source checkpoint is run by transformers instead, so a config key
read wrongly on both sides (rope theta, routing options, expert count, ...) or a wrong weight
layout shows up as a logit difference. Skipped when torch or transformers is not installed.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
# The tiny configs are written as transformers 5 writes them (e.g. Qwen3-MoE's num_local_experts,
# rope_parameters); an older transformers would read them differently.
transformers = pytest.importorskip("transformers", minversion="5.0")

import mlx.core as mx  # noqa: E402

from moequant.convert import Conversion  # noqa: E402
from moequant.evaluate import compare_logits, fixed_tokens, load_float32  # noqa: E402
from moequant.tiny import ARCHS, write_tiny_checkpoint  # noqa: E402

TOKENS = fixed_tokens(256)  # [2, 32]

# Both sides compute in float32 from float32 weights, so only summation order differs. Measured
# max |logit difference| (transformers 5.23.0, torch 2.13.0+cpu, mlx 0.32.4, mlx-lm 0.32.2):
#   qwen3_moe 2.6e-6, qwen2_moe 2.9e-6, mixtral 2.6e-6, deepseek_v3 3.3e-6
# with top-1 agreement 1.0 everywhere. A real semantic difference is orders of magnitude larger
# (deepseek_v3 with transformers' rope_interleave=False: 2.3; routed_scaling_factor 1.0 instead
# of 2.5: 1.5), so 1e-4 (~30x the noise, the bound test_convert uses for --no-quantize) separates
# the two.
MAX_ABS = 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_no_quantize_matches_transformers_forward(tmp_path, arch):
    src = write_tiny_checkpoint(tmp_path / "src", arch, dtype="float32")
    list(Conversion(src).run(tmp_path / "dst"))
    ours = load_float32(tmp_path / "dst")(TOKENS)
    mx.eval(ours)

    model = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    with torch.inference_mode():
        theirs = model(torch.from_numpy(np.array(TOKENS)).to(torch.long)).logits

    assert tuple(theirs.shape) == tuple(ours.shape) == (*TOKENS.shape, 256)
    closeness = compare_logits(mx.array(theirs.float().numpy()), ours)
    assert closeness.max_abs <= MAX_ABS and closeness.top1 == 1.0, closeness
