"""Convert a checkpoint with the Python API, then load it with mlx-lm and compare with float.

    python examples/convert_and_check.py            # a tiny random Mixtral, in a temp folder
    python examples/convert_and_check.py SRC DST    # your own checkpoint
"""

import sys
import tempfile
from pathlib import Path

from moequant.convert import Conversion
from moequant.evaluate import compare_logits, fixed_tokens, load_float32
from moequant.plan import Quant
from moequant.tiny import write_tiny_checkpoint

with tempfile.TemporaryDirectory() as tmp:
    src = sys.argv[1] if len(sys.argv) > 1 else write_tiny_checkpoint(Path(tmp) / "src", "mixtral")
    dst = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(tmp) / "dst"
    conversion = Conversion(src, Quant.make("affine", bits=4, group_size=64), gate_bits=8)
    for row in conversion.plan.rows:
        if row.role.value.endswith("gate"):
            print(f"{row.path}: {row.action} ({row.rule}: {row.reason})")
    for step in conversion.run(dst):
        print(f"  {step.group} ({step.index}/{step.total})")
    print(f"{dst}: {conversion.plan.bits_per_weight:.2f} bits/weight")
    reference = Path(tmp) / "float"
    list(Conversion(src).run(reference))
    tokens = fixed_tokens(conversion.config["vocab_size"])
    print("vs float:", compare_logits(load_float32(reference)(tokens), load_float32(dst)(tokens)))
