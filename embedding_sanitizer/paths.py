"""Where the project's files are found."""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def default_data_dir() -> Path:
    """<repo>/../shared/data: the development copies of public prompt sets (absent on a user's
    machine; whatever reads it skips with a printed reason)."""
    return PACKAGE_DIR.parents[1] / "shared" / "data"
