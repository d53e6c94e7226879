"""Tuned step sizes on disk: tuned once per (task, N, L, tuner version, seed, ...), then reused.

One JSON file per key, named by the SHA-256 of the key, in :func:`cache_dir`: the folder named
by the environment variable ``ICL_LIGHTNING_CACHE``, by default the user's cache folder,
``$XDG_CACHE_HOME/icl_lightning/step_sizes`` (``~/.cache/...``), which every run, seed and
checkout of this user shares and which no run folder holds; ``ICL_LIGHTNING_CACHE=off`` turns
the cache off. A file holds its key beside the value, and an entry is used only when the whole
key matches (so a new tuner version, another seed, task, N, L or tuning size is tuned again);
files are written atomically, so runs in parallel may share the folder. A file that cannot be
read counts as absent.
"""

import hashlib
import json
import os
from pathlib import Path

#: the environment variable naming the cache folder (``off``: no cache)
VARIABLE = "ICL_LIGHTNING_CACHE"


def cache_dir() -> Path | None:
    """The cache folder, or None when the cache is off."""
    value = os.environ.get(VARIABLE, "")
    if value.lower() == "off":
        return None
    if value:
        return Path(value)
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return user_cache / "icl_lightning" / "step_sizes"


def _path(key: dict) -> Path | None:
    folder = cache_dir()
    if folder is None:
        return None
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return folder / f"{digest[:32]}.json"


def load(key: dict) -> dict | None:
    """The value stored under ``key`` (a JSON-serialisable dict), or None."""
    path = _path(key)
    if path is None or not path.is_file():
        return None
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return entry["value"] if entry.get("key") == json.loads(json.dumps(key)) else None


def store(key: dict, value: dict) -> None:
    """Keep ``value`` under ``key`` (atomic: written to a temporary file, then renamed)."""
    path = _path(key)
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps({"key": key, "value": value}, indent=1))
    os.replace(temporary, path)
