"""make-tiny's hand-written releases held to the producer: transformers loads each one and saves it
again; moequant must convert both folders to the same tensors, and resolve both configs to the
same mlx-lm ModelArgs.

A tiny release whose tensor names transformers does not recognise (missing, unexpected or
mismatched keys when loading) fails here: the layout moequant's own fixtures use is then not one
transformers knows. Releases transformers cannot load at all are listed in NOT_LOADED with the
reason, and are the hand-written fixtures of what no producer writes here.
"""

from __future__ import annotations

import json
import logging

import mlx.core as mx
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers", minversion="5.0")

from moequant.convert import Conversion  # noqa: E402
from moequant.target import model_classes, resolve_config  # noqa: E402
from moequant.tiny import ALL_ARCHS, write_tiny_checkpoint  # noqa: E402

from producer import BOOKKEEPING  # noqa: E402

NOT_LOADED = {
    # custom-code releases (auto_map): transformers has no such model_type
    "Klear": "custom code", "hunyuan": "custom code (transformers' is hunyuan_v1_moe)",
    "bailing_moe": "custom code", "bailing_moe_linear": "custom code", "longcat_flash_ngram": "custom code",
    "deepseek": "custom code", "kimi_k2": "custom code", "joyai_llm_flash": "custom code",
    # releases transformers' AutoModelForCausalLM does not build
    "step3p5": "transformers maps step3p5 to Step3p7TextConfig, which has no causal-LM class",
    "mistral4": "the release is Mistral3-wrapped; tests/producer.py writes transformers' Mistral4ForCausalLM",
    "qwen3_vl_moe": "a VLM release: AutoModelForCausalLM does not build it (tests/test_vlm.py)",
    "minimax_m3_vl": "a VLM release: AutoModelForCausalLM does not build it",
    # VLM releases whose AutoModelForCausalLM class is the text model alone: it saves another checkpoint
    # (a text model_type, no text_config), which tests/producer.py writes itself
    "llama4": "AutoModelForCausalLM builds Llama4ForCausalLM and saves model_type llama4_text (producer's llama4_text)",
    "qwen3_5_moe": "AutoModelForCausalLM builds Qwen3_5MoeForCausalLM and saves model_type qwen3_5_moe_text "
                   "(producer's qwen3_5_moe_text)",
    "gpt_oss": "the release's MXFP4 experts need accelerate to load; the float layout is tests/producer.py's",
    "bailing_hybrid": "the tiny release's pad_token_id lies outside its 256-token vocabulary",
}
LOADED = [a for a in ALL_ARCHS if a not in NOT_LOADED]


def _values(resolved: dict) -> dict:
    """The resolved config with its sub-config dicts (DBRX's attn_config) less transformers' bookkeeping."""
    return {k: {n: x for n, x in v.items() if n not in BOOKKEEPING} if isinstance(v, dict) else v
            for k, v in resolved.items()}


def _tensors(dst) -> dict:
    out = {}
    for f in sorted(dst.glob("*.safetensors")):
        out.update(mx.load(str(f)))
    return out


@pytest.mark.parametrize("arch", LOADED)
def test_tiny_release_converts_as_transformers_resaved_it(tmp_path, arch):
    src = write_tiny_checkpoint(tmp_path / "tiny", arch, dtype="float32")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    model, info = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32,
                                                                    output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    model.save_pretrained(tmp_path / "resaved")

    ours = resolve_config(json.loads((src / "config.json").read_text()), "mlx-lm")[0]
    theirs = resolve_config(json.loads((tmp_path / "resaved" / "config.json").read_text()), "mlx-lm")[0]
    args_class = model_classes(ours)[1]
    assert args_class.from_dict(_values(ours)) == args_class.from_dict(_values(theirs))

    list(Conversion(src, None, dtype="float32", runner="mlx-lm").run(tmp_path / "a"))
    list(Conversion(tmp_path / "resaved", None, dtype="float32", runner="mlx-lm").run(tmp_path / "b"))
    a, b = _tensors(tmp_path / "a"), _tensors(tmp_path / "b")
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].shape == b[key].shape and mx.array_equal(a[key], b[key]).item(), key
