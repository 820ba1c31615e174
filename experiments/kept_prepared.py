"""A kept copy of each prepared cache, so that preparing again from unchanged raw data costs one checksum pass.

Snakemake prepares again whenever a raw file is newer than the prepared cache, and it deletes the cache before
the job starts. A data folder copied or mounted afresh (a new checkout, a restored backup, a shared folder
provisioned again) has new modification times and the same bytes, and every benchmark would compute the same
prepared data again (CSI300's Alpha360 frames: minutes). So every prepared cache has a hard link in
``<cache folder>/kept/`` (no extra disk space) beside the checksum of the raw inputs it was made from. When the
cache is missing and the raw inputs' checksum is the kept one's, the kept copy is linked back and dated now; the
benchmark's own prepare then checks its settings as always. Changed bytes in any raw file make a new cache.

To prepare afresh from unchanged inputs (for example after changing a benchmark's prepare code), delete the
cache and its ``kept/`` entry, or the benchmark's cache folder.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from .download import file_digest

log = logging.getLogger("experiments")


def inputs_checksum(data_dir: Path, names: list[str]) -> str | None:
    """sha256 over each raw file's path below ``data_dir`` and its content (every file of a raw folder, in
    sorted order); None when one of them is missing."""
    h = hashlib.sha256()
    for name in sorted(names):
        path = Path(data_dir) / name
        if not path.exists():
            return None
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            h.update(f"{file.relative_to(data_dir).as_posix()}\0{file_digest(file, 'sha256')}\n".encode())
    return h.hexdigest()


def kept_paths(cache_path: Path) -> tuple[Path, Path]:
    """(the kept hard link, the file holding the raw inputs' checksum) of a prepared cache."""
    kept = cache_path.parent / "kept" / cache_path.name
    return kept, kept.with_name(kept.name + ".inputs-sha256")


def restore(cache_path: Path, checksum: str | None) -> bool:
    """Link the kept copy back to ``cache_path`` when the cache is missing and its inputs are unchanged."""
    kept, recorded = kept_paths(cache_path)
    if checksum is None or cache_path.exists() or not kept.is_file() or not recorded.is_file():
        return False
    if recorded.read_text().strip() != checksum:
        log.info("%s: the raw data changed since the kept copy was made; preparing again", cache_path)
        return False
    _link(kept, cache_path)
    os.utime(cache_path)  # newer than the raw files, so Snakemake counts it as made
    log.info("%s: raw data unchanged (sha256 %s...); reused the kept copy %s", cache_path, checksum[:12], kept)
    return True


def keep(cache_path: Path, checksum: str | None) -> None:
    """Make ``cache_path`` the kept copy for inputs of ``checksum`` (nothing when a raw file is missing or the
    file system has no hard links)."""
    kept, recorded = kept_paths(cache_path)
    if checksum is None or not cache_path.is_file():
        return
    if kept.is_file() and os.path.samefile(kept, cache_path) and recorded.is_file() \
            and recorded.read_text().strip() == checksum:
        return
    kept.parent.mkdir(parents=True, exist_ok=True)
    recorded.unlink(missing_ok=True)  # first, so a crash below never pairs a checksum with another cache
    try:
        _link(cache_path, kept)
    except OSError as err:
        log.warning("%s: no kept copy (%s); preparing again after a new copy of the raw data will recompute it",
                    cache_path, err)
        return
    tmp = recorded.with_name(recorded.name + f".tmp-{os.getpid()}")
    tmp.write_text(checksum + "\n")
    os.replace(tmp, recorded)


def _link(source: Path, target: Path) -> None:
    """Hard-link ``source`` at ``target``, replacing it atomically."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    os.link(source, tmp)
    os.replace(tmp, target)
