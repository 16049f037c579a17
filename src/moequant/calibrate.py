"""Calibration statistics for `--target-bpw --calib FILE`, measured on the float model with the
real mlx-lm forward on calibration text:

* per module, the energy E[x_j²] of each input channel. Expert stacks: every calibration token is
  sent through every expert (not only the ones its router picked), so an expert the router rarely
  or never selects is measured all the same; each expert's statistics are then weighted by half
  uniform, half its observed routing frequency.
* per module, its output sensitivity: the KL divergence of the model's next-token distribution
  when that module alone is quantized at a probe setting (the rest float). This is what turns
  each module's relative error into the model's: modules differ by orders of magnitude here (on
  the trained tiny Qwen3-MoE, one attention projection costs as much KL as a whole expert stack).
"""

from __future__ import annotations

import logging
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .errors import CheckpointError, os_reason
from .evaluate import compare_logits
from .formats import Mode, Quant
from .target import quiet_transformers
from .verify import _parent_and_key, expert_containers, reference_model

log = logging.getLogger(__name__)

PROBE = Quant.make(Mode.AFFINE, 3, 64)  # the setting each module's output sensitivity is measured at
SENSITIVITY_SEQUENCES = 2  # calibration sequences per sensitivity forward pass


CALIB_SEQUENCES, CALIB_LENGTH = 8, 512  # defaults: sequences of tokens read from a calibration file


def _tokenizer(path: Path | None, where: str):
    """The checkpoint's own tokenizer (mlx-lm's load_tokenizer), or a one-line error."""
    from mlx_lm.utils import load_tokenizer

    if path is None:
        raise CheckpointError(f"{where}: text needs the checkpoint's tokenizer; expected SRC with tokenizer files, "
                              "or token ids as .npy")
    files = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
    try:
        if not any((Path(path) / f).is_file() for f in files):
            raise FileNotFoundError(" / ".join(files))
        return load_tokenizer(Path(path))
    except Exception as e:  # noqa: BLE001 - transformers raises many types for a missing tokenizer
        raise CheckpointError(f"{where}: SRC {path} has no tokenizer mlx-lm can load ({type(e).__name__}); expected "
                              "tokenizer.json or tokenizer.model in SRC, or token ids as .npy") from None


def _jsonl_texts(path: Path, where: str, tokenizer) -> list[str]:
    """Each line's `text`, or its chat `messages` rendered with the model's chat template."""
    import json

    texts = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise CheckpointError(f"{where}: line {n} is not JSON; expected one object per line") from None
        if isinstance(record, dict) and isinstance(record.get("text"), str):
            texts.append(record["text"])
        elif isinstance(record, dict) and isinstance(record.get("messages"), list):
            if not getattr(tokenizer, "chat_template", None):
                raise CheckpointError(f"{where}: line {n} has chat messages and SRC's tokenizer has no chat template; "
                                      "expected {\"text\": …} lines")
            texts.append(tokenizer.apply_chat_template(record["messages"], tokenize=False))
        else:
            raise CheckpointError(f"{where}: line {n} has neither a text string nor a messages list; expected "
                                  '{"text": …} or {"messages": [{"role": …, "content": …}, …]}')
    return texts


