"""Everything a figure needs to be traced and reproduced: versions, commit, seed, hashes, config.

Every stage writes ``OUT/summary.json`` (results + this provenance) and ``OUT/config.yaml`` (the
resolved config) through ``write_run_files``. Class names and prompt templates are hashed because a
silent template change silently changes zero-shot numbers (a known CLIP_benchmark pitfall).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import yaml

from zmdist.atomic import atomic_write_text

_PACKAGES = ("zmdist", "torch", "torchvision", "open_clip_torch", "webdataset", "accelerate", "deepspeed", "submitit")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit() -> str:
    """The commit of the zmdist source tree ("+dirty" when it has local changes), or "unknown"."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def hash_strings(items: Sequence[str]) -> str:
    """A short, order-sensitive sha256 of a list of strings (class names, templates)."""
    digest = hashlib.sha256(json.dumps(list(items), ensure_ascii=False).encode()).hexdigest()
    return digest[:16]


def hash_file(path: Path, chunk: int = 1 << 20) -> str:
    """The full sha256 hex digest of a file's bytes (read in 1 MiB chunks: a multi-GB checkpoint is fine)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def hash_json(value: Any) -> str:
    """A short sha256 of any JSON-able value (keys sorted): a fingerprint that ignores formatting."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def provenance(seed: int | None = None, **hashes: Sequence[str]) -> dict[str, Any]:
    """Run facts to embed in a summary; each keyword becomes ``<name>_hash``."""
    facts: dict[str, Any] = {
        "seed": seed,
        "versions": package_versions(),
        "git_commit": git_commit(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "host": socket.gethostname(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "pid": os.getpid(),
    }
    for name, items in hashes.items():
        facts[f"{name}_hash"] = hash_strings(items)
    return facts


def write_run_files(out: Path, config: dict[str, Any], results: dict[str, Any]) -> Path:
    """Write ``summary.json`` and ``config.yaml`` into ``out`` atomically; return the summary path."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    summary = out / "summary.json"
    atomic_write_text(summary, json.dumps(results, indent=2, sort_keys=False, default=_jsonable) + "\n")
    return summary


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to summary.json")
