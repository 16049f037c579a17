"""Calibration in one pass streamed over the decoder layers (issue 15): the same statistics as a
whole-model computation, and memory that does not grow with the number of layers."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from moequant.allocate import CANDIDATES
from moequant.calibrate import MIN_ROUTED, PROBE, Moments, Symmetric, measure, moments_bytes
from moequant.convert import Conversion
from moequant.errors import PlanError
from moequant.evaluate import load_float32, text_logits
from moequant.formats import Quant
from moequant.gptq import quantize_gptq, quantize_gptq_together
from moequant.surgery import expert_containers, module_at, recording, standing_in
from moequant.target import build_model
from moequant.tiny import ALL_ARCHS, VLM_ARCHS, write_tiny_checkpoint

from conftest import layers_repeated

TOKENS = mx.array(np.random.default_rng(0).integers(0, 256, (5, 48)).astype(np.int32))  # 3 chunks, the last short


def _stream(src: Path, tokens: mx.array, **wanted):
    conversion = Conversion(src, Quant.make("affine", 4))
    return measure(build_model(conversion.config), conversion._normalized_groups(), tokens, **wanted)


class _RouterChoices(nn.Module):
    """Stands in for a router that returns (top-k indices, weights): keeps the indices of each call
    in calls["<container>.router"]."""

    def __init__(self, inner: nn.Module, calls: dict, container: str):
        super().__init__()
        self.inner = inner
        object.__setattr__(self, "_kept", calls.setdefault(f"{container}.router", []))

    def __call__(self, x):
        indices, weights = self.inner(x)
        self._kept.append(np.array(indices).reshape(-1))
        return indices, weights


class _OnItsInputs(nn.Module):
    """Stands in for a MultiLinear: records its calls on inputs of its weight's `in` (transposed), not
    those on the latent (MLA's embed_q in prefill, transpose=False)."""

    def __init__(self, inner: nn.Module, keep):
        super().__init__()
        self.inner = inner
        object.__setattr__(self, "_keep", keep)

    def __call__(self, x, transpose=True):
        if transpose:
            self._keep(x, None)
        return self.inner(x, transpose=transpose)


def _whole_model_reference(src: Path, tmp: Path, tokens: mx.array, paths: set[str]):
    """Energy and moments from one forward pass of the whole float model, written out directly. An
    expert container's activations are those its own call hands its output stack (down_proj, or
    Nemotron-H's fc2): on the routed tokens in the forward pass, and on every token with every expert
    in a call of the container with all of them chosen (biases, activation and all, as the model has them).
    A slot whose router chose a zero expert (LongCat's, handed to the stack as expert 0 at weight 0)
    is no expert's: the router's own choices, recorded, say which (and a zero-expert block's routed
    activations are then its every-token ones on the tokens routed to each expert)."""
    for _ in Conversion(src, dtype="float32").run(tmp / "float"):
        pass
    runner = load_float32(tmp / "float")
    model = runner.model if type(runner).__name__ == "_Logits" else runner  # mlx-vlm's, called through a wrapper
    containers = set(expert_containers(model).values())
    outputs = {c: f"{c}.{'down_proj' if hasattr(module_at(model, c), 'down_proj') else 'fc2'}" for c in containers}
    calls = {}

    def keep(path):
        return lambda x, indices: calls.setdefault(path, []).append((x, indices))

    linears = {p for p in paths if not any(p.startswith(c + ".") for c in containers)}
    multi = {p for p in linears if type(module_at(model, p)).__name__ == "MultiLinear"}
    zero = {c for c in containers if getattr(module_at(model, c.rpartition(".")[0]), "zero_expert_num", 0)}
    with recording(model, {p: keep(p) for p in outputs.values()}), \
            recording(model, {p: keep(p) for p in (linears - multi) | containers}), \
            standing_in(model, {p: lambda m, p=p: _OnItsInputs(m, keep(p)) for p in multi}), \
            standing_in(model, {f"{c.rpartition('.')[0]}.router": lambda m, c=c: _RouterChoices(m, calls, c)
                                for c in zero}):  # the stacks first: then their containers
        mx.eval(text_logits(runner, tokens))
    energy, moments = {}, {}
    for path in (linears | containers) & calls.keys():  # not every module is reached (DSA's indexer on few tokens)
        seen = calls[path]
        x = np.concatenate([np.array(c[0], dtype=np.float64).reshape(-1, c[0].shape[-1]) for c in seen])
        if path not in containers:
            energy[path], moments[path] = (x * x).mean(0), x.T @ x / len(x)
            continue
        glu = module_at(model, path)
        chosen = np.concatenate([np.array(c[1]).reshape(len(c[0].reshape(-1, c[0].shape[-1])), -1) for c in seen])
        n_experts = glu[outputs[path].rpartition(".")[2]].weight.shape[0]
        if path in zero:  # the router's choices of a zero expert: no expert's
            chosen = np.where(np.concatenate(calls[f"{path}.router"]).reshape(chosen.shape) >= n_experts, -1,
                              chosen.astype(np.int64))
        freq = np.bincount(chosen[chosen >= 0], minlength=n_experts) / (chosen >= 0).sum()
        weight = (0.5 + 0.5 * n_experts * freq)[:, None]

        def per_expert(recorded):
            """The output stack's inputs by expert, from its recorded calls (rows and indices in step)."""
            h = np.concatenate([np.array(c[0], dtype=np.float64).reshape(-1, c[0].shape[-1]) for c in recorded])
            idx = np.concatenate([np.array(c[1]).reshape(-1) for c in recorded])
            return [h[idx == e] for e in range(n_experts)]

        routed = per_expert(calls[outputs[path]])
        calls[outputs[path]] = []
        every = mx.broadcast_to(mx.arange(n_experts), (len(x), n_experts))
        with recording(model, {outputs[path]: keep(outputs[path])}):
            mx.eval(module_at(model, path)(mx.array(x, mx.float32), every))
        act = per_expert(calls[outputs[path]])
        assert all(len(a) == len(x) for a in act)
        if path in zero:  # the stack's routed call had the zero experts' slots as expert 0's
            routed = [a[(chosen == e).any(-1)] for e, a in enumerate(act)]

        def mixed(h, rows):
            everyone = h.T @ h / len(h)
            return everyone if len(rows) < MIN_ROUTED else (everyone + rows.T @ rows / len(rows)) / 2

        inputs = {"fc1"} if outputs[path].endswith("fc2") else {"gate_proj", "up_proj"}
        for name in inputs:
            energy[f"{path}.{name}"] = weight * (x * x).mean(0)[None]
            moments[f"{path}.{name}"] = np.stack([mixed(x, x[(chosen == e).any(-1)]) for e in range(n_experts)])
        energy[outputs[path]] = weight * np.stack([(a * a).mean(0) for a in act])
        moments[outputs[path]] = np.stack([mixed(a, r) for a, r in zip(act, routed)])
    return energy, moments


# what the pass cannot carry, refused in one line: Hunyuan's layers hand the next their keys and values
# (cross-layer attention), the GLM-5 Next release's their top-k indices
REFUSED = {"hunyuan": "hands what a decoder layer returns beside its hidden states to a later layer"}
REFUSED_VLM = {"glm5_next": "hands what a decoder layer returns beside its hidden states to a later layer"}


@pytest.mark.parametrize("arch", sorted(set(ALL_ARCHS) - set(REFUSED)))
def test_streamed_statistics_equal_a_whole_model_computation(tmp_path, arch):
    """Every statistic of every module the whole model's forward reaches, each expert stack's
    included, as the pass streamed over the layers takes it: over three chunks, the last short
    (hybrid layers that read their own attributes, Gemma 4's that return keys and values, gpt-oss's
    stacks with biases, Nemotron-H's non-gated experts)."""
    _compare_statistics(write_tiny_checkpoint(tmp_path / "src", arch, dtype="float32"), tmp_path)


@pytest.mark.parametrize("arch", sorted(set(VLM_ARCHS) - set(REFUSED_VLM)))
def test_streamed_statistics_of_a_vision_language_release_equal_a_whole_model_computation(tmp_path, arch):
    """The same on the releases whole (their language model's modules, under its prefix; the
    reference through mlx-vlm's model)."""
    _compare_statistics(write_tiny_checkpoint(tmp_path / "src", arch, dtype="float32", vision=True), tmp_path)


def _compare_statistics(src: Path, tmp_path: Path) -> None:
    """The pass's energy and moments of every affine module but the embeddings against
    _whole_model_reference's. MLA's MultiLinear (embed_q, unembed_out) have them where called on inputs
    of their weight's `in`: unembed_out on the latent in prefill, embed_q only in mlx-vlm's absorbed
    attention (on the queries)."""
    conversion = Conversion(src, Quant.make("affine", 4))
    paths = {r.path for r in conversion.plan.rows if r.quant is not None and r.role.value != "embedding"}
    energy, moments = _whole_model_reference(src, tmp_path, TOKENS, paths)
    stats = _stream(src, TOKENS, energy=paths, moments=paths)
    assert set(stats.energy) == set(energy) == set(moments) == set(stats.moments)
    assert set(energy) <= paths and len(paths - set(energy)) <= 2 * len(paths) // 10  # a few never reached
    containers = set(expert_containers(build_model(conversion.config)).values())
    assert {p for p in paths if p.rpartition(".")[0] in containers} <= set(energy)  # every expert stack's
    for path in energy:
        np.testing.assert_allclose(np.array(stats.energy[path]), energy[path], rtol=2e-4, atol=1e-7, err_msg=path)
        np.testing.assert_allclose(np.array(stats.moments[path]), moments[path], rtol=2e-4, atol=1e-6, err_msg=path)
    stats.moments.close()


def _counted(moments: Moments, paths) -> int:
    """The bytes of the moments' files, a record of Linear modules with the same input (q/k/v: one
    record) counted once per module, as moments_bytes counts them."""
    records: dict = {}
    for path in paths:
        if isinstance(h := moments.get(path), Symmetric):
            records.setdefault(h, []).append(path)
    return (sum(f.stat().st_size for f in moments.root.iterdir())
            + sum((len(shared) - 1) * h.file.stat().st_size for h, shared in records.items()))


@pytest.mark.parametrize("arch", ["qwen3_moe", "mixtral"])
def test_the_moments_take_on_disk_what_the_check_before_the_pass_estimates(tmp_path, arch):
    """moments_bytes, which the temporary folder's free space is checked against, is within a few
    percent of the files' size, and never above it (what it leaves out: the routing choices, the
    files' headers)."""
    src = write_tiny_checkpoint(tmp_path / "src", arch, dtype="float32")
    conversion = Conversion(src, Quant.make("affine", 4))
    paths = {r.path for r in conversion.plan.rows if r.quant is not None and r.role.value != "embedding"}
    model = build_model(conversion.config)
    containers = set(expert_containers(model).values())
    estimate = moments_bytes(model, paths, containers, TOKENS.size)
    stats = measure(model, conversion._normalized_groups(), TOKENS, moments=paths)
    assert set(stats.moments) == paths
    actual = sum(f.stat().st_size for f in stats.moments.root.iterdir())
    counted = _counted(stats.moments, paths)
    assert counted > actual
    assert 0.95 * counted < estimate <= counted, (estimate, counted)
    stats.moments.close()
    assert not stats.moments.root.exists()


def test_modules_with_the_same_input_have_one_record_and_are_rounded_as_each_alone(tmp_path):
    """q/k/v's moments are written once (one record, compared equal: the conversion rounds them
    together, H's factorization once), o_proj's apart; GPTQ of them together gives each the bytes it
    gets alone."""
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe", dtype="float32")
    conversion = Conversion(src, Quant.make("affine", 4))
    paths = {r.path for r in conversion.plan.rows if r.quant is not None and r.role.value != "embedding"}
    stats = _stream(src, TOKENS, moments=paths)
    attention = "model.layers.1.self_attn"
    q, k, v, o = (stats.moments[f"{attention}.{n}_proj"] for n in "qkvo")
    assert q == k == v != o and q.file == v.file != o.file
    assert np.array_equal(np.asarray(k), np.asarray(v))
    weights = {n: mx.array(np.random.default_rng(i).standard_normal((s, q.shape[0]), dtype=np.float32))
               for i, (n, s) in enumerate({"q": 96, "k": 32, "v": 32}.items())}
    together = quantize_gptq_together([(w, Quant.make("affine", 4, 32)) for w in weights.values()], q)
    for w, ours in zip(weights.values(), together):
        alone = quantize_gptq(w, np.asarray(q), Quant.make("affine", 4, 32))
        assert all(np.array_equal(np.array(a), np.array(b)) for a, b in zip(ours, alone))
    stats.moments.close()


def test_moments_keep_upper_triangles_and_give_back_whole_matrices():
    """Moments stores a module's E[x xᵀ] and an expert stack's as upper triangles (half the bytes) and
    gives back the symmetric matrices: whole, a few experts at a time, and a worker's share (part);
    of a matrix that is not exactly symmetric, its upper triangle."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 40, 24), dtype=np.float32)
    products = np.einsum("eti,etj->eij", x, x)
    stack = np.triu(products) + np.swapaxes(np.triu(products, 1), 1, 2)  # exactly symmetric
    module = stack[0] + np.triu(rng.standard_normal((24, 24), dtype=np.float32), 1) * 1e-6  # upper off by a hair
    with Moments() as moments:
        moments.put("attn.q_proj", module)
        moments.put_stack("mlp.experts.down_proj", 3, lambda e: stack[e])
        small, large = sorted(f.stat().st_size for f in moments.root.iterdir())  # 300 = 24 * 25 / 2 floats each
        assert large - small == 4 * 2 * 300 and 4 * 300 < small <= 4 * 300 + 256  # and a .npy header
        whole = np.triu(module) + np.triu(module, 1).T
        assert np.array_equal(np.asarray(moments["attn.q_proj"]), whole)
        assert np.array_equal(moments["attn.q_proj"][2:5], whole[2:5])
        down = moments["mlp.experts.down_proj"]
        assert down.shape == (3, 24, 24) and np.array_equal(np.asarray(down), stack)
        assert np.array_equal(down[1], stack[1]) and np.array_equal(down[1:], stack[1:])
        share = down.part(range(1, 3))
        assert share.shape == (2, 24, 24) and np.array_equal(share[1], stack[2]) and np.array_equal(share[:], stack[1:])
    assert not moments.root.exists()


# longer than the probe's 256 tokens: the probes' own states, and a small layer's probes in a thread of their own
PROBED_APART = mx.array(np.random.default_rng(1).integers(0, 256, (2, 260)).astype(np.int32))


def _every_statistic(src: Path, refused: str | None):
    """The pass over `src` with every statistic of every affine module, checked: (its statistics, their
    paths, the conversion); None where the pass is `refused` (a PlanError matching it)."""
    conversion = Conversion(src, Quant.make("affine", 4))
    paths = {r.path for r in conversion.plan.rows if r.quant is not None and r.quant.mode.value == "affine"
             and not r.as_stored}
    if refused:
        with pytest.raises(PlanError, match=refused):
            _stream(src, PROBED_APART, moments=paths)
        return None
    stats = _stream(src, PROBED_APART, energy=paths, moments=paths, sensitivity=paths)
    assert stats.moments and set(stats.moments) == set(stats.energy) <= paths
    assert stats.sensitivity and all(v >= 0 for v in stats.sensitivity.values())
    return stats, paths, conversion


@pytest.mark.parametrize("arch", sorted(ALL_ARCHS))
def test_every_architecture_takes_a_budget_and_calibrates_or_is_refused_in_one_line(tmp_path, arch):
    """Every tiny architecture (one test: each one's first Conversion imports its model code, seconds):
    * data-free --target-bpw: a module no candidate's groups divide (Jamba's dt_proj, 8 inputs wide)
      stays float as indivisible (it took the allocation down: min() of no candidates);
    * the calibration pass, every statistic at once: hybrid models whose forward reads its layers'
      attributes (is_linear, layer_type, …), layers that return more than hidden states (Gemma 4's,
      whose masks the probes' thread could not evaluate), expert stacks without up_proj
      (Nemotron-H's) took it down with a traceback; what it cannot carry is refused with a PlanError.
      The moments' estimate holds on each."""
    src = write_tiny_checkpoint(tmp_path / "src", arch, dtype="float32")
    # a budget every tiny one fits (kept modules as bfloat16, as a release's)
    plan = Conversion(src, Quant.make("affine", 4), target_bpw=6.5, dtype="bfloat16").plan
    assert abs(plan.bits_per_weight - 6.5) <= 0.5, plan.bits_per_weight
    groups = {q.group_size for q in CANDIDATES}
    for row in plan.rows:
        if row.rule == "indivisible":
            assert row.quant is None and not any(row.shape[-1] % g == 0 for g in groups), row
        elif row.rule == "target-bpw":
            assert row.shape[-1] % row.quant.group_size == 0, row
    if arch == "jamba":
        assert plan.by_path["model.layers.0.mamba.dt_proj"].rule == "indivisible"

    if (measured := _every_statistic(src, REFUSED.get(arch))) is None:
        return
    stats, paths, conversion = measured
    model = build_model(conversion.config)
    estimate = moments_bytes(model, paths, set(expert_containers(model).values()), PROBED_APART.size)
    files = _counted(stats.moments, paths)
    assert 0.95 * files < estimate <= 1.1 * files, (estimate, files)  # modules the forward never reaches: counted
    stats.moments.close()


@pytest.mark.parametrize("arch", sorted(VLM_ARCHS))
def test_the_pass_runs_on_every_vision_language_release_or_refuses_in_one_line(tmp_path, arch):
    """The releases whole (vision tower and all, for mlx-vlm): mlx-vlm's Qwen3-VL, Qwen3.5 and
    ERNIE 4.5 VL language models compute every layer's positions through layers[0].self_attn's
    rotary embedding, which a stand-in without the layer's modules lacked (AttributeError)."""
    src = write_tiny_checkpoint(tmp_path / "src", arch, dtype="float32", vision=True)
    if (measured := _every_statistic(src, REFUSED_VLM.get(arch))) is not None:
        measured[0].moments.close()


def test_sensitivity_is_estimated_for_every_module_in_a_bounded_number_of_layer_calls(tmp_path):
    """Each module's KL at the probe, from its layer's output error: every module gets one, the
    embedding and lm_head exactly, and lm_head made 8x more influential measures as more sensitive."""
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe", dtype="float32")
    wanted = {r.path for r in Conversion(src, Quant.make("affine", 4)).plan.rows if r.quant is not None}
    plain = _stream(src, TOKENS, sensitivity=wanted).sensitivity
    assert set(plain) == wanted and all(v > 0 for v in plain.values())
    [shard] = src.glob("*.safetensors")
    tensors = load_file(shard)
    tensors["lm_head.weight"] = tensors["lm_head.weight"] * 8
    save_file(tensors, shard, metadata={"format": "pt"})
    assert _stream(src, TOKENS, sensitivity={"lm_head"}).sensitivity["lm_head"] > 4 * plain["lm_head"]


@pytest.mark.parametrize("model_type", ["deepseek_v3", "mistral4"])
def test_mlas_per_head_projections_get_the_kl_of_their_own_probe(tmp_path, model_type):
    """MLA's embed_q / unembed_out (mlx-lm's MultiLinear, applied transposed to the latent in prefill):
    probed alone in its layer, a module's sensitivity is the KL of the model with its weight alone at
    PROBE, on the probe's tokens. The checkpoint and the reference are transformers': its own model,
    with the part of kv_b_proj that mlx-lm splits into that module (embed_q: each head's nope rows,
    quantized along them; unembed_out: its v rows, along kv_lora) quantized and dequantized by mlx."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers", minversion="5.0")
    from producer import TINY, TOKENS as IDS, _round_trip, model_class, write_produced

    src = tmp_path / "src"
    write_produced(src, model_type)
    model = model_class(model_type).from_pretrained(src, dtype=torch.float32).eval()
    ids = torch.from_numpy(IDS)
    nope, heads = TINY["qk_nope_head_dim"], model.config.num_attention_heads

    def log_probs() -> np.ndarray:
        with torch.inference_mode():
            return torch.log_softmax(model(ids, use_cache=False).logits.float(), -1).numpy()

    reference = log_probs()
    for layer, name in ((1, "embed_q"), (2, "unembed_out")):
        kv_b = model.model.layers[layer].self_attn.kv_b_proj.weight
        saved = kv_b.detach().clone()
        per_head = saved.view(heads, -1, saved.shape[-1]).clone()  # [heads, nope + v, kv_lora]
        for h in range(heads):
            if name == "embed_q":  # [nope, kv_lora], quantized along nope (embed_q's input)
                per_head[h, :nope] = _round_trip(per_head[h, :nope], PROBE.bits, PROBE.group_size, axis=0)
            else:  # [v, kv_lora], along kv_lora
                per_head[h, nope:] = _round_trip(per_head[h, nope:], PROBE.bits, PROBE.group_size, axis=1)
        with torch.no_grad():
            kv_b.copy_(per_head.reshape(saved.shape))
        expected = float((np.exp(reference) * (reference - log_probs())).sum() / IDS.size)
        with torch.no_grad():
            kv_b.copy_(saved)
        path = f"model.layers.{layer}.self_attn.{name}"
        measured = _stream(src, mx.array(IDS.astype(np.int32)), sensitivity={path}).sensitivity[path]
        assert expected > 0 and measured == pytest.approx(expected, rel=1e-3), (path, measured, expected)


def test_probes_take_what_their_module_leaves_unchanged_from_the_reference_call(tmp_path, monkeypatch):
    """A probe's call of its decoder layer takes the results of the stand-ins its module does not
    change (what comes before it; with an expert stack at the probe, the attention) from the
    layer's reference call: the same sensitivities, bitwise, as computing every one again, with
    fewer products and attentions computed."""
    from moequant import calibrate

    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe", dtype="float32")
    wanted = {r.path for r in Conversion(src, Quant.make("affine", 4)).plan.rows if r.quant is not None}
    computed = {"reusing": 0, "not": 0}

    class Counting(calibrate._Reuse):
        def __init__(self, reusing: bool):
            super().__init__()
            self.reusing = reusing

        def __call__(self, owner, inputs, compute):
            def counted():
                computed["reusing" if self.reusing else "not"] += 1
                return compute()
            return super().__call__(owner, inputs, counted) if self.reusing else counted()

    sensitivity = {}
    for reusing in (True, False):
        monkeypatch.setattr(calibrate, "_reuse", Counting(reusing))
        sensitivity[reusing] = _stream(src, TOKENS, sensitivity=wanted).sensitivity
    assert sensitivity[True] == sensitivity[False] and len(sensitivity[True]) == len(wanted)
    # taken per layer: q, k and v at the probe take the other two's products (2 each); o_proj q, k, v
    # and the attention (4); the expert stacks' gate and up all but their own and down_proj (7 each),
    # down_proj all but its own (8); the whole layer at the probe none
    layers = json.loads((src / "config.json").read_text())["num_hidden_layers"]
    assert computed["not"] - computed["reusing"] == 32 * layers, computed


@pytest.mark.parametrize("tied", [False, True])
def test_the_embedding_table_is_released_once_the_tokens_are_embedded(tmp_path, monkeypatch, tied):
    """With an lm_head of its own, the model's embedding table is released for the decoder layers
    (the tail's forward then embeds rows nothing reads); tied to the head, it is kept. Either way
    the statistics and sensitivities (the embedding's and lm_head's among them) are bitwise those
    of a pass that keeps it."""
    from moequant import calibrate

    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe", dtype="float32")
    if tied:
        config = json.loads((src / "config.json").read_text())
        (src / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
        weights = load_file(src / "model.safetensors")
        del weights["lm_head.weight"]
        save_file(weights, src / "model.safetensors")
    wanted = {r.path for r in Conversion(src, Quant.make("affine", 4)).plan.rows if r.quant is not None}
    assert "model.embed_tokens" in wanted and ("lm_head" in wanted) != tied
    released = []
    drop = calibrate._drop_embeddings

    def recorded(model, prefix):
        drop(model, prefix)
        released.extend(p for p, m in model.named_modules() if getattr(m, "_dropped", False))

    runs = {}
    for name, how in (("released", recorded), ("kept", lambda model, prefix: None)):
        monkeypatch.setattr(calibrate, "_drop_embeddings", how)
        runs[name] = _stream(src, TOKENS, energy=wanted, sensitivity=wanted)
    assert released == ([] if tied else ["model.embed_tokens"])
    assert runs["released"].sensitivity == runs["kept"].sensitivity and "model.embed_tokens" in runs["kept"].sensitivity
    assert all(np.array_equal(np.array(v), np.array(runs["kept"].energy[k])) for k, v in runs["released"].energy.items())


def test_sensitivity_is_measured_on_the_probes_tokens_alone(tmp_path, monkeypatch):
    """Output sensitivity is measured on PROBE_SEQUENCES x PROBE_LENGTH tokens of the first chunk,
    carried beside the chunks when they are fewer: the same (to float32 rounding of batched
    products) as a pass over those tokens alone, where they are the first chunk; the statistics
    are the whole batch's as ever."""
    from moequant import calibrate

    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe", dtype="float32")
    wanted = {r.path for r in Conversion(src, Quant.make("affine", 4)).plan.rows if r.quant is not None}
    plain = _stream(src, TOKENS, energy=wanted, sensitivity=wanted)
    monkeypatch.setattr(calibrate, "PROBE_SEQUENCES", 1)
    monkeypatch.setattr(calibrate, "PROBE_LENGTH", 20)
    probed = _stream(src, TOKENS, energy=wanted, sensitivity=wanted)
    alone = _stream(src, TOKENS[:1, :20], sensitivity=wanted)
    assert set(probed.sensitivity) == set(alone.sensitivity) == wanted
    assert probed.sensitivity == pytest.approx(alone.sensitivity, rel=1e-4)
    assert probed.sensitivity != pytest.approx(plain.sensitivity, rel=1e-2)  # other tokens: other figures
    for path in plain.energy:
        assert mx.array_equal(plain.energy[path], probed.energy[path]).item(), path


def test_sensitivity_carries_at_most_perturbed_layers_to_the_output_and_the_others_to_the_next(tmp_path, monkeypatch):
    """Past PERTURBED_LAYERS probed layers, only that many layers' perturbed states are carried to the
    output (the first, the last, others evenly between), the others' only to the next of them: the
    layer calls they cost are counted, the carried layers' modules keep the figures of the run that
    carries all, and another layer's modules are scaled together by one factor."""
    import mlx_lm.models.qwen3_moe as qwen3_moe

    import moequant.calibrate as calibrate

    deep = layers_repeated(write_tiny_checkpoint(tmp_path / "src", "qwen3_moe", dtype="float32"), tmp_path / "l6", 6)
    wanted = {r.path for r in Conversion(deep, Quant.make("affine", 4)).plan.rows
              if r.quant is not None and ".layers." in r.path}
    call = qwen3_moe.Qwen3MoeDecoderLayer.__call__
    runs = {}
    for most in (8, 3):
        calls = []
        monkeypatch.setattr(calibrate, "PERTURBED_LAYERS", most)
        monkeypatch.setattr(qwen3_moe.Qwen3MoeDecoderLayer, "__call__",
                            lambda self, *a, **k: (calls.append(1), call(self, *a, **k))[1])
        runs[most] = (_stream(deep, TOKENS, sensitivity=wanted).sensitivity, len(calls))
    (every, every_calls), (some, some_calls) = runs[8], runs[3]
    assert calibrate._carried(list(range(6))) == {0, 2, 5}
    # perturbed states: layer i takes a call for each state carried through it: all of them, 0+1+…+5 = 15; of
    # layers 0, 2, 5 (to the output) 1+1+2+2+2 = 8, and of layers 1, 3, 4 (to layers 2, 5, 5) 1 + 2 + 1
    assert every_calls - some_calls == 15 - (8 + 4)
    assert set(some) == set(every) == wanted and all(v > 0 for v in some.values())
    for layer in range(6):
        paths = [p for p in wanted if f".layers.{layer}." in p]
        ratios = [some[p] / every[p] for p in paths]
        assert len(paths) > 3 and ratios == pytest.approx([ratios[0]] * len(paths), rel=1e-5)
        if layer in (0, 2, 5):
            assert ratios[0] == pytest.approx(1, rel=1e-6)


@pytest.mark.parametrize("small", [True, False])
def test_probes_beside_one_another_give_the_figures_of_probes_one_after_the_other(tmp_path, monkeypatch, small):
    """With more cores than ASIDE + 1, a small layer's perturbed states are carried, and half of its
    modules probed, in threads of their own beside its other probes (each module at PROBE in its own
    thread only): the sensitivities are bitwise those of one thread's probes (on 1 core). A large
    layer's probes (see BESIDE_PROBES) stay one after the other (memory): the same figures, no such thread."""
    import threading

    import mlx_lm.models.qwen3_moe as qwen3_moe

    import moequant.calibrate as calibrate

    deep = layers_repeated(write_tiny_checkpoint(tmp_path / "src", "qwen3_moe", dtype="float32"), tmp_path / "l4", 4)
    wanted = {r.path for r in Conversion(deep, Quant.make("affine", 4)).plan.rows
              if r.quant is not None and ".layers." in r.path}
    if not small:
        monkeypatch.setattr(calibrate, "BESIDE_PROBES", 0)  # every layer large
    call = qwen3_moe.Qwen3MoeDecoderLayer.__call__
    runs = {}
    for cores in (1, 8):
        threads = []
        monkeypatch.setattr(calibrate.os, "sched_getaffinity", lambda pid, n=cores: set(range(n)))
        monkeypatch.setattr(qwen3_moe.Qwen3MoeDecoderLayer, "__call__",
                            lambda self, *a, **k: (threads.append(threading.current_thread().name),
                                                   call(self, *a, **k))[1])
        runs[cores] = (_stream(deep, TOKENS, sensitivity=wanted).sensitivity, threads)
    (alone, alone_threads), (aside, aside_threads) = runs[1], runs[8]
    assert set(alone) == wanted and all(v > 0 for v in alone.values())
    assert aside == alone
    assert len(aside_threads) == len(alone_threads)
    assert not any(t.startswith("moequant-aside") for t in alone_threads)
    beside = sum(t.startswith("moequant-aside") for t in aside_threads)
    assert beside >= 4 * 3 if small else beside == 0  # half of 7 probes a layer, + the carried states


def test_a_layer_not_carried_to_the_output_takes_the_kl_per_error_of_the_layer_its_states_reached():
    from moequant.calibrate import _layer_sensitivities

    # layers 0 and 3 carried to the output (their KL in kls); 1 and 2 carried to layer 3, where their
    # squared errors were 6 and 0.5; layer 3's KL per error is 2 / 4
    perturbed = {0: (2.0, {"a": 1.0}), 1: (1.0, {"b": 0.5, "b2": 0.25}), 2: (0.0, {"c": 0.0}), 3: (4.0, {"d": 3.0})}
    got = _layer_sensitivities({0: 8.0, 3: 2.0}, perturbed, {1: (3, 6.0), 2: (3, 0.5)})
    assert got == {"a": 8.0 * 1.0 / 2.0, "b": 0.5 * 6.0 * 0.5 / 1.0, "b2": 0.5 * 6.0 * 0.25 / 1.0, "c": 0.0,
                   "d": 2.0 * 3.0 / 4.0}


def test_peak_memory_does_not_grow_with_the_number_of_layers(tmp_path):
    """Peak memory of mlx and of numpy (tracemalloc: the products run there)."""
    import tracemalloc

    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe", dtype="float32")
    layer_bytes = sum(v.nbytes for k, v in load_file(next(src.glob("*.safetensors"))).items() if ".layers.1." in k)
    tokens = TOKENS[:2, :16]
    peaks = {}
    for layers in (2, 8):
        deep = layers_repeated(src, tmp_path / f"l{layers}", layers)
        wanted = {r.path for r in Conversion(deep, Quant.make("affine", 4)).plan.rows if r.quant is not None}
        mx.clear_cache()
        mx.reset_peak_memory()
        base = mx.get_active_memory()
        tracemalloc.start()
        try:
            stats = _stream(deep, tokens, energy=wanted, sensitivity=wanted)
            numpy_peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert len(stats.energy) > 4 * layers
        peaks[layers] = mx.get_peak_memory() - base + numpy_peak
        del stats
    assert peaks[8] - peaks[2] < layer_bytes, (peaks, layer_bytes)  # 6 more layers, not one more in memory


def _gptq_conversion_peak(src: Path, dst: Path, calib: Path) -> int:
    """Peak bytes of mlx and numpy (tracemalloc) memory above the start, of a `--calib --rounding
    gptq` conversion of `src` (its calibration pass, then its GPTQ) in this process, on one thread."""
    import tracemalloc

    conversion = Conversion(src, Quant.make("affine", 4), rounding="gptq", calib=str(calib), calib_sequences=2,
                            calib_length=32)
    mx.clear_cache()
    mx.reset_peak_memory()
    base = mx.get_active_memory()
    tracemalloc.start()
    try:
        for _ in conversion.run(dst, workers=1, pool="threads"):
            pass
        numpy_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return mx.get_peak_memory() - base + numpy_peak


def test_peak_memory_of_a_gptq_conversion_does_not_grow_with_the_number_of_layers(tmp_path):
    """With --rounding gptq, each layer's input moments go to files as the pass leaves the layer,
    and a worker reads one module's (an expert stack's gate/up: a few experts' at a time): memory
    holds about one layer's, whatever the number of layers (all of them, before: 6 more here)."""
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe", dtype="float32")
    calib = tmp_path / "ids.npy"
    np.save(calib, np.random.default_rng(1).integers(0, 256, 64))
    # one layer's moments, as [in, in] per Linear and per expert
    shapes = [v.shape for k, v in load_file(next(src.glob("*.safetensors"))).items()
              if ".layers.1." in k and k.endswith(("proj.weight", "mlp.gate.weight"))]
    layer_moments = sum(4 * s[-1] ** 2 * (s[0] if len(s) == 3 else 1) for s in shapes)
    peaks = {layers: _gptq_conversion_peak(layers_repeated(src, tmp_path / f"l{layers}", layers), tmp_path / f"q{layers}",
                                           calib) for layers in (2, 8)}
    assert peaks[8] - peaks[2] < 2 * layer_moments, (peaks, layer_moments)  # python objects grow a little


def test_hidden_states_kept_on_disk_give_the_same_statistics(tmp_path, monkeypatch):
    from moequant import calibrate

    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe", dtype="float32")
    paths = {r.path for r in Conversion(src, Quant.make("affine", 4)).plan.rows if r.quant is not None
             and r.role.value != "embedding"}
    in_memory = _stream(src, TOKENS, energy=paths, moments=paths, sensitivity=paths)
    monkeypatch.setattr(calibrate, "SPILL_SHARE", 0.0)  # any size is over the share: np.memmap on disk
    spilled = _stream(src, TOKENS, energy=paths, moments=paths, sensitivity=paths)
    for path in paths:
        assert mx.array_equal(in_memory.energy[path], spilled.energy[path]).item(), path
        assert np.array_equal(np.asarray(in_memory.moments[path]), np.asarray(spilled.moments[path])), path
    assert spilled.sensitivity == pytest.approx(in_memory.sensitivity, rel=1e-5)


def test_streamed_statistics_are_the_same_run_to_run(tmp_path, monkeypatch):
    """The pass spreads its products over a pool of threads: two passes over the same tokens give
    bitwise the same statistics, whichever thread ran which product, and whether a layer's
    statistics were taken while its probes ran (a small layer) or before them (a large one)."""
    from moequant import calibrate

    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe")
    paths = {r.path for r in Conversion(src, Quant.make("affine", 4)).plan.rows if r.quant is not None}
    first = _stream(src, TOKENS, energy=paths, moments=paths, sensitivity=paths)
    monkeypatch.setattr(calibrate, "BESIDE_PROBES", 0)  # every layer large
    second = _stream(src, TOKENS, energy=paths, moments=paths, sensitivity=paths)
    assert first.energy.keys() == second.energy.keys() and set(first.moments) == set(second.moments)
    assert len(first.moments) > 10 and len(first.sensitivity) > 10
    for path in first.energy:
        assert mx.array_equal(first.energy[path], second.energy[path]).item(), path
    for path in first.moments:
        assert np.array_equal(np.asarray(first.moments[path]), np.asarray(second.moments[path])), path
    assert first.sensitivity == second.sensitivity


@pytest.mark.parametrize("arch", ["qwen3_moe", "mixtral"])
def test_numpy_products_are_mlx_products(tmp_path, arch):
    """The pass runs the model's own code with its Linear, expert stack and embedding products in
    numpy (mlx's CPU BLAS is the reference one): a decoder layer, the whole model, and each with a
    module at the probe (the weight mx.quantize and mx.dequantize give) match mlx's to float32
    tolerance."""
    from moequant.calibrate import PROBE, _at_probe, _in_numpy, _InNumpy

    src = write_tiny_checkpoint(tmp_path / "src", arch, dtype="bfloat16")
    for _ in Conversion(src, dtype="float32").run(tmp_path / "float"):
        pass
    model = load_float32(tmp_path / "float")
    tokens = TOKENS[:2]
    layer = model.model.layers[1]
    x = mx.random.normal((2, 48, model.args.hidden_size), key=mx.random.key(0))
    stack = next(p for p, m in layer.named_modules() if p.endswith("_proj") and m.weight.ndim == 3)

    def probed(module):  # mlx's own: the weight quantized at the probe, dequantized
        return mx.dequantize(*mx.quantize(module.weight, PROBE.group_size, PROBE.bits), PROBE.group_size, PROBE.bits)

    expected = {"layer": layer(x, mask="causal"), "model": model(tokens)}
    for path, root in ((stack, layer), ("lm_head", model), ("model.embed_tokens", model)):
        module = module_at(root, path)
        weight, module.weight = module.weight, probed(module)
        expected[path] = layer(x, mask="causal") if root is layer else model(tokens)
        module.weight = weight
    with _in_numpy(model):
        assert all(isinstance(module_at(model, p), _InNumpy) for p in ("lm_head", "model.embed_tokens"))
        assert isinstance(module_at(layer, stack), _InNumpy)
        got = {"layer": layer(x, mask="causal"), "model": model(tokens)}
        for path, root in ((stack, layer), ("lm_head", model), ("model.embed_tokens", model)):
            with _at_probe(module_at(root, path)):
                got[path] = layer(x, mask="causal") if root is layer else model(tokens)
    for key, value in expected.items():
        assert got[key].shape == value.shape
        scale = mx.abs(value).max().item()
        assert mx.abs(got[key] - value).max().item() < 1e-4 * scale, key
    assert not mx.allclose(expected["lm_head"], expected["model"]).item()  # the probe changes something


@pytest.mark.parametrize("heads, kv_heads, length, keys, mask", [
    (4, 4, 16, 16, None), (8, 2, 16, 16, "causal"), (8, 2, 5, 16, "causal"), (4, 1, 12, 12, "bool"),
    (4, 2, 12, 12, "additive")])
@pytest.mark.parametrize("block", [128, 4, 3])
def test_attention_in_numpy_is_mlx_attention(heads, kv_heads, length, keys, mask, block, monkeypatch):
    """The pass's attention (numpy's products, one sequence and key/value head at a time; with a
    causal mask, `block` queries at a time with the keys they see) gives mlx's
    mx.fast.scaled_dot_product_attention, grouped heads, a causal mask over more keys than queries,
    and boolean and additive masks included; mlx's own is back after the block."""
    from moequant import calibrate
    from moequant.calibrate import _attention_in_numpy

    monkeypatch.setattr(calibrate, "CAUSAL_BLOCK", block)

    rng = np.random.default_rng(0)
    q, k, v = (mx.array(rng.standard_normal(s, dtype=np.float32)) for s in
               ((2, heads, length, 32), (2, kv_heads, keys, 32), (2, kv_heads, keys, 24)))
    if mask == "bool":
        mask = mx.array(rng.random((2, 1, length, keys)) > 0.3) | mx.eye(length, keys, dtype=mx.bool_)
    elif mask == "additive":
        mask = mx.array(rng.standard_normal((1, heads, length, keys), dtype=np.float32))
    own = mx.fast.scaled_dot_product_attention
    expected = own(q, k, v, scale=0.2, mask=mask)
    with _attention_in_numpy():
        assert mx.fast.scaled_dot_product_attention is not own
        got = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.2, mask=mask)
    assert mx.fast.scaled_dot_product_attention is own
    assert got.shape == expected.shape and mx.abs(got - expected).max().item() < 1e-5
