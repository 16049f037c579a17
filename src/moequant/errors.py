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


# What an OSError's errno means to a user, in the words of the one-line messages.
OS_REASONS = {
    "ENOSPC": "no space left on device", "EDQUOT": "disk quota exceeded", "EROFS": "read-only file system",
    "EACCES": "permission denied", "EPERM": "operation not permitted", "ENOENT": "not found",
    "ENOTDIR": "a part of the path is a file, not a folder", "EISDIR": "is a folder", "EEXIST": "already exists",
    "ENOTEMPTY": "is a folder that is not empty", "EXDEV": "on another file system", "EIO": "input/output error",
}


def os_reason(e: OSError) -> str:
    """`e` as the 'what was found' part of a message: 'read-only file system', not '[Errno 30] …'."""
    import errno

    return OS_REASONS.get(errno.errorcode.get(e.errno or 0, ""), e.strerror or str(e) or type(e).__name__)


def size_text(n: int) -> str:
    """Bytes for a message: '5.37 GB (5,368,709,120 bytes)'."""
    value, unit = float(n), "bytes"
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            break
        value /= 1000
    return f"{n:,} bytes" if unit == "bytes" else f"{value:.2f} {unit} ({n:,} bytes)"
