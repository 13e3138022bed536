"""Hub ids -> local snapshot folders: the local cache first, a download only when the hub is reachable.

A machine without network (or with HF_HUB_OFFLINE set) gets an error at once that says how to pass
local files instead, not huggingface_hub's retries with backoff.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

from organic_sd.teachers.common import TeacherError


def offline() -> bool:
    """True when HF_HUB_OFFLINE is set (in the environment or huggingface_hub's constants)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return env or bool(constants.HF_HUB_OFFLINE)


def reachable(timeout: float = 3.0) -> bool:
    """One TCP connect to the hub endpoint, instead of huggingface_hub's five retries (~25 s with no network)."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
    except OSError:
        return False
    return True


def cached(repo_id: str, revision: str | None, probes: Sequence[str]) -> tuple[Path, str] | None:
    """(folder of the first probe file found in the local cache, id `repo[/sub]@commit`), or None."""
    from huggingface_hub import try_to_load_from_cache

    for probe in probes:  # e.g. "config.json", "vae/config.json"
        hit = try_to_load_from_cache(repo_id, probe, revision=revision)
        if isinstance(hit, str):
            sub = probe.rpartition("/")[0]
            parts = Path(hit).parts
            commit = parts[parts.index("snapshots") + 1] if "snapshots" in parts else (revision or "main")
            return Path(hit).parent, f"{repo_id}{'/' + sub if sub else ''}@{commit}"
    return None


def resolve(spec: str, what: str, probes: Sequence[str], downloads: Sequence[Sequence[str]], local_hint: str,
            not_found: str) -> tuple[Path, str]:
    """A hub id `repo[@revision]` -> (local snapshot folder, id), downloading the file patterns of
    `downloads` in turn until a probe is cached; a TeacherError with `local_hint` when that cannot work."""
    repo_id, _, revision = spec.partition("@")
    revision = revision or None
    hit = cached(repo_id, revision, probes)
    if hit is not None:
        return hit
    from huggingface_hub import constants

    hint = f"no local file or folder {spec!r} exists either; " + local_hint.format(repo=repo_id)
    if offline():
        raise TeacherError(f"{what} {spec!r} is not in the hub cache ({constants.HF_HUB_CACHE}) and "
                           f"HF_HUB_OFFLINE is set; {hint}")
    if not reachable():
        raise TeacherError(f"{what} {spec!r} is not in the hub cache ({constants.HF_HUB_CACHE}) and "
                           f"{constants.ENDPOINT} is unreachable; {hint}")
    from huggingface_hub import snapshot_download

    for patterns in downloads:
        try:
            snapshot_download(repo_id, revision=revision, allow_patterns=list(patterns))
        except Exception as e:  # hub errors are many (auth, not found, http); all end the same way
            raise TeacherError(f"could not download {spec!r} ({type(e).__name__}: {e}); {hint}") from None
        hit = cached(repo_id, revision, probes)
        if hit is not None:
            return hit
    raise TeacherError(f"{spec!r} {not_found}")
