"""One exception type per stage. The CLI prints any MoequantError as one line and exits 1.

Messages follow `<file | tensor key | config key | option>: <what was found>; expected <what>`.
"""


class MoequantError(Exception):
    """Bad input or a failed check: the message is the whole story, no traceback needed."""


class CheckpointError(MoequantError):
    """SRC cannot be read: missing files, broken shards, unknown model_type, bad config."""


class LayoutError(MoequantError):
    """Tensors do not fit the target model class: missing experts, wrong shapes, unknown names."""


class PlanError(MoequantError):
    """Options or a plan file that cannot be applied to this checkpoint."""


class OutputError(MoequantError):
    """DST cannot be written, or what was written does not match the plan."""
