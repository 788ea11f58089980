"""`hf://OWNER/REPO[@REVISION]/path/in/repo` paths: found in, or downloaded into, the Hugging Face cache.

HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE and HF_ENDPOINT are honoured. Without a network the answer
comes within seconds: the Hub is probed once before huggingface_hub's own retries could start.
"""
import os

from utils.errors import CheckpointError, first_line
from utils.network import reachable


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


HF_SCHEME = "hf://"


def hub_offline() -> bool:
    """HF_HUB_OFFLINE, read now (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_cache_dir() -> str:
    """The Hugging Face cache folder: HF_HUB_CACHE, else HF_HOME/hub, else the library default."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.path.expandvars(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.path.expandvars(os.environ["HF_HOME"])), "hub")
    from huggingface_hub import constants
    return constants.HF_HUB_CACHE


def parse_hf_uri(uri: str) -> tuple[str, str | None, str]:
    """'hf://owner/repo@rev/path/file.pth' -> ('owner/repo', 'rev' or None, 'path/file.pth')."""
    parts = uri[len(HF_SCHEME):].split("/", 2)
    if len(parts) != 3 or not all(parts) or parts[1].startswith("@"):
        raise CheckpointError(f"{uri}: expected hf://OWNER/REPO[@REVISION]/path/in/repo")
    repo, _, revision = parts[1].partition("@")
    return f"{parts[0]}/{repo}", revision or None, parts[2]


def resolve_checkpoint_path(path_or_uri: str, cache_dir: str | None = None) -> str:
    """A local path is returned as is; an hf:// URI is downloaded into (or found in) the HF cache."""
    if not path_or_uri.startswith(HF_SCHEME):
        return path_or_uri
    repo_id, revision, filename = parse_hf_uri(path_or_uri)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError, \
        RevisionNotFoundError

    cache_dir = cache_dir or hub_cache_dir()
    offline = hub_offline()
    unreachable = not offline and not reachable(hub_endpoint())  # else huggingface_hub retries for half a minute
    try:
        return hf_hub_download(repo_id, filename, repo_type="model", revision=revision, cache_dir=cache_dir,
                               local_files_only=offline or unreachable)
    except LocalEntryNotFoundError:  # offline (or the Hub unreachable) and not in the cache
        why = "HF_HUB_OFFLINE is set" if offline else f"the Hub ({hub_endpoint()}) cannot be reached"
        reason = (f"not in the Hugging Face cache {cache_dir} and {why}; "
                  f"download it first (scripts/download_artifacts.sh --ckpts-only) or check HF_HOME/HF_HUB_CACHE")
    except EntryNotFoundError:
        reason = f"no file {filename} in the model repo {repo_id}" + (f" at {revision}" if revision else "")
    except RevisionNotFoundError:
        reason = f"no revision {revision} in the model repo {repo_id}"
    except RepositoryNotFoundError:
        reason = f"no model repo {repo_id} on the Hub (or it is private: set HF_TOKEN)"
    except Exception as e:
        reason = f"Hub download failed ({type(e).__name__}: {first_line(e)})"
    raise CheckpointError(f"{path_or_uri}: {reason}")
