"""`moequant verify DST --reference SRC`: how far a converted checkpoint is from its source.

Both models are loaded with the real mlx-lm, dequantized and cast to float32 (see evaluate.py: on
a Linux CPU that is the only way the MoE matmul runs, and it computes the same function), and the
same tokens go through both, one model at a time so only one is in memory. Reported: the logit
closeness (`evaluate.compare_logits`: cosine, KL, top-1 agreement, …) and, per MoE block, the
fraction of tokens whose selected expert *set* is the same in both models.

Router capture. Every mlx-lm MoE block hands the experts it selected to an expert container
(`SwitchGLU` / `SwitchMLP`: the module holding the `SwitchLinear` stacks) as `container(x,
indices)`, whatever its router looks like (a plain linear + argpartition in qwen*_moe and
mixtral, a `MoEGate` module with group-limited sigmoid scoring in deepseek_v3, …). So the
containers are found structurally — parents of `SwitchLinear` modules, as `plan.find_roles` finds
MoE blocks — and, for the one forward pass, each is swapped for a wrapper that records its
`indices` argument and calls the original. Nothing per architecture; no top-k re-derived from
gate logits (which would miss score-correction biases and group limits).

The reference. SRC may be a published Hugging Face checkpoint whose config mlx-lm reads wrongly
(transformers-5 keys: `rope_parameters`, `num_local_experts`; mlx-lm silently falls back to its
defaults, e.g. rope_theta 1e6) or whose layout it cannot load (fused experts, FP8 sources of some
families). It is loaded directly with mlx-lm only when moequant's alias table has nothing to fill
in its config *and* mlx-lm loads it strictly (every tensor matched). Otherwise it goes through
moequant's own pipeline without quantization — `Conversion(SRC, dtype="float32")` into a scratch
folder, deleted afterwards — so it reaches mlx-lm the same way DST did, with every source format
(FP8, NVFP4, MLX-quantized, fused/stacked experts) handled, and float32 so that nothing is rounded
on the way. This costs a float32 copy of SRC on disk for the duration; `scratch` picks where.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import mlx.core as mx
import mlx.nn as nn

from .errors import CheckpointError, LayoutError
from .evaluate import Closeness, compare_logits, fixed_tokens, free_memory, load_float32
from .surgery import expert_containers, natural_order, recording

log = logging.getLogger(__name__)

# Default token batch when no prompt is given: enough tokens that a router agreement moves in
# steps of 1/256, small enough for a CPU forward pass of a large model.
BATCH, LENGTH = 4, 64


@dataclass(frozen=True)
class Report:
    closeness: Closeness  # DST's logits against the reference's (evaluate.compare_logits)
    router_agreement: dict[str, float]  # MoE block path -> fraction of tokens with the same expert set
    tokens: int  # tokens in the batch (every position counts)
    top_k: dict[str, int] = field(default_factory=dict)  # MoE block path -> experts selected per token
    reference_converted: bool = False  # SRC went through moequant's float32 conversion first
    # DST's logits against SRC's own transformers forward pass (verify(..., against_transformers=True))
    transformers: Closeness | None = None
    kl_by_position: tuple[float, ...] = ()  # KL at each token position, mean over the batch

    @property
    def mean_router_agreement(self) -> float | None:
        values = list(self.router_agreement.values())
        return sum(values) / len(values) if values else None

    @property
    def min_router_agreement(self) -> float | None:
        return min(self.router_agreement.values(), default=None)

    def to_dict(self) -> dict:
        return {
            "tokens": self.tokens,
            "closeness": self.closeness.to_dict(),
            "router_agreement": dict(self.router_agreement),
            "mean_router_agreement": self.mean_router_agreement,
            "min_router_agreement": self.min_router_agreement,
            "top_k": dict(self.top_k),
            "reference_converted": self.reference_converted,
            "transformers": self.transformers.to_dict() if self.transformers else None,
            "kl_by_position": list(self.kl_by_position),
        }


# --- router capture ---------------------------------------------------------------------------

@contextmanager
def recording_routes(model: nn.Module) -> Iterator[dict[str, list[mx.array]]]:
    """Inside the block, each forward pass appends, per MoE block path, the expert indices its
    container was called with. The original modules are put back on exit."""
    containers = expert_containers(model)
    seen: dict[str, list[mx.array]] = {block: [] for block in containers}

    def keep(block: str):
        def call(x: mx.array, indices: mx.array | None) -> None:
            if indices is not None:
                seen[block].append(indices)
        return call

    with recording(model, {container: keep(block) for block, container in containers.items()}):
        yield seen


def _run(model: nn.Module, tokens: mx.array) -> tuple[mx.array, dict[str, mx.array]]:
    """Logits and, per MoE block, the selected experts as [tokens, k], sorted within a token."""
    with recording_routes(model) as seen:
        logits = model(tokens)
    routes = {}
    for block, calls in seen.items():
        if calls:  # a container never called with indices is not a routed block
            flat = [c.reshape(-1, c.shape[-1]) for c in calls]
            routes[block] = mx.sort(mx.concatenate(flat) if len(flat) > 1 else flat[0], axis=-1)
    mx.eval(logits, routes)
    return logits, routes


def router_agreement(reference: mx.array, other: mx.array) -> float:
    """Fraction of rows (tokens) of two [tokens, k] index arrays holding the same set."""
    a, b = mx.sort(reference, axis=-1), mx.sort(other, axis=-1)
    return mx.all(a == b, axis=-1).astype(mx.float32).mean().item()


# --- loading ----------------------------------------------------------------------------------

def _direct_load(reference: Path) -> nn.Module | None:
    """The reference as mlx-lm itself loads it, if that is trustworthy; else None."""
    from .target import reads_as_is

    config_file = reference / "config.json"
    if not config_file.is_file():
        return None  # let the conversion say what is missing
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return None
    if not reads_as_is(config):  # a CheckpointError (not an mlx-lm model) is the answer
        log.info("reference: mlx-lm would read config.json differently from transformers; "
                 "converting it without quantization")
        return None
    try:
        return load_float32(reference)
    except Exception as e:  # noqa: BLE001 - anything mlx-lm refuses goes through moequant instead
        log.info("reference: mlx-lm does not load it as it is (%s); converting it without quantization", e)
        return None


@contextmanager
def reference_model(reference: str | Path, scratch: str | Path | None = None) -> Iterator[tuple[nn.Module, bool]]:
    """(float32 model of SRC, whether it went through a conversion); see the module docstring."""
    path = Path(reference)
    model = _direct_load(path) if path.is_dir() else None
    if model is not None:
        yield model, False
        return
    from .convert import Conversion

    with tempfile.TemporaryDirectory(prefix="moequant-verify-", dir=scratch) as tmp:
        dst = Path(tmp) / "reference"
        for _ in Conversion(reference, dtype="float32").run(dst):
            pass
        yield load_float32(dst), True


def _vocab_size(model: nn.Module, path: Path) -> int:
    args = getattr(model, "args", None)
    for source in (args, getattr(args, "text_config", None)):
        value = source.get("vocab_size") if isinstance(source, dict) else getattr(source, "vocab_size", None)
        if isinstance(value, int) and value > 0:
            return value
    config = json.loads((path / "config.json").read_text())
    value = config.get("vocab_size") or config.get("text_config", {}).get("vocab_size")
    if not isinstance(value, int):
        raise CheckpointError(f"{path / 'config.json'}: no vocab_size; expected an int (or pass a prompt)")
    return value


def check_converted(dst: str | Path) -> Path:
    """DST as a folder with a config.json, or a CheckpointError saying what is there instead."""
    dst = Path(dst)
    if not dst.is_dir():
        raise CheckpointError(f"{dst}: {'a file' if dst.exists() else 'no such folder'}; expected a converted "
                              "checkpoint folder")
    if not (dst / "config.json").is_file():
        raise CheckpointError(f"{dst / 'config.json'}: not found; expected a converted checkpoint folder")
    return dst


def tokens_for_prompt(path: str | Path, text: str) -> mx.array:
    """`text` as a [1, n] token batch, tokenized by the checkpoint's own tokenizer (mlx-lm's
    `load_tokenizer`, special tokens such as BOS added as the tokenizer does)."""
    from mlx_lm.utils import load_tokenizer

    path = check_converted(path)
    try:
        tokenizer = load_tokenizer(path)
    except Exception as e:  # noqa: BLE001 - transformers raises many types for a missing tokenizer
        raise CheckpointError(f"{path}: no tokenizer mlx-lm can load ({e.__class__.__name__}: {e}); "
                              f"expected tokenizer.json or tokenizer.model") from None
    ids = tokenizer.encode(text)
    if not ids:
        raise CheckpointError(f"prompt: {text!r} tokenizes to no tokens; expected at least one")
    return mx.array([ids], dtype=mx.int32)


# --- the check --------------------------------------------------------------------------------

def transformers_logits(src: str | Path, tokens: mx.array) -> mx.array:
    """SRC's logits on `tokens` from transformers' own forward pass (PyTorch, float32): the
    reference that shares nothing with moequant's or mlx-lm's reading of the checkpoint."""
    try:
        import numpy as np
        import torch
        import transformers
    except ImportError:
        raise CheckpointError("--against transformers: torch is not installed; expected `pip install torch` "
                              "(transformers comes with mlx-lm)") from None
    from .checkpoint import read_checkpoint

    ckpt = read_checkpoint(src)
    weights = sum(4 * math.prod(t.shape) for t in ckpt.tensors.values())
    free = free_memory()
    if free is not None and weights > 0.8 * free:
        raise CheckpointError(
            f"--against transformers: {src} needs about {weights / 1e9:.1f} GB as a float32 transformers model "
            f"and {free / 1e9:.1f} GB are free; comparing it whole is not possible on this machine, and a "
            f"layer-by-layer comparison is not built yet")
    from .target import quiet_transformers

    with quiet_transformers():
        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(ckpt.path, dtype=torch.float32).eval()
        except Exception as e:  # noqa: BLE001 - transformers raises many types for a model it cannot build
            raise CheckpointError(f"--against transformers: transformers {transformers.__version__} cannot load "
                                  f"{src} ({e.__class__.__name__}: {str(e).splitlines()[0][:200]})") from None
        with torch.inference_mode():
            logits = model(torch.from_numpy(np.array(tokens, dtype=np.int64)), use_cache=False).logits
    return mx.array(logits.float().numpy())


def verify(dst: str | Path, reference: str | Path, tokens: mx.array | None = None,
           scratch: str | Path | None = None, against_transformers: bool = False) -> Report:
    """Run the same tokens through DST and the reference; compare logits and expert choices.

    `tokens` is a [batch, length] (or [length]) array of ids; by default a fixed random batch
    over DST's vocabulary (`evaluate.fixed_tokens`). The models are loaded one after the other.
    `against_transformers` also compares DST with SRC's own transformers forward pass.
    """
    dst = check_converted(dst)
    model = load_float32(dst)
    vocab = _vocab_size(model, dst)
    if tokens is None:
        tokens = fixed_tokens(vocab, batch=BATCH, length=LENGTH)
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.size and (high := tokens.max().item()) >= vocab:  # mlx's embedding does not check: a native crash
        raise CheckpointError(f"{dst}: its tokenizer gives token id {high}; expected ids below its vocab_size {vocab}")
    dst_logits, dst_routes = _run(model, tokens)
    del model

    with reference_model(reference, scratch) as (ref, converted):
        ref_logits, ref_routes = _run(ref, tokens)
        del ref

    if ref_logits.shape != dst_logits.shape:
        raise LayoutError(f"{dst}: logits of shape {tuple(dst_logits.shape)}; expected "
                          f"{tuple(ref_logits.shape)} as the reference {reference} gives")
    if ref_routes.keys() != dst_routes.keys():
        raise LayoutError(f"{dst}: MoE blocks {sorted(dst_routes, key=natural_order)}; expected "
                          f"{sorted(ref_routes, key=natural_order)} as the reference {reference} has")
    agreement, top_k = {}, {}
    for block in ref_routes:
        r, d = ref_routes[block], dst_routes[block]
        if r.shape != d.shape:
            raise LayoutError(f"{dst}: {block} selects {d.shape[-1]} experts per token over {d.shape[0]} "
                              f"tokens; expected {r.shape[-1]} over {r.shape[0]} as the reference")
        agreement[block] = router_agreement(r, d)
        top_k[block] = r.shape[-1]
    theirs = None
    if against_transformers:
        theirs = compare_logits(transformers_logits(reference, tokens), dst_logits)
    by_position = tuple(compare_logits(ref_logits[:, i], dst_logits[:, i]).kl for i in range(ref_logits.shape[1]))
    return Report(compare_logits(ref_logits, dst_logits), agreement, tokens.size, top_k, converted, theirs,
                  by_position)
