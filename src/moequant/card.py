"""DST's model card (README.md), as mlx-lm's `create_model_card` writes one through huggingface_hub's
ModelCard: front matter a hub page reads (base_model, library_name, pipeline_tag, tags, license),
then what moequant did — the command, the size, a per-role summary of the plan, its notes and,
when measured, `verify`'s figures. Built and parsed offline."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from . import __version__
from .errors import OutputError
from .formats import Mode
from .plan import Plan
from .registry import PIPELINE_TAG, TEXT_BY_MLX_VLM

log = logging.getLogger(__name__)

CARD_FILE = "README.md"
PLAN_FILE = "moequant_plan.json"
PLOT_FILE = "moequant_plan.png"  # the plan's picture (convert --plot), embedded in the card when made
PIPELINE_TAGS = {"mlx-lm": "text-generation", "mlx-vlm": "image-text-to-text"}
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def source_card(folder: Path) -> dict:
    """The front matter of SRC's README.md (empty without one, or when it does not parse)."""
    file = Path(folder) / CARD_FILE
    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError):
        return {}
    if not text.startswith("---"):
        return {}
    from huggingface_hub import ModelCard

    try:
        return ModelCard(text, ignore_metadata_errors=True).data.to_dict()
    except Exception as e:  # a malformed card is SRC's problem, not a reason to fail the conversion
        log.debug("%s: front matter not read (%s)", file, e)
        return {}


def quant_tags(plan: Plan) -> list[str]:
    """`4-bit` for affine, the mode's name otherwise (mxfp4, nvfp4, mxfp8); none for --no-quantize."""
    q = plan.options.quant
    if q is None:
        return []
    return [f"{q.bits}-bit" if q.mode == Mode.AFFINE else q.mode.value]


def short_size(n: float) -> str:
    """Bytes for a table or summary line: '206.34 KB'."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return ""


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def role_rows(plan: Plan) -> list[tuple[str, ...]]:
    """(role, modules, parameters, decisions, bits/weight, size) per role, as `inspect` sums them."""
    rows = []
    for role, members in plan.by_role().items():
        params, after = sum(r.params for r in members), sum(r.bytes_after for r in members)
        decisions = ", ".join(sorted({f"{r.action} ({r.rule})" for r in members}))
        rows.append((role.value, str(len(members)), f"{params:,}", decisions, f"{8 * after / max(params, 1):.2f}",
                     short_size(after)))
    return rows


def quality_lines(quality: dict) -> list[str]:
    """`verify`'s figures (Report.to_dict plus the reference and any thresholds) as a markdown table."""
    c = quality["closeness"]
    rows = [("top-1 agreement", f"{c['top1']:.4f}"), ("KL (nats/token)", f"{c['kl']:.5f}"),
            ("logit cosine", f"{c['cosine']:.5f}"), ("relative RMS error", f"{c['rel_rms']:.4f}")]
    if quality.get("min_router_agreement") is not None:
        rows += [("router top-k agreement, lowest layer", f"{quality['min_router_agreement']:.4f}"),
                 ("router top-k agreement, mean", f"{quality['mean_router_agreement']:.4f}")]
    lines = ["## Quality", "",
             f"`moequant verify` ran the same {quality['tokens']} tokens through this model and through "
             f"{quality.get('reference', 'the source')} (float), both with mlx-lm:", "",
             "| measure | value |", "| --- | ---: |", *(f"| {a} | {b} |" for a, b in rows)]
    if quality.get("failed"):
        lines += ["", "Below the bar asked for: " + "; ".join(quality["failed"]) + "."]
    return lines


def model_card(plan: Plan, *, src: str, src_folder: Path, runner: str, command: str | None = None,
               name: str | None = None, quality: dict | None = None, picture: str | None = None) -> str:
    """README.md for DST. `src` is SRC as given (a hub id becomes base_model), `src_folder` where
    it was read (its README's front matter gives base_model and license otherwise), `quality` the
    figures of `verify` (with "reference" and "failed" added), if measured; `picture` the plan's
    picture in DST (PLOT_FILE), if one was made."""
    from huggingface_hub import ModelCardData

    theirs = source_card(src_folder)
    local = Path(src).expanduser().exists()
    base_model = src if not local and _HUB_ID.match(src) else theirs.get("base_model")
    # a text model that mlx-vlm runs (no vision part) generates text from text
    tag = PIPELINE_TAG.get(plan.model_type) or (
        "text-generation" if plan.model_type in TEXT_BY_MLX_VLM else PIPELINE_TAGS.get(runner, "text-generation"))
    data = ModelCardData(
        base_model=base_model or None, library_name="mlx", pipeline_tag=tag,
        tags=["mlx", "moequant", *quant_tags(plan), "moe"], license=theirs.get("license") or None)
    title = name or (base_model.split("/")[-1] if isinstance(base_model, str) else plan.model_type)
    where = name or "PATH"  # mlx-lm's load takes the folder (or, once uploaded, the repo id)
    origin = f"[{base_model}](https://huggingface.co/{base_model})" if isinstance(base_model, str) else f"`{src}`"
    loader = "mlx_vlm" if runner == "mlx-vlm" else "mlx_lm"
    lines = [
        f"# {title}", "",
        f"{plan.model_type} converted to MLX from {origin} with moequant "
        f"{__version__}" + (":" if command else "."), "",
        *([f"```bash\n{command}\n```", ""] if command else []),
        f"- {plan.bits_per_weight:.2f} bits/weight, {short_size(plan.bytes_after)} (from {short_size(plan.bytes_before)}), "
        f"{plan.params:,} parameters",
        f"- for {runner}; the whole plan, one row per module, is in `{PLAN_FILE}` "
        f"(`moequant convert SRC DST --plan {PLAN_FILE}` reproduces these weights)", "",
        "## Use", "",
        f"```bash\npip install {runner}\n```", "",
        f"```python\nfrom {loader} import load, generate\n\nmodel, {'processor' if loader == 'mlx_vlm' else 'tokenizer'}"
        f" = load(\"{where}\")\n```", "",
        "## The plan", "",
        *([f"![bits per weight by layer and role, and bytes by role]({picture})", ""] if picture else []),
        "| role | modules | parameters | decisions | bits/weight | size |",
        "| --- | ---: | ---: | --- | ---: | ---: |",
        *("| " + " | ".join(map(_cell, row)) + " |" for row in role_rows(plan)), "",
    ]
    if plan.notes:
        lines += ["## Notes", "", *(f"- {_cell(n)}" for n in plan.notes), ""]
    if quality is not None:
        lines += [*quality_lines(quality), ""]
    return f"---\n{data.to_yaml()}\n---\n" + "\n".join(lines)


def check_card(folder: Path) -> dict:
    """DST's card parsed as the hub parses it: its front matter, or an OutputError naming what is wrong."""
    from huggingface_hub import ModelCard

    file = Path(folder) / CARD_FILE
    if not file.is_file():
        raise OutputError(f"{file}: not found; expected the model card moequant writes into every output")
    text = file.read_text()
    if not text.startswith("---"):
        raise OutputError(f"{file}: no front matter; expected a card starting with '---' metadata")
    try:
        return ModelCard(text).data.to_dict()
    except Exception as e:
        raise OutputError(f"{file}: front matter does not parse ({str(e).splitlines()[0]}); expected YAML "
                         "metadata") from None
