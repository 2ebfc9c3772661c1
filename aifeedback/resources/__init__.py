"""Files shipped with the package (PartiPrompts, the LAION aesthetic head); see README.md here for sources."""

from pathlib import Path


def resource_path(name: str) -> Path:
    """Path of a shipped file, e.g. resource_path("PartiPrompts.tsv")."""
    return Path(__file__).resolve().parent / name
