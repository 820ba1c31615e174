"""Download a benchmark's raw files safely: verified, atomic, with errors that say the fix.

Two functions, used by every benchmark:

* :func:`fetch` downloads one URL to one path. The bytes go to a temporary file in the destination's
  own folder (so the final :func:`os.replace` is an atomic rename on the same file system); the size
  is checked against ``Content-Length`` and the checksum against the expected digest before the file
  is moved into place. Whatever goes wrong, ``dest`` is never half-written and no temporary file is
  left behind.
* :func:`ensure_file` is what the pipeline calls: a file that is already there is used as it is (no
  network access at all; its checksum is checked only when asked, because local copies may be
  legitimately recompressed), a missing one is downloaded when downloading is allowed, and otherwise
  the error says where to get it and where to put it.

Every failure is a :class:`experiments.errors.DataError` whose message names the file, the URL and
the fix.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from .errors import DataError

CHUNK = 1 << 16
# A progress bar only for downloads of at least this many bytes (or of unknown size): a bar for a
# 100 kB file is noise in the logs of a pipeline that downloads several files.
PROGRESS_MIN_BYTES = 1 << 20
USER_AGENT = "perforated-backprop-suite/0.1 (python urllib)"


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file (``algorithm``: any name :func:`hashlib.new` knows, e.g. sha256, md5)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _expected_digests(sha256: str | None, md5: str | None) -> dict[str, str]:
    # Digests are compared in lower case: published checksums come in either case.
    out = {}
    if sha256:
        out["sha256"] = sha256.strip().lower()
    if md5:
        out["md5"] = md5.strip().lower()
    return out


def _by_hand(url: str, dest: Path) -> str:
    return f"download it by hand from {url} and put it at {dest}"


def fetch(url: str, dest: Path, sha256: str | None = None, md5: str | None = None,
          timeout: float = 60) -> Path:
    """Download ``url`` to ``dest`` (atomically), check its size and checksum, and return ``dest``.

    ``sha256`` / ``md5``: expected hex digests (either, both or neither; with neither only the size
    is checked). ``timeout``: seconds to wait for the server on connect and on each read.

    Raises :class:`DataError` on an HTTP error status, an unreachable server (offline, DNS, refused
    connection, time-out), a transfer that ends before ``Content-Length`` bytes, or a checksum
    mismatch. In every case ``dest`` is left as it was before the call and the temporary file is
    removed.
    """
    dest = Path(dest)
    expected = _expected_digests(sha256, md5)
    dest.parent.mkdir(parents=True, exist_ok=True)
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:  # before URLError: HTTPError is a subclass of it
        raise DataError(f"cannot download {dest}: the server answered HTTP {exc.code} ({exc.reason}) "
                        f"for {url}; check the URL or try again later, or {_by_hand(url, dest)}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        # offline, DNS failure, connection refused or reset, time-out, garbled status line
        reason = getattr(exc, "reason", exc)
        raise DataError(f"cannot download {dest}: could not reach {url} ({reason}); are you offline? "
                        f"Connect to the network and re-run, or {_by_hand(url, dest)}") from None

    with response:
        # delete=False: we move the file into place ourselves; the finally-block removes it otherwise.
        tmp = tempfile.NamedTemporaryFile(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part",
                                          delete=False)
        tmp_path = Path(tmp.name)
        try:
            with tmp:
                _copy_verified(response, tmp, url, dest, expected)
            os.replace(tmp_path, dest)
        finally:
            tmp_path.unlink(missing_ok=True)  # no-op after a successful os.replace
    return dest


def _copy_verified(response, tmp, url: str, dest: Path, expected: dict[str, str]) -> None:
    """Stream the body into ``tmp``; raise DataError on a short or broken transfer or a bad digest."""
    length_header = response.headers.get("Content-Length")
    total = int(length_header) if length_header and length_header.isdigit() else None
    hashes = {name: hashlib.new(name) for name in expected}
    received = 0
    bar = _progress_bar(total, dest.name)
    try:
        while True:
            try:
                block = response.read(CHUNK)
            except (http.client.HTTPException, OSError) as exc:
                # A connection reset or time-out mid-transfer: the same fix as a short read.
                raise DataError(f"download of {dest} from {url} broke off after {received} bytes ({exc!r}); "
                                f"nothing was saved: re-run, or {_by_hand(url, dest)}") from None
            if not block:
                break
            tmp.write(block)
            received += len(block)
            for h in hashes.values():
                h.update(block)
            if bar is not None:
                bar.update(len(block))
    finally:
        if bar is not None:
            bar.close()
    # http.client does not raise when a server closes the connection early; it just returns b""
    # (see HTTPResponse.readinto), so without this check a truncated file would pass as complete.
    if total is not None and received != total:
        raise DataError(f"download of {dest} from {url} is truncated: received {received} of {total} "
                        f"bytes; nothing was saved: re-run, or {_by_hand(url, dest)}")
    for name, h in hashes.items():
        got = h.hexdigest()
        if got != expected[name]:
            raise DataError(f"checksum mismatch for {dest}: expected {name} {expected[name]}, got {got} "
                            f"(the downloaded file was not kept); delete {dest} if it exists and re-run, "
                            f"or download it by hand from {url} into {dest.parent}/")
    tmp.flush()
    os.fsync(tmp.fileno())  # the rename must never expose a file whose bytes are not yet on disk


def _progress_bar(total: int | None, name: str):
    if total is not None and total < PROGRESS_MIN_BYTES:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency, but a missing bar must not break a download
        return None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name, file=sys.stderr,
                leave=False)


def ensure_file(data_dir: Path, name: str, url: str, sha256: str | None = None, md5: str | None = None,
                download: bool = True, verify: bool = False, timeout: float = 60) -> Path:
    """Return ``data_dir / name``, downloading it first when it is missing and ``download`` is true.

    ``name`` may contain folders (``"tox21/tox21.csv.gz"``). A file already present is never
    touched and nothing is downloaded; with ``verify=True`` its checksum is compared with the given
    digests (off by default: local copies may be recompressed and then differ from the canonical
    file's checksum, which is checked on every download). A missing file with ``download=False`` is
    a :class:`DataError` that says where to get the file and where to put it.
    """
    path = Path(data_dir) / name
    if path.exists():
        if not path.is_file():
            raise DataError(f"{path} exists but is not a file; remove it and re-run, or "
                            f"{_by_hand(url, path)}")
        if verify:
            for algorithm, want in _expected_digests(sha256, md5).items():
                got = file_digest(path, algorithm)
                if got != want:
                    raise DataError(f"checksum mismatch for {path}: expected {algorithm} {want}, got {got}; "
                                    f"delete it and re-run, or download it by hand from {url} into "
                                    f"{path.parent}/")
        return path
    if not download:
        raise DataError(f"{path} is missing and downloading is switched off (download: false); "
                        f"{_by_hand(url, path)}, or allow downloading (set download: true) and re-run")
    return fetch(url, path, sha256=sha256, md5=md5, timeout=timeout)
