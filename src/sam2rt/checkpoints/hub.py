"""SAM 3's files from the Hugging Face hub: the official checkpoint and the text tokenizer's vocabulary.

`facebook/sam3` is gated: a user accepts Meta's licence on the repository's page with a Hugging Face account,
then downloads with that account's token (`hf auth login`, or $HF_TOKEN). Every way this can fail (no
token, licence not accepted or not yet approved, offline with nothing cached, the library missing) becomes one
`CheckpointError` that says what to do. The files live in the hub's own cache ($HF_HOME), shared with other
tools.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .files import CheckpointError

SAM3_REPO = "facebook/sam3"
SAM3_PAGE = f"https://huggingface.co/{SAM3_REPO}"
SAM3_CHECKPOINT = "sam3.pt"
TOKENIZER_FILES = ("vocab.json", "merges.txt")  # CLIP's BPE, as the repository publishes it for transformers

_LOG_IN = "log in with `hf auth login` (or set HF_TOKEN to a token of your account)"


def _hub():
    try:
        import huggingface_hub
    except ImportError:
        raise CheckpointError(
            "SAM 3's weights come from the Hugging Face hub, which needs huggingface_hub: pip install 'sam2rt[sam3]'"
        ) from None
    return huggingface_hub


def _gated_message(status: Optional[int], token_given: bool) -> str:
    if status == 403 or (status is None and token_given):
        return (
            f"your Hugging Face account has no access to {SAM3_REPO} yet: accept Meta's licence on {SAM3_PAGE} "
            "(the request can take a while to be approved), then run again"
        )
    return (
        f"{SAM3_REPO} is gated: accept Meta's licence on {SAM3_PAGE} with your Hugging Face account, "
        f"then {_LOG_IN} and run again"
    )


def fetch(filename: str, token: Optional[str] = None, local_only: bool = False) -> Path:
    """One file of facebook/sam3: from the hub's cache, else downloaded (unless `local_only`)."""
    hub = _hub()
    from huggingface_hub import errors

    try:
        return Path(hub.hf_hub_download(SAM3_REPO, filename, token=token, local_files_only=local_only))
    except errors.GatedRepoError as error:
        status = error.response.status_code if getattr(error, "response", None) is not None else None
        raise CheckpointError(f"cannot download {filename}: {_gated_message(status, token is not None)}") from None
    except errors.LocalEntryNotFoundError:
        how = "nothing may be downloaded (offline)" if local_only else "the hub could not be reached"
        raise CheckpointError(
            f"SAM 3's {filename} is not in the Hugging Face cache and {how}. On a machine online: accept the licence "
            f"on {SAM3_PAGE}, {_LOG_IN}, and run again (or `hf download {SAM3_REPO} {filename}`); "
            "or pass the checkpoint with --checkpoint"
        ) from None
    except errors.RepositoryNotFoundError:
        # The hub answers 401 for a gated repository when no token is sent, which the library may read as absent.
        raise CheckpointError(f"cannot download {filename}: {_gated_message(401, token is not None)}") from None
    except (errors.HfHubHTTPError, OSError) as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"cannot download {filename} from {SAM3_REPO}: {detail}") from None
