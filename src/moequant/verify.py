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

Layer by layer (`layerwise`). With `--against transformers`, SRC's transformers forward runs
whole when its float32 weights fit in memory; otherwise — or when asked — decoder layer by
decoder layer. transformers builds SRC's model on the `meta` device (no memory), loads the
weights outside the decoder layers (embeddings), and runs its own forward: each decoder layer
has its weights loaded — through transformers' own conversion mapping, so per-expert tensors
become its fused experts as `from_pretrained` would make them — when it is called and dropped
after, so the rotary embeddings and attention masks are what the model itself gives that layer.
Each layer's input and output are kept. DST is then loaded lazily with mlx-lm, its own forward
runs up to its decoder layers (recording the arguments each gets: masks, caches), and layer i
alone — dequantized, float32 — runs on transformers' input of layer i. Each layer's output is
compared with transformers' (max abs, relative RMS error) and, where both sides hand the
selected experts to an experts module (transformers 5's, called with `top_k_index` or
`router_indices`; mlx-lm's `SwitchGLU` / `SwitchMLP`), the router's top-k sets. Since every
layer gets the reference's input, an error stays in the layer that makes it: a wrong layer
stands out from the others.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map

from .errors import CheckpointError, LayoutError
from .evaluate import (Closeness, compare_logits, dequantize_model, fixed_tokens, free_memory, load_float32,
                       text_logits, token_kl)
from .names import layer_of
from .registry import CANVAS
from .surgery import LayerStandIn, StopForward, expert_containers, module_at, natural_order, recording

log = logging.getLogger(__name__)

# Default token batch when no prompt is given: enough tokens that a router agreement moves in
# steps of 1/256, small enough for a CPU forward pass of a large model.
BATCH, LENGTH = 4, 64

# A decoder layer is flagged when its relative RMS error exceeds LAYER_SPREAD times the median
# over the layers, and at least LAYER_FLOOR (float32 summation-order noise is about 1e-7).
# Quantization error varies across layers within a few times the median (4-bit, measured: up to
# 4.2x on a 16-layer qwen3_moe, the first layer highest); one wrong layer stands an order of
# magnitude out (an expert's scales 10x too large: 13x).
LAYER_SPREAD, LAYER_FLOOR = 10.0, 1e-4


@dataclass(frozen=True)
class LayerError:
    """One decoder layer's output in DST against transformers' for the same input."""

    layer: int
    max_abs: float  # largest |difference|
    rel_rms: float  # rms(difference) / rms(transformers' output)
    router_agreement: float | None = None  # fraction of tokens with the same expert set; None: no router seen

    def to_dict(self) -> dict:
        return asdict(self)


def layer_tolerance(layers: tuple[LayerError, ...] | list[LayerError], explicit: float | None = None) -> float:
    """The relative RMS error above which a layer is flagged: `explicit` if given, else
    LAYER_SPREAD × the median over `layers`, at least LAYER_FLOOR."""
    if explicit is not None:
        return explicit
    errors = sorted(e.rel_rms for e in layers)
    median = errors[len(errors) // 2] if errors else 0.0
    return max(LAYER_FLOOR, LAYER_SPREAD * median)


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
    layers: tuple[LayerError, ...] = ()  # per decoder layer against transformers (layerwise); () when run whole
    layerwise_reason: str | None = None  # why the transformers comparison ran layer by layer

    def flagged_layers(self, tolerance: float | None = None) -> list[int]:
        """Decoder layers whose relative error exceeds `layer_tolerance(self.layers, tolerance)`."""
        limit = layer_tolerance(self.layers, tolerance)
        return [e.layer for e in self.layers if e.rel_rms > limit]

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
            "layers": [e.to_dict() for e in self.layers],
            "layerwise_reason": self.layerwise_reason,
            "layer_tolerance": layer_tolerance(self.layers) if self.layers else None,
            "flagged_layers": self.flagged_layers(),
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
    from .convert import vocab_size

    value = vocab_size(json.loads((path / "config.json").read_text()))
    if value is None:
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

def _torch():
    try:
        import torch
        import transformers
    except ImportError:
        raise CheckpointError("--against transformers: torch is not installed; expected `pip install torch` "
                              "(transformers comes with mlx-lm)") from None
    return torch, transformers


def _said(e: Exception) -> str:
    """An exception in one short line: its type and the first line of its message."""
    return f"{e.__class__.__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def _cannot(src, transformers, e: Exception) -> CheckpointError:
    return CheckpointError(f"--against transformers: transformers {transformers.__version__} cannot load "
                           f"{src} ({_said(e)})")


def _causal_lm(transformers, config):
    """The transformers class that runs `config` as a causal LM: AutoModelForCausalLM, or the class
    config.json's `architectures` names where the Auto class has no entry (Mistral4ForCausalLM)."""
    auto = transformers.AutoModelForCausalLM
    if type(config) in auto._model_mapping:
        return auto
    return getattr(transformers, (config.architectures or [""])[0], None) or auto


def too_large_whole(src: str | Path) -> str | None:
    """Why SRC cannot run whole as a float32 transformers model here (its weights would take more
    than 80% of the memory free now), or None."""
    from .checkpoint import read_checkpoint

    weights = sum(4 * math.prod(t.shape) for t in read_checkpoint(src).tensors.values())
    free = free_memory()
    if free is not None and weights > 0.8 * free:
        return (f"{src} needs about {weights / 1e9:.1f} GB as a float32 transformers model and "
                f"{free / 1e9:.1f} GB are free")
    return None


def transformers_logits(src: str | Path, tokens: mx.array) -> mx.array:
    """SRC's logits on `tokens` from transformers' own forward pass (PyTorch, float32): the
    reference that shares nothing with moequant's or mlx-lm's reading of the checkpoint."""
    torch, transformers = _torch()
    from .checkpoint import read_checkpoint
    from .target import quiet_transformers

    ckpt = read_checkpoint(src)
    with quiet_transformers():
        try:
            config = transformers.AutoConfig.from_pretrained(ckpt.path)
            model = _causal_lm(transformers, config).from_pretrained(ckpt.path, dtype=torch.float32).eval()
        except Exception as e:  # noqa: BLE001 - transformers raises many types for a model it cannot build
            raise _cannot(src, transformers, e) from None
        with torch.inference_mode():
            logits = model(**_transformers_inputs(torch, config, tokens)).logits
    return mx.array(logits.float().numpy())


def _transformers_inputs(torch, config, tokens: mx.array) -> dict:
    """transformers' forward's keywords for `tokens`: a block-diffusion model's canvas the same tokens, as
    evaluate.text_logits gives mlx's (registry.CANVAS)."""
    import numpy as np

    ids = torch.from_numpy(np.array(tokens, dtype=np.int64))
    canvas = CANVAS.get(config.model_type)
    return {"input_ids": ids, "use_cache": False, **({canvas[0]: ids} if canvas else {})}


# --- layer by layer ---------------------------------------------------------------------------

@contextmanager
def _no_progress_bars(transformers) -> Iterator[None]:
    """transformers' "Loading weights" bars (one per decoder layer here) held back."""
    shown = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            transformers.utils.logging.enable_progress_bar()


# The argument that transformers 5's experts modules get the selected experts in ([tokens, k]):
# `top_k_index` (qwen3_moe, deepseek_v3, …), `router_indices` (gpt_oss)
ROUTED = {"top_k_index", "router_indices"}


def _layer_prefix(keys) -> str | None:
    """The decoder layer list most `keys` fall in (`model.layers`), or None."""
    prefixes = [where[0] for where in map(layer_of, keys) if where]
    return max(set(prefixes), key=prefixes.count) if prefixes else None


@dataclass
class _LayerRun:
    """transformers' input and output of one decoder layer, numpy float32, and the experts its
    experts modules were called with ([tokens, k] each)."""

    input: object = None
    output: object = None
    routes: list = field(default_factory=list)


def transformers_layers(src: str | Path, tokens: mx.array) -> list[_LayerRun]:
    """SRC's transformers forward on `tokens`, one decoder layer's weights in memory at a time;
    each layer's input, output and selected experts (see the module docstring)."""
    import inspect

    import numpy as np
    from safetensors import safe_open

    torch, transformers = _torch()
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import convert_and_load_state_dict_in_model
    from transformers.modeling_utils import LoadStateDictConfig

    from .checkpoint import read_checkpoint
    from .target import quiet_transformers

    ckpt = read_checkpoint(src)
    if "quantization_config" in ckpt.config:
        raise CheckpointError(f"--against transformers: {src} is quantized "
                              f"({ckpt.config['quantization_config'].get('quant_method', '?')}); layer by layer "
                              "compares float checkpoints only (verify a float source, or one that fits whole)")
    with quiet_transformers():
        try:
            config = transformers.AutoConfig.from_pretrained(ckpt.path)
            cls = _causal_lm(transformers, config)
            with torch.device("meta"):  # an Auto class builds with from_config, a model class with _from_config
                model = (getattr(cls, "from_config", None) or cls._from_config)(config, dtype=torch.float32).eval()
        except Exception as e:  # noqa: BLE001 - transformers raises many types for a model it cannot build
            raise _cannot(src, transformers, e) from None
    prefix = _layer_prefix(model.state_dict())
    if prefix is None:
        raise CheckpointError(f"--against transformers: transformers' {type(model).__name__} has no decoder layers "
                              "(`….layers.N.…`); layer by layer needs them")
    layers = model.get_submodule(prefix)
    stored = _layer_prefix(ckpt.tensors)
    by_layer: list[list[str]] = [[] for _ in layers]
    outside = []
    for key in ckpt.tensors:
        where = layer_of(key)
        if where and where[0] == stored:
            if where[1] < len(layers):  # beyond: multi-token-prediction layers transformers does not build
                by_layer[where[1]].append(key)
        elif "lm_head" not in key:  # the forward stops after the last decoder layer
            outside.append(key)
    mapping = get_model_conversion_mapping(model, None, None)
    owner = {}  # module -> the innermost transformers model holding it (a VLM's language model has its own config)
    for part in model.modules():
        if isinstance(part, transformers.PreTrainedModel):
            owner.update((m, part) for m in part.modules())

    def load(keys: list[str], within: torch.nn.Module) -> None:
        files, state = {}, {}  # the shards opened (mapped) for this load only
        for key in keys:
            info = ckpt.tensors[key]
            if info.file not in files:
                files[info.file] = safe_open(str(info.file), framework="pt")
            state[key] = files[info.file].get_tensor(info.key)
        convert_and_load_state_dict_in_model(model, state, LoadStateDictConfig(dtype=torch.float32,
                                                                                weight_mapping=mapping))
        for module in within.modules():  # buffers not stored (rotary inv_freq) as from_pretrained makes them
            if any(b.is_meta for b in module.buffers(recurse=False)):
                module.to_empty(device="cpu", recurse=False)
                owner[module]._init_weights(module)  # with its own (sub)model's config

    runs = [_LayerRun() for _ in layers]

    def numpy(t) -> np.ndarray:
        return (t[0] if isinstance(t, tuple) else t).detach().float().numpy().copy()

    def before(i: int):
        def hook(module, args, kwargs):
            load(by_layer[i], module)
            runs[i].input = numpy(args[0] if args else kwargs["hidden_states"])
        return hook

    def after(i: int):
        def hook(module, args, kwargs, output):
            runs[i].output = numpy(output)
            module.to("meta")
            if i == len(layers) - 1:
                raise StopForward
        return hook

    def route(i: int, name: str, position: int):
        def hook(module, args, kwargs):
            indices = kwargs.get(name, args[position] if len(args) > position else None)
            if indices is not None:
                runs[i].routes.append(indices.reshape(-1, indices.shape[-1]).numpy().copy())
        return hook

    with quiet_transformers(), _no_progress_bars(transformers):
        try:
            load(outside, model)
            for i, layer in enumerate(layers):
                layer.register_forward_pre_hook(before(i), with_kwargs=True)
                layer.register_forward_hook(after(i), with_kwargs=True)
                for module in layer.modules():
                    parameters = list(inspect.signature(module.forward).parameters)
                    for name in ROUTED & set(parameters):
                        module.register_forward_pre_hook(route(i, name, parameters.index(name)), with_kwargs=True)
            with torch.inference_mode():
                model(**_transformers_inputs(torch, config, tokens))
        except StopForward:
            pass
        except Exception as e:  # noqa: BLE001 - transformers raises many types for a model it cannot build
            raise _cannot(src, transformers, e) from None
    return runs


def _load_lazy(path: Path) -> nn.Module:
    """DST as mlx-lm (or mlx-vlm, for a vision-language checkpoint) builds it, weights not read yet."""
    from .target import MLX_VLM, mlx_vlm_installed, runner_of

    if runner_of(json.loads((path / "config.json").read_text())) == MLX_VLM and mlx_vlm_installed():
        from mlx_vlm.utils import load_model as load_vlm

        return load_vlm(path, lazy=True)
    from mlx_lm.utils import load_model

    return load_model(path, lazy=True)[0]


def compare_layers(dst: str | Path, src: str | Path, tokens: mx.array) -> tuple[LayerError, ...]:
    """Each decoder layer of DST against SRC's transformers layer on the same input (module
    docstring); one layer's weights in memory at a time on each side."""
    runs = transformers_layers(src, tokens)
    dst = check_converted(dst)
    model = _load_lazy(dst)
    prefix = _layer_prefix(k for k, _ in tree_flatten(model.parameters()))
    layers = module_at(model, prefix) if prefix else []
    if len(layers) != len(runs):
        raise LayoutError(f"{dst}: {len(layers)} decoder layers in mlx; expected {len(runs)} as transformers "
                          f"builds {src}")
    real, calls = list(layers), [[] for _ in layers]
    for i in range(len(layers)):
        layers[i] = LayerStandIn(real[i], calls[i], last=i == len(layers) - 1)
    try:
        text_logits(model, tokens)
    except StopForward:
        pass
    except Exception as e:  # noqa: BLE001 - the model's own forward, whatever its layers hand on
        raise LayoutError(f"{dst}: mlx's {type(model).__module__} model does not run with its decoder layers "
                          f"stood in for ({_said(e)}): its layers hand more than hidden states to the next; "
                          "expected a model verify can compare whole (without --layerwise)") from None
    errors = []
    for i, run in enumerate(runs):
        layer, real[i] = real[i], None
        dequantize_model(layer)
        layer.update(tree_map(lambda a: a.astype(mx.float32) if mx.issubdtype(a.dtype, mx.floating) else a,
                              layer.parameters()))
        (_, args, kwargs), = calls[i]
        with recording_routes(layer) as seen:
            out = layer(mx.array(run.input), *args, **kwargs)
        out = out[0] if isinstance(out, tuple) else out
        mx.eval(out)
        ours = [c.reshape(-1, c.shape[-1]) for block in seen.values() for c in block]
        agreement = None
        if len(ours) == len(run.routes) == 1 and ours[0].shape == run.routes[0].shape:
            agreement = router_agreement(mx.array(run.routes[0]), ours[0])
        reference = mx.array(run.output)
        if out.shape != reference.shape:
            raise LayoutError(f"{dst}: decoder layer {i} gives an output of shape {tuple(out.shape)}; expected "
                              f"{tuple(reference.shape)} as transformers gives")
        diff = out - reference
        errors.append(LayerError(i, mx.abs(diff).max().item(),
                                 (mx.sqrt((diff * diff).mean()) / mx.sqrt((reference * reference).mean())).item(),
                                 agreement))
        layers[i] = nn.Module()  # layer i's weights go
        del layer, out
    return tuple(errors)


def verify(dst: str | Path, reference: str | Path, tokens: mx.array | None = None,
           scratch: str | Path | None = None, against_transformers: bool = False,
           layerwise: bool = False) -> Report:
    """Run the same tokens through DST and the reference; compare logits and expert choices.

    `tokens` is a [batch, length] (or [length]) array of ids; by default a fixed random batch
    over DST's vocabulary (`evaluate.fixed_tokens`). The models are loaded one after the other.
    `against_transformers` also compares DST with SRC's own transformers forward pass: whole, or
    decoder layer by decoder layer (`compare_layers`) when `layerwise` or when SRC is too large
    to run whole here (the report's `layerwise_reason` says which).
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
    theirs, layers, why = None, (), None
    if against_transformers:
        why = "asked for (--layerwise)" if layerwise else too_large_whole(reference)
        if why is None:
            theirs = compare_logits(transformers_logits(reference, tokens), dst_logits)
        else:
            layers = compare_layers(dst, reference, tokens)
    by_position = tuple(max(kl, 0.0) for kl in token_kl(ref_logits, dst_logits).mean(0).tolist())
    return Report(compare_logits(ref_logits, dst_logits), agreement, tokens.size, top_k, converted, theirs,
                  by_position, layers, why)
