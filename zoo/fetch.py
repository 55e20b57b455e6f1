"""Where weights come from: the files bundled with the package (verified against the registry's sha256) and
the Hugging Face Hub (`hf-hub:ORG/REPO[@REVISION]`, timm's convention).

Downloads go through `huggingface_hub` into its standard cache (HF_HOME / HF_HUB_CACHE), pinned to the
revision when one is given; a pinned commit already in the cache is served with no request at all, a
branch with one freshness check (HEAD). `HF_HUB_OFFLINE=1` works from the cache. A file whose sha256
differs from the one the registry knows is refused and removed from the cache. Publishing is `zoo.hub`."""

from __future__ import annotations

import os

from . import registry
from .checkpoint import CheckpointError, sha256_file

PREFIX = "hf-hub:"
CHECKPOINT_FILE = "model.safetensors"


def parse_hub_name(name: str) -> tuple[str, str | None]:
    """`hf-hub:org/repo@rev` -> ("org/repo", "rev"); also accepts the old `hf_hub:` spelling."""
    original = name
    for prefix in (PREFIX, "hf_hub:"):
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    repo_id, _, revision = name.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"{original}: expected {PREFIX}ORG/REPO[@REVISION]")
    return repo_id, revision or None


def _evict(path: str) -> None:
    """Remove a downloaded file from the cache: the snapshot pointer and the blob it points to."""
    real = os.path.realpath(path)
    for p in {path, real}:
        try:
            os.remove(p)
        except FileNotFoundError:
            pass


def download(repo_id: str, revision: str | None = None, filename: str = CHECKPOINT_FILE, sha256: str | None = None) -> str:
    """Local path of `filename` from the Hub repo (cached); verified against `sha256` when given."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    where = f"{PREFIX}{repo_id}" + (f"@{revision}" if revision else "")
    try:
        path = hf_hub_download(repo_id, filename, revision=revision)
    except LocalEntryNotFoundError as e:
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
            raise FileNotFoundError(f"{where}: {filename} is not in the local cache and HF_HUB_OFFLINE=1 forbids downloading it; "
                                    "load it once online (or unset HF_HUB_OFFLINE)") from None
        raise FileNotFoundError(f"{where}: could not download {filename} and it is not cached ({e})") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"{where}: no such repository on the Hub (or no access to it)") from None
    except RevisionNotFoundError:
        raise FileNotFoundError(f"{where}: the repository has no revision {revision!r}") from None
    except EntryNotFoundError:
        raise FileNotFoundError(f"{where}: the repository has no file {filename!r}") from None
    if sha256:
        digest = sha256_file(path)
        if digest != sha256:
            _evict(path)
            raise CheckpointError(f"{where}/{filename}: downloaded file has sha256 {digest}, the registry expects {sha256}; "
                                  "refused and removed from the cache")
    return path



def resolve_weights_file(name: str, tag: str | None = None) -> str:
    """Local path of a registry model's weights, verified against the registry's sha256: the file bundled
    with the package, else the entry's Hub copy (`hf_hub_id`: ORG/REPO[@REVISION])."""
    entry = registry.weights_entry(name, tag)
    path = registry.WEIGHTS_DIR / entry["file"]
    if not path.is_file():
        if entry.get("hf_hub_id"):
            repo_id, revision = parse_hub_name(entry["hf_hub_id"])
            return download(repo_id, revision, entry.get("hf_hub_filename", CHECKPOINT_FILE), sha256=entry.get("sha256"))
        raise FileNotFoundError(f"{path}: weights file of {name}.{entry['tag']} is missing from the installation")
    digest = sha256_file(path)
    if entry.get("sha256") and digest != entry["sha256"]:
        raise CheckpointError(f"{path}: sha256 {digest} does not match the registry's {entry['sha256']} for {name}.{entry['tag']}")
    return str(path)
