"""Download the authors' datasets and checkpoints from the Hugging Face Hub.

    python scripts/download_artifacts.py                # datasets -> data/
    python scripts/download_artifacts.py --with-ckpts   # + checkpoints -> downloaded_checkpoints/
    python scripts/download_artifacts.py --ckpts-only --offline

Files are fetched into the Hugging Face cache (HF_HOME / HF_HUB_CACHE, or --cache-dir), so an
interrupted run resumes and `--offline` (HF_HUB_OFFLINE=1) works from what is cached. They are
then placed (hard-linked when the cache is on the same disk, else copied; each file written
under a temp name and renamed) into the data and checkpoint folders, keeping the repo's
sub-folders. If the dataset repo keeps its datasets under a top-level `data/` folder, that
folder's contents are what land in --data-dir.
"""
import argparse
import fnmatch
import os
import shutil
import sys

DATA_REPO = "locuslab/EqR-data"
CKPT_REPO = "locuslab/EqR-model"
CKPT_PATTERNS = ["sudoku-extreme/eqr.pth", "maze-unique/eqr.pth"]
REPO_METADATA = [".gitattributes", "README*", "LICENSE*", ".cache/*", ".git/*"]  # never placed


class DownloadError(RuntimeError):
    """A download that cannot be done; the message says what and why, in one line."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--with-ckpts", action="store_true", help="download the checkpoints as well as the data")
    parser.add_argument("--ckpts-only", action="store_true", help="download only the checkpoints")
    parser.add_argument("--skip-data", action="store_true", help="do not download the data")
    parser.add_argument("--data-repo", default=DATA_REPO, help=f"dataset repo on the Hub (default {DATA_REPO})")
    parser.add_argument("--ckpt-repo", default=CKPT_REPO, help=f"model repo on the Hub (default {CKPT_REPO})")
    pattern_help = f"checkpoint path or glob in the model repo, repeatable (default: {' '.join(CKPT_PATTERNS)})"
    parser.add_argument("--ckpt-pattern", action="append", metavar="GLOB", help=pattern_help)
    parser.add_argument("--data-dir", default="data", help="where the datasets go (default data/)")
    parser.add_argument("--ckpt-dir", default="downloaded_checkpoints",
                        help="where the checkpoints go (default downloaded_checkpoints/)")
    parser.add_argument("--cache-dir", default=None,
                        help="Hugging Face cache folder (default: HF_HUB_CACHE, else HF_HOME/hub)")
    parser.add_argument("--revision", default=None, help="branch, tag or commit of both repos (default main)")
    parser.add_argument("--offline", action="store_true", help="use only the local cache (sets HF_HUB_OFFLINE=1)")
    return parser.parse_args(argv)


def fetch_snapshot(repo_id: str, repo_type: str, patterns, revision, cache_dir, offline: bool) -> str:
    """Download (or find in the cache) the repo's files matching `patterns` -> the cached snapshot folder."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    where = f"{repo_type} repo {repo_id}" + (f"@{revision}" if revision else "")
    try:
        return snapshot_download(repo_id, repo_type=repo_type, revision=revision, cache_dir=cache_dir,
                                 allow_patterns=patterns, local_files_only=offline)
    except LocalEntryNotFoundError:
        why = "offline mode is on" if offline else "the Hub cannot be reached"
        raise DownloadError(f"{where}: not (completely) in the Hugging Face cache and {why}") from None
    except RevisionNotFoundError:
        raise DownloadError(f"{where}: no such revision") from None
    except RepositoryNotFoundError:
        raise DownloadError(f"{where}: no such repo on the Hub (or it is private: set HF_TOKEN)") from None
    except Exception as e:
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DownloadError(f"{where}: download failed ({type(e).__name__}: {first_line})") from None


def snapshot_files(snapshot: str, patterns) -> list[str]:
    """Repo-relative paths of the snapshot's files that match `patterns` (all when None), metadata left out."""
    found = []
    for folder, _, names in os.walk(snapshot):
        for name in names:
            rel = os.path.relpath(os.path.join(folder, name), snapshot).replace(os.sep, "/")
            if not any(fnmatch.fnmatch(rel, p) for p in REPO_METADATA):
                found.append(rel)
    if patterns is None:
        return sorted(found)
    for pattern in patterns:  # offline, the snapshot folder may lack some files that were asked for
        if not any(fnmatch.fnmatch(rel, pattern) for rel in found):
            raise DownloadError(f"{snapshot}: no file matches {pattern}")
    return sorted(rel for rel in found if any(fnmatch.fnmatch(rel, p) for p in patterns))


def place(source: str, target: str) -> None:
    """Hard-link (else copy) `source` to `target` through a temp name, so `target` is whole or absent."""
    source = os.path.realpath(source)  # cache snapshots are symlinks into blobs/
    if os.path.exists(target) and os.path.samefile(source, target):
        return
    os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    tmp = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.tmp-{os.getpid()}")
    try:
        try:
            os.link(source, tmp)
        except OSError:  # another disk, or links not allowed
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def download(repo_id: str, repo_type: str, dest: str, patterns, args, inner_folder: str | None = None) -> list[str]:
    """Fetch a repo (or the files matching `patterns`) and place them under `dest` -> the placed paths."""
    snapshot = fetch_snapshot(repo_id, repo_type, patterns, args.revision, args.cache_dir, args.offline)
    if inner_folder and os.path.isdir(os.path.join(snapshot, inner_folder)):
        snapshot = os.path.join(snapshot, inner_folder)
    files = snapshot_files(snapshot, patterns)
    if not files:
        raise DownloadError(f"{repo_type} repo {repo_id}: nothing to download")
    placed = []
    for rel in files:
        target = os.path.join(dest, *rel.split("/"))
        place(os.path.join(snapshot, *rel.split("/")), target)
        placed.append(target)
    return placed


def report(title: str, dest: str, placed: list[str], per_file: bool) -> None:
    """Print what landed where: every file, or one line per top-level folder."""
    total = sum(os.path.getsize(p) for p in placed)
    print(f"{title}: {len(placed)} files, {total / 2**20:.1f} MiB in {dest}")
    groups: dict[str, list[str]] = {}
    for p in placed:
        groups.setdefault(p if per_file else os.path.relpath(p, dest).split(os.sep)[0], []).append(p)
    for key, paths in groups.items():
        size = sum(os.path.getsize(p) for p in paths)
        print(f"  {key}  ({size / 2**20:.1f} MiB)" if per_file else
              f"  {os.path.join(dest, key)}  ({len(paths)} files, {size / 2**20:.1f} MiB)")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"  # before huggingface_hub is imported, for anything it reads
    args.offline = args.offline or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
    want_data = not (args.skip_data or args.ckpts_only)
    want_ckpts = args.with_ckpts or args.ckpts_only
    if not (want_data or want_ckpts):
        print("download_artifacts: nothing to do (--skip-data without --with-ckpts)", file=sys.stderr)
        return 2
    try:
        if want_data:
            placed = download(args.data_repo, "dataset", args.data_dir, None, args, inner_folder="data")
            report(f"datasets from {args.data_repo}", args.data_dir, placed, per_file=False)
        if want_ckpts:
            patterns = args.ckpt_pattern or CKPT_PATTERNS
            placed = download(args.ckpt_repo, "model", args.ckpt_dir, patterns, args)
            report(f"checkpoints from {args.ckpt_repo}", args.ckpt_dir, placed, per_file=True)
    except (DownloadError, OSError) as e:
        print(f"download_artifacts: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