def read_calibration(file: str | Path, tokenizer: str | Path | None = None, length: int = CALIB_LENGTH,
                     sequences: int = CALIB_SEQUENCES, vocab_size: int | None = None) -> mx.array:
    """Token batch [n ≤ sequences, length] from a calibration file, spread evenly over it:
    `.npy` integer token ids (read without pickle); `.jsonl` lines of {"text": …} or chat
    {"messages": […]} (rendered with the model's chat template); any other file as UTF-8 text.
    Text is tokenized by the checkpoint's own tokenizer (the folder `tokenizer`, mlx-lm's
    load_tokenizer): a real model's ids are its BPE vocabulary's, never bytes. Every id must lie
    in [0, vocab_size): mlx's embedding does not check, and an id past the end reads outside the
    table (a segmentation fault, not an error)."""
    path = Path(file)
    where = f"--calib {file}"
    if length < 1 or sequences < 1:
        raise CheckpointError(f"{where}: {sequences} sequences of {length} tokens; expected at least one of one")
    try:
        if path.suffix == ".npy":
            ids = np.load(path, allow_pickle=False)
        else:
            tok = _tokenizer(tokenizer, where)
            texts = _jsonl_texts(path, where, tok) if path.suffix == ".jsonl" else [path.read_text(encoding="utf-8")]
            with quiet_transformers():  # "longer than the maximum sequence length": it is cut into sequences below
                ids = np.array([i for text in texts for i in tok.encode(text)], dtype=np.int64)
    except OSError as e:
        raise CheckpointError(f"{where}: {os_reason(e)}; expected a readable text, .jsonl or .npy file") from None
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{where}: not UTF-8 text (byte {e.start}); expected text, .jsonl or .npy token ids") \
            from None
    except (ValueError, EOFError) as e:  # pickled, object, truncated or not .npy at all
        reason = str(e).split(". ")[0].rstrip(".") or type(e).__name__
        raise CheckpointError(f"{where}: not a .npy array numpy reads without pickle ({reason}); expected integer "
                              "token ids saved with numpy.save") from None
    if ids.dtype == bool or not np.issubdtype(ids.dtype, np.integer):
        raise CheckpointError(f"{where}: {ids.dtype} values; expected integer token ids")
    ids = ids.reshape(-1)
    if ids.size and (low := int(ids.min())) < 0:
        raise CheckpointError(f"{where}: token id {low} at position {int(ids.argmin())}; expected ids from 0")
    if vocab_size is not None and ids.size and (outside := ids >= vocab_size).any():
        first = int(outside.argmax())
        raise CheckpointError(f"{where}: token id {int(ids[first])} at position {first} ({int(outside.sum())} in "
                              f"all, the largest {int(ids.max())}); expected ids below the model's vocab_size {vocab_size}")
    n = min(len(ids) // length, sequences)
    if n == 0:
        raise CheckpointError(f"{where}: {len(ids)} tokens; expected at least {length} (--calib-length)")
    if n < sequences:
        log.warning("%s: %d tokens give %d of %d sequences of %d", where, len(ids), n, sequences, length)
    starts = np.linspace(0, len(ids) - length, n).astype(int)
    return mx.array(np.stack([ids[s:s + length] for s in starts]).astype(np.int32))


class _Inputs(nn.Module):
    """Stands in for a module for one forward pass and keeps what it was called with."""

    def __init__(self, inner: nn.Module, seen: list):
        super().__init__()
        self.inner = inner
        object.__setattr__(self, "_seen", seen)

    def __call__(self, x, *args, **kwargs):
        self._seen.append((x, args[0] if args else kwargs.get("indices")))
        return self.inner(x, *args, **kwargs)


def _squares(x: mx.array) -> mx.array:
    x = x.reshape(-1, x.shape[-1]).astype(mx.float32)
    return (x * x).mean(0)


def _recorded_inputs(model: nn.Module, tokens: mx.array, paths: set[str]) -> tuple[dict[str, list], set[str]]:
    """One forward pass of `tokens`, recording what the Linear modules in `paths` and every
    expert container were called with: (path -> [(x, expert indices or None)], container paths)."""
    containers = set(expert_containers(model).values())
    watched = {}
    for path, module in model.named_modules():
        if path in paths and isinstance(module, nn.Linear) and not any(path.startswith(c + ".") for c in containers):
            watched[path] = []
    for container in containers:
        watched[container] = []
    for path, seen in watched.items():
        parent, key = _parent_and_key(model, path)
        parent[key] = _Inputs(parent[key], seen)
    try:
        mx.eval(model(tokens))
    finally:
        for path in watched:
            parent, key = _parent_and_key(model, path)
            parent[key] = parent[key].inner
    return {p: calls for p, calls in watched.items() if calls}, containers


def channel_energy(src: str | Path, tokens: mx.array, paths: set[str]) -> dict[str, mx.array]:
    """Module path -> E[x_j²] per input channel ([in], or [E, in] for expert stacks), for the
    modules in `paths` that a forward pass reaches (others keep the data-free proxy)."""
    with reference_model(src) as (model, _):
        recorded, containers = _recorded_inputs(model, tokens, paths)
        out = {}
        for path, calls in recorded.items():
            if path in containers:
                out.update(_expert_energy(model, path, calls))
            else:
                out[path] = sum(_squares(x) for x, _ in calls) / len(calls)
        return out


def _moments(x: mx.array) -> mx.array:
    x = x.reshape(-1, x.shape[-1]).astype(mx.float32)
    return x.T @ x / max(x.shape[0], 1)


def input_moments(src: str | Path, tokens: mx.array, paths: set[str]) -> dict[str, mx.array]:
    """Module path -> E[x xᵀ] of its inputs on `tokens` ([in, in]; [E, in, in] for expert stacks),
    what GPTQ weighs rounding errors by. An expert's is the mean of its inputs' over every token
    (so an expert the router rarely picks is measured too) and over the tokens routed to it."""
    with reference_model(src) as (model, _):
        recorded, containers = _recorded_inputs(model, tokens, paths)
        out = {}
        for path, calls in recorded.items():
            if path not in containers:
                out[path] = sum(_moments(x) for x, _ in calls) / len(calls)
                continue
            out.update(_expert_moments(model, path, calls, paths))
        return out


def _container_inputs(model: nn.Module, container: str, calls: list):
    """(the expert container, its inputs [N, in] float32, their expert indices [N, k] or None)."""
    parent, key = _parent_and_key(model, container)
    x = mx.concatenate([c[0].reshape(-1, c[0].shape[-1]) for c in calls]).astype(mx.float32)
    if calls[0][1] is None:
        return parent[key], x, None
    return parent[key], x, np.concatenate([np.array(c[1]).reshape(-1, c[1].shape[-1]) for c in calls])


def _activation(glu: nn.Module, x: mx.array, e: int) -> mx.array:
    """Expert e's down_proj input on every token x."""
    return glu.activation(x @ glu.up_proj.weight[e].T, x @ glu.gate_proj.weight[e].T)


def _expert_moments(model: nn.Module, container: str, calls: list, paths: set[str]) -> dict[str, mx.array]:
    """[E, in, in] per projection of an expert container: per expert, the mean of E[x xᵀ] over
    every token and over the tokens routed to it (every token alone for an expert never routed)."""
    glu, x, indices = _container_inputs(model, container, calls)
    n_experts = glu.up_proj.weight.shape[0]
    if indices is None:
        routed = [None] * n_experts
    else:
        routed = [mx.array(rows) if (rows := np.nonzero((indices == e).any(-1))[0]).size else None
                  for e in range(n_experts)]

    def mixed(everyone: mx.array, inputs: mx.array, rows) -> mx.array:
        return everyone if rows is None else (everyone + _moments(inputs[rows])) / 2

    out = {}
    shared = _moments(x)
    for name in ("gate_proj", "up_proj"):
        if f"{container}.{name}" in paths and hasattr(glu, name):
            out[f"{container}.{name}"] = mx.stack([mixed(shared, x, rows) for rows in routed])
    if f"{container}.down_proj" in paths and all(hasattr(glu, n) for n in ("gate_proj", "up_proj", "down_proj")):
        stack = []
        for e, rows in enumerate(routed):
            h = _activation(glu, x, e)
            stack.append(mixed(_moments(h), h, rows))
        out[f"{container}.down_proj"] = mx.stack(stack)
    return out


def _expert_energy(model: nn.Module, container: str, calls: list) -> dict[str, mx.array]:
    """Per expert: the projections' inputs on every token (the hidden states for the gate/up
    projections; for down_proj, each expert's own activation), weighted by routing frequency."""
    glu, x, indices = _container_inputs(model, container, calls)
    n_experts = glu.up_proj.weight.shape[0]
    freq = np.bincount(indices.reshape(-1), minlength=n_experts) / max(indices.size, 1) if indices is not None \
        else np.full(n_experts, 1 / n_experts)
    weight = mx.array(0.5 + 0.5 * n_experts * freq, dtype=mx.float32)[:, None]  # mean 1
    hidden = _squares(x)
    out = {f"{container}.{name}": weight * hidden[None] for name in ("gate_proj", "up_proj")
           if hasattr(glu, name)}
    if hasattr(glu, "down_proj") and hasattr(glu, "up_proj") and hasattr(glu, "gate_proj"):
        act = []
        for e in range(n_experts):
            h = _activation(glu, x, e)
            act.append(_squares(h))
        out[f"{container}.down_proj"] = weight * mx.stack(act)
    return out


def output_sensitivity(src: str | Path, tokens: mx.array, paths: set[str], probe: Quant = PROBE) -> dict[str, float]:
    """Module path -> KL(float model ‖ float model with only this module's weight replaced by its
    `probe` quantization, dequantized), in nats/token on the first SENSITIVITY_SEQUENCES sequences
    of `tokens`: one forward pass per module. Modules the probe cannot quantize are left out."""
    tokens = tokens[:SENSITIVITY_SEQUENCES]
    with reference_model(src) as (model, _):
        reference = model(tokens)
        mx.eval(reference)
        out = {}
        for path in sorted(paths):
            parent, key = _parent_and_key(model, path)
            module = parent[key]
            weight = getattr(module, "weight", None)
            if weight is None or weight.shape[-1] % probe.group_size:
                continue
            packed, scales, biases = mx.quantize(weight, probe.group_size, probe.bits)
            module.weight = mx.dequantize(packed, scales, biases, probe.group_size, probe.bits).astype(weight.dtype)
            try:
                out[path] = compare_logits(reference, model(tokens)).kl
            finally:
                module.weight = weight
        return out
