"""--calib input means something for the model: text through the checkpoint's own tokenizer."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from moequant.calibrate import read_calibration
from moequant.errors import CheckpointError
from moequant.tiny import write_tiny_checkpoint

TEXT = "def add(a, b):\n    return a + b\n\nclass Point:\n    x: int\n    y: int\n" * 40


def _bpe_checkpoint(tmp_path, chat_template: str | None = None):
    """A tiny checkpoint whose tokenizer is a real BPE one, trained here by `tokenizers` (vocab 200,
    under the model's 256): its ids are not bytes."""
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "</s>"]))
    tok.save(str(src / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "</s>", "unk_token": "<unk>"}
    if chat_template:
        config["chat_template"] = chat_template
    (src / "tokenizer_config.json").write_text(json.dumps(config))
    return src, tok


def test_text_is_tokenized_by_the_checkpoints_own_bpe_tokenizer(tmp_path):
    src, tok = _bpe_checkpoint(tmp_path)
    calib = tmp_path / "calib.txt"
    calib.write_text(TEXT)
    ids = tok.encode(TEXT).ids
    assert len(ids) < len(TEXT.encode()) / 2  # merges: far fewer tokens than bytes
    batch = read_calibration(calib, src, length=64, sequences=4, vocab_size=256)
    starts = np.linspace(0, len(ids) - 64, 4).astype(int)
    assert np.array(batch).tolist() == [ids[s:s + 64] for s in starts]


def test_jsonl_text_and_chat_messages(tmp_path):
    template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
    src, tok = _bpe_checkpoint(tmp_path, template)
    calib = tmp_path / "calib.jsonl"
    records = [{"text": TEXT[:500]}, {"messages": [{"role": "user", "content": TEXT[:300]},
                                                   {"role": "assistant", "content": TEXT[300:600]}]}]
    calib.write_text("\n".join(json.dumps(r) for r in records * 3))
    expected = []
    for r in records * 3:
        text = r.get("text") or "".join(f"<{m['role']}>{m['content']}" for m in r["messages"])
        expected += tok.encode(text).ids
    batch = read_calibration(calib, src, length=32, sequences=1, vocab_size=256)
    assert np.array(batch).tolist() == [expected[:32]]


@pytest.mark.parametrize("content, found", [
    (b"\xff\xfe not utf-8", "not UTF-8 text (byte 0)"),
])
def test_text_that_is_not_text_is_one_line(tmp_path, content, found):
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe")
    calib = tmp_path / "calib.txt"
    calib.write_bytes(content)
    with pytest.raises(CheckpointError, match="^" + re.escape(f"--calib {calib}: {found}")):
        read_calibration(calib, src)


@pytest.mark.parametrize("lines, found", [
    (["{not json"], "line 1 is not JSON"),
    (['{"prompt": "x"}'], "line 1 has neither a text string nor a messages list"),
    (['{"messages": [{"role": "user", "content": "x"}]}'], "line 1 has chat messages and SRC's tokenizer has no "
                                                            "chat template"),
])
def test_bad_jsonl_is_one_line(tmp_path, lines, found):
    src, _ = _bpe_checkpoint(tmp_path)
    calib = tmp_path / "calib.jsonl"
    calib.write_text("\n".join(lines))
    with pytest.raises(CheckpointError, match="^" + re.escape(f"--calib {calib}: {found}")):
        read_calibration(calib, src)


def test_text_without_a_tokenizer_is_refused(tmp_path):
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe")
    for f in src.glob("tokenizer*"):
        f.unlink()
    calib = tmp_path / "calib.txt"
    calib.write_text(TEXT)
    with pytest.raises(CheckpointError, match="has no tokenizer mlx-lm can load"):
        read_calibration(calib, src)


def test_sequences_and_length_are_options_recorded_in_the_plan(tmp_path, cli):
    src = write_tiny_checkpoint(tmp_path / "src", "qwen3_moe")
    calib = tmp_path / "calib.txt"
    calib.write_text(TEXT)
    result = cli("convert", src, tmp_path / "dst", "--target-bpw", "4", "--calib", calib, "--calib-sequences", "3",
                 "--calib-length", "128", "--quiet")
    assert result.exit_code == 0, result.output
    options = json.loads((tmp_path / "dst" / "moequant_plan.json").read_text())["options"]
    assert (options["calib_sequences"], options["calib_length"]) == (3, 128)
    refused = cli("convert", src, tmp_path / "dst2", "--calib-length", "128")
    assert refused.exit_code == 1 and "--calib-length 128: only used with --calib" in refused.output
