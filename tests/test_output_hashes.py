"""Output bytes pinned across refactors: each case below is converted through the CLI and the
SHA-256 of every output tensor (name, dtype, shape, bytes) and of config.json is compared with
tests/data/output_hashes.json, recorded before the re-layer of issue 14. A change that alters any
output byte fails here; one that means to (a new rounding, a new default) re-records with
`MOEQUANT_RECORD_HASHES=1 pytest -p no:xdist tests/test_output_hashes.py` (one process: the
recording is one file) and says why in its commit."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from moequant.tiny import write_tiny_checkpoint

from conftest import CALIB_TEXT

RECORD = Path(__file__).parent / "data" / "output_hashes.json"

# name: (arch, write_tiny_checkpoint keywords, convert options)
CASES = {
    "qwen3_moe-4bit": ("qwen3_moe", {}, ["--bits", "4"]),
    "deepseek_v3-fp8-mxfp4-gate8": ("deepseek_v3", {"source": "fp8"}, ["--mode", "mxfp4", "--gate-bits", "8"]),
    "mixtral-fused-mixed_3_6-mse": ("mixtral", {"layout": "fused"}, ["--recipe", "mixed_3_6", "--rounding", "mse"]),
    "gpt_oss-nvfp4": ("gpt_oss", {}, ["--mode", "nvfp4"]),
    "qwen3_moe-nvfp4-source": ("qwen3_moe", {"source": "nvfp4"}, []),
    "qwen2_moe-float16": ("qwen2_moe", {}, ["--no-quantize", "--dtype", "float16"]),
    "glm4_moe-8bit-override": ("glm4_moe", {}, ["--bits", "8", "--override", "*.shared_experts.*=keep"]),
    "nemotron_h-mxfp8": ("nemotron_h", {}, ["--mode", "mxfp8"]),
    "qwen3_moe-bpw-proxy": ("qwen3_moe", {}, ["--target-bpw", "3.5"]),
    "qwen3_moe-bpw-calib-gptq": ("qwen3_moe", {}, ["--target-bpw", "4", "--rounding", "gptq", "--calib", "CALIB",
                                                   "--calib-sequences", "2", "--calib-length", "256"]),
    "qwen3_vl_moe-vision-4bit": ("qwen3_vl_moe", {"vision": True}, ["--bits", "4", "--for", "mlx-vlm"]),
}


def _tensor_hash(name: str, value: mx.array) -> str:
    h = hashlib.sha256(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
    h.update(np.array(value.view(mx.uint8) if value.dtype != mx.bool_ else value.astype(mx.uint8)).tobytes())
    return h.hexdigest()


def output_hashes(dst: Path) -> dict[str, str]:
    """SHA-256 per output tensor and of config.json (sorted keys): the bytes a user loads."""
    hashes = {}
    for shard in sorted(dst.glob("*.safetensors")):
        for name, value in mx.load(str(shard)).items():
            hashes[name] = _tensor_hash(name, value)
    config = json.loads((dst / "config.json").read_text())
    hashes["config.json"] = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    return hashes


@pytest.mark.parametrize("case", sorted(CASES))
def test_output_bytes_unchanged(case, tmp_path, cli):
    arch, keywords, options = CASES[case]
    src = write_tiny_checkpoint(tmp_path / "src", arch, **keywords)
    calib = tmp_path / "calib.txt"
    calib.write_text(CALIB_TEXT)
    options = [str(calib) if o == "CALIB" else o for o in options]
    result = cli("convert", src, tmp_path / "dst", *options, "--pool", "threads", "--workers", "2", "-q")
    assert result.exit_code == 0, result.output
    hashes = output_hashes(tmp_path / "dst")
    if os.environ.get("MOEQUANT_RECORD_HASHES") == "1":
        recorded = json.loads(RECORD.read_text()) if RECORD.exists() else {}
        recorded[case] = hashes
        RECORD.parent.mkdir(exist_ok=True)
        RECORD.write_text(json.dumps(dict(sorted(recorded.items())), indent=1, sort_keys=True) + "\n")
        pytest.skip("recorded")
    expected = json.loads(RECORD.read_text())[case]
    changed = sorted(k for k in expected.keys() | hashes.keys() if expected.get(k) != hashes.get(k))
    assert not changed, f"{len(changed)} of {len(expected)} outputs differ from the recording: {changed[:8]}"
