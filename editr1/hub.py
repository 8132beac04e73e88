"""Resolve a model reference (local folder or hub id) to a local folder."""

from __future__ import annotations

from pathlib import Path

from editr1.config import PACKAGE_PREFIX, package_path
from editr1.errors import EditR1Error


def resolve_model_path(path_or_id: str | Path) -> Path:
    """A local model folder as is (`editr1:<path>`: one shipped in the package, as configs name it); a hub id
    through the local hub cache or a download."""
    if isinstance(path_or_id, str) and path_or_id.startswith(PACKAGE_PREFIX):
        shipped = package_path(path_or_id[len(PACKAGE_PREFIX):])
        if not shipped.is_dir():
            raise EditR1Error(f"{path_or_id}: no such model folder in the editr1 package ({shipped})")
        return shipped
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise EditR1Error(f"{path}: is a file; expected a model folder")
    text = str(path_or_id)
    if text.count("/") != 1 or text.startswith((".", "/", "~")):
        raise EditR1Error(f"{text}: no such model folder, and not a hub id of the form 'org/name'")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=text))
    except Exception as error:  # the hub client raises many types; all mean "not available here"
        raise EditR1Error(f"{text}: not a local folder and could not be fetched from the hub ({error})") from error
