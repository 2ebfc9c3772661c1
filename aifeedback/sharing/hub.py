"""Upload a finished output folder to the Hugging Face hub (`--push-to-hub REPO` of `aif export` and `aif score`).

Uses huggingface_hub's HfApi (create_repo + upload_folder); the token is the usual one (`hf auth login` or
HF_TOKEN). Checked before the work starts: the repo id's format (`repo_id_problem`, in the stage's `validate()`),
then a token, the hub reachable with it, the token allowed to write and the repo's namespace one of its account's
(`check_hub_access`, in the stage's `preflight()`), so a typo or a missing login never waits for the export to
finish. Called only after the output is complete, so a failed upload never leaves a half-written folder; any
refusal is one line (AifError).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from aifeedback.errors import AifError

# Left on the machine: temporaries of a publish in progress and lock files (never part of a complete output).
IGNORE = [".*.tmp", "**/.*.tmp", ".*.lock", "**/.*.lock"]
LOGIN = "log in with `hf auth login` (or set HF_TOKEN) using a token with write access"


def repo_id_problem(repo_id: str) -> Optional[str]:
    """The `validate()` problem of a --push-to-hub value that is no hub repo id (user/name), or None."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        return (f"push_to_hub: {repo_id[:200]!r} is not a hub repo id ({str(e)[:300]}); pass user/name, e.g. "
                "me/my-dpo-lora")
    return None


def _hub_errors() -> tuple[type[BaseException], ...]:
    """What a hub call raises when the network or the hub fails: OSError (requests' errors, offline mode) and the
    HTTP library's own error base, whichever huggingface_hub builds HfHubHTTPError on (requests or httpx)."""
    from huggingface_hub.errors import HfHubHTTPError

    return (OSError, *(c for c in HfHubHTTPError.__mro__ if c not in (Exception, BaseException, object)))


def check_hub_access(repo_id: str) -> None:
    """Before the work: a token, the hub reachable with it, write access, and repo_id's namespace its account's."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    token = get_token()
    if not token:
        raise AifError(f"--push-to-hub {repo_id}: no hub token on this machine; {LOGIN}, then rerun (nothing was "
                       "written yet)")
    try:
        who = HfApi().whoami(token=token)
    except HfHubHTTPError as e:
        raise AifError(f"--push-to-hub {repo_id}: the hub did not accept the login check ({_short(e)}); on 401/403 "
                       f"{LOGIN}, otherwise retry later; nothing was written yet") from None
    except _hub_errors() as e:
        raise AifError(f"--push-to-hub {repo_id}: could not reach the hub ({_short(e)}); check the network (and "
                       "HF_ENDPOINT, HF_HUB_OFFLINE), or drop --push-to-hub and upload later with a rerun that "
                       "passes it") from None
    if ((who.get("auth") or {}).get("accessToken") or {}).get("role") == "read":
        raise AifError(f"--push-to-hub {repo_id}: the token of {who.get('name')} is read-only; {LOGIN}")
    names = {who.get("name")} | {o.get("name") for o in who.get("orgs") or []}
    namespace = repo_id.split("/")[0] if "/" in repo_id else who.get("name")
    if who.get("name") and namespace not in names:
        raise AifError(f"--push-to-hub {repo_id}: the logged-in account {who.get('name')} cannot write to "
                       f"{namespace!r} (its namespaces: {', '.join(sorted(n for n in names if n))}); pass "
                       f"{who.get('name')}/{repo_id.split('/')[-1]}, or log in as a member of {namespace}")


def push_folder(folder: str | Path, repo_id: str, repo_type: str, private: bool = True) -> str:
    """Create (or reuse) the hub repo and upload the folder; returns the repo's URL."""
    from huggingface_hub import HfApi

    if repo_type not in ("model", "dataset"):
        raise ValueError(f"repo_type must be model or dataset, got {repo_type!r}")
    api = HfApi()
    try:
        url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, repo_type=repo_type, folder_path=str(folder),
                          commit_message="Upload from aifeedback", ignore_patterns=IGNORE)
    except _hub_errors() as e:
        raise AifError(f"--push-to-hub {repo_id}: the upload failed ({_short(e)}). The output in {folder} is "
                       f"complete; {LOGIN}, check the network, and rerun the command to upload it (`aif export` with "
                       "--overwrite)") from None
    return str(url)


def _short(e: BaseException) -> str:
    """An exception as one short line (HTTP errors carry the server's multi-line answer)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."
