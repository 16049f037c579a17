"""Upload a finished output to the Hugging Face hub (huggingface_hub's `upload_folder`), after
checking what can be checked without the network: DST is a moequant output, its model card parses,
the hub is reachable in principle (not offline mode) and a token is there. Every refusal is one
line naming what is missing."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from .card import check_card
from .errors import OutputError

log = logging.getLogger(__name__)

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
# exception type names that mean "the hub could not be reached" (requests, httpx and huggingface_hub's own)
_UNREACHABLE = ("ConnectionError", "ConnectError", "ConnectTimeout", "ReadTimeout", "TimeoutException",
                "NetworkError", "OfflineModeIsEnabled", "ProxyError", "SSLError")


def offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, now or when huggingface_hub was imported."""
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or any(
        os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE") for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def check_can_upload(repo_id: str) -> None:
    """What can be refused before any work: a repo id that is not ORG/NAME, offline mode, no token."""
    if not _REPO_ID.match(repo_id):
        raise OutputError(f"{repo_id}: not a hub repo id; expected ORG/NAME, like my-org/Qwen3-30B-A3B-4bit")
    if offline():
        raise OutputError(f"{repo_id}: HF_HUB_OFFLINE is set (offline mode); expected access to the hub to upload "
                          "(unset HF_HUB_OFFLINE)")
    from huggingface_hub import get_token

    if not get_token():
        raise OutputError(f"{repo_id}: not logged in to the Hugging Face hub (no token); expected `hf auth login` "
                          "or HF_TOKEN")


def check_uploadable(dst: Path) -> dict:
    """DST is a finished moequant output with a model card the hub parses; returns the card's metadata."""
    from .writer import MARK_FILE, _marked_files

    dst = Path(dst)
    if not dst.is_dir():
        raise OutputError(f"{dst}: {'a file' if dst.exists() else 'not found'}; expected a moequant output folder")
    if _marked_files(dst) is None:
        raise OutputError(f"{dst}: no {MARK_FILE}; expected a moequant output (moequant uploads only what it wrote)")
    return check_card(dst)


def upload(dst: Path, repo_id: str, private: bool = False) -> str:
    """Upload DST as the model repo `repo_id` (created if missing; `private` for a new one); returns its URL."""
    check_uploadable(dst)
    check_can_upload(repo_id)
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=repo_id, folder_path=str(dst), repo_type="model",
                          commit_message=f"Upload {Path(dst).name} (written by moequant)")
    except Exception as e:  # huggingface_hub and its HTTP client raise many types: each becomes one line
        kind = type(e).__name__
        status = getattr(getattr(e, "response", None), "status_code", None)
        if kind in _UNREACHABLE or any(t.__name__ in _UNREACHABLE for t in type(e).__mro__):
            raise OutputError(f"{repo_id}: cannot reach the Hugging Face hub ({kind}); expected a network "
                              "connection to upload") from None
        if status in (401, 403):
            raise OutputError(f"{repo_id}: the hub refused the token (HTTP {status}); expected a token with write "
                              "access to the repo (`hf auth login`)") from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else kind
        raise OutputError(f"{repo_id}: upload failed ({kind}: {first}); expected the hub to take the folder") from None
    log.debug("uploaded %s to %s", dst, url)
    return str(url)
