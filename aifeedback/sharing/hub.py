"""Upload a finished output folder to the Hugging Face hub (`--push-to-hub REPO` of `aif export` and `aif score`).

Uses huggingface_hub's HfApi (create_repo + upload_folder); the token is the usual one (`hf auth login` or
HF_TOKEN). Called only after the output is complete, so a failed upload never leaves a half-written folder.
"""

from __future__ import annotations

from pathlib import Path

from aifeedback.errors import AifError

# Left on the machine: temporaries of a publish in progress and lock files (never part of a complete output).
IGNORE = [".*.tmp", "**/.*.tmp", ".*.lock", "**/.*.lock"]


def push_folder(folder: str | Path, repo_id: str, repo_type: str, private: bool = True) -> str:
    """Create (or reuse) the hub repo and upload the folder; returns the repo's URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    if repo_type not in ("model", "dataset"):
        raise ValueError(f"repo_type must be model or dataset, got {repo_type!r}")
    api = HfApi()
    try:
        url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, repo_type=repo_type, folder_path=str(folder),
                          commit_message="Upload from aifeedback", ignore_patterns=IGNORE)
    except HfHubHTTPError as e:
        raise AifError(f"--push-to-hub {repo_id}: the hub refused the upload ({e}). The output in {folder} is "
                       "complete; log in with `hf auth login` (a token with write access) and rerun.") from None
    return str(url)
