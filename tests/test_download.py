"""experiments.download against a real local HTTP server (no network needed).

The server serves files written into tmp_path, plus two misbehaving routes: ``/truncated/<name>``
announces more bytes than it sends and closes the connection, ``/error500/<name>`` fails. Every
request is counted, so a test can assert that nothing was downloaded.
"""
from __future__ import annotations

import gzip
import hashlib
import http.server
import socket
import threading
from pathlib import Path

import pytest

from experiments import download as dl
from experiments.download import ensure_file, fetch
from experiments.errors import DataError, UserError
from experiments.tox21.data import TASKS, load_csv

CSV_ROWS = [
    # NR-AR ... SR-p53 (12), mol_id, smiles; empty cell = missing label
    "0,0,1,,,0,0,1,0,0,0,0,TOX3021,CCOc1ccc2nc(S(N)(=O)=O)sc2c1",
    "0,0,0,0,0,0,0,,0,,0,0,TOX3020,CCN1C(=O)NC(c2ccccc2)C1=O",
    ",,,,,,,0,,0,,,TOX3024,CCO",
]


def tox21_like_gz() -> bytes:
    text = ",".join(TASKS + ["mol_id", "smiles"]) + "\n" + "\n".join(CSV_ROWS) + "\n"
    return gzip.compress(text.encode(), mtime=0)


class CountingHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []  # replaced per server

    def log_message(self, *args):  # keep the test output clean
        pass

    def do_GET(self):
        type(self).requests.append(self.path)
        if self.path.startswith("/error500/"):
            self.send_error(500, "Internal Server Error")
            return
        if self.path.startswith("/truncated/"):
            body = (Path(self.directory) / self.path.split("/")[-1]).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body) + 1000))  # promise more than we send
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "srv"
    root.mkdir()
    payload = tox21_like_gz()
    (root / "tox21.csv.gz").write_bytes(payload)
    handler = type("Handler", (CountingHandler,), {"requests": []})

    def make(*args, **kwargs):
        return handler(*args, directory=str(root), **kwargs)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield {"base": base, "payload": payload, "requests": handler.requests, "root": root,
               "sha256": hashlib.sha256(payload).hexdigest(), "md5": hashlib.md5(payload).hexdigest()}
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def folder_listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_good_file_is_verified_and_in_place(server, tmp_path):
    dest = tmp_path / "data" / "tox21" / "tox21.csv.gz"
    out = fetch(server["base"] + "/tox21.csv.gz", dest, sha256=server["sha256"], md5=server["md5"].upper())
    assert out == dest
    assert dest.read_bytes() == server["payload"]
    assert folder_listing(dest.parent) == ["tox21.csv.gz"]  # no temporary file left beside it
    df = load_csv(dest)  # the real format survives the trip
    assert list(df["mol_id"]) == ["TOX3021", "TOX3020", "TOX3024"]
    assert server["requests"] == ["/tox21.csv.gz"]


def test_truncated_transfer_is_an_error_and_leaves_nothing(server, tmp_path):
    dest = tmp_path / "data" / "tox21.csv.gz"
    url = server["base"] + "/truncated/tox21.csv.gz"
    with pytest.raises(DataError) as err:
        fetch(url, dest)  # no checksum given: the size check alone must catch it
    msg = str(err.value)
    assert "truncated" in msg and str(dest) in msg and url in msg
    assert f"received {len(server['payload']) // 2} of {len(server['payload']) + 1000} bytes" in msg
    assert folder_listing(dest.parent) == []


def test_wrong_checksum_names_both_digests_and_keeps_nothing(server, tmp_path):
    dest = tmp_path / "data" / "tox21.csv.gz"
    wrong = "0" * 64
    url = server["base"] + "/tox21.csv.gz"
    with pytest.raises(DataError) as err:
        fetch(url, dest, sha256=wrong)
    msg = str(err.value)
    assert msg.startswith(f"checksum mismatch for {dest}: expected sha256 {wrong}, got {server['sha256']}")
    assert f"download it by hand from {url} into {dest.parent}/" in msg
    assert folder_listing(dest.parent) == []


def test_wrong_md5_keeps_the_previous_file_untouched(server, tmp_path):
    # Atomicity: a failed download never replaces (or half-writes) what is already at dest.
    dest = tmp_path / "tox21.csv.gz"
    dest.write_bytes(b"previous content")
    with pytest.raises(DataError, match=f"expected md5 {'f' * 32}, got {server['md5']}"):
        fetch(server["base"] + "/tox21.csv.gz", dest, md5="f" * 32)
    assert dest.read_bytes() == b"previous content"
    assert folder_listing(tmp_path) == ["srv", "tox21.csv.gz"]


@pytest.mark.parametrize("path,code", [("/error500/tox21.csv.gz", 500), ("/no_such_file.csv.gz", 404)])
def test_server_errors_say_which_file_and_where_to_get_it(server, tmp_path, path, code):
    dest = tmp_path / "data" / "tox21.csv.gz"
    url = server["base"] + path
    with pytest.raises(DataError) as err:
        fetch(url, dest)
    msg = str(err.value)
    assert f"HTTP {code}" in msg
    assert f"cannot download {dest}" in msg
    assert f"download it by hand from {url} and put it at {dest}" in msg
    assert folder_listing(dest.parent) == []


def test_existing_file_means_no_request(server, tmp_path):
    data_dir = tmp_path / "data"
    (data_dir / "tox21").mkdir(parents=True)
    present = data_dir / "tox21" / "tox21.csv.gz"
    present.write_bytes(b"a local, recompressed copy")
    url = server["base"] + "/tox21.csv.gz"
    out = ensure_file(data_dir, "tox21/tox21.csv.gz", url, sha256=server["sha256"], download=True)
    assert out == present and present.read_bytes() == b"a local, recompressed copy"
    # verify=True checks the local file against the digest, still without touching the network,
    # and reports a mismatch without deleting the user's file.
    with pytest.raises(DataError) as err:
        ensure_file(data_dir, "tox21/tox21.csv.gz", url, sha256=server["sha256"], verify=True)
    assert f"checksum mismatch for {present}: expected sha256 {server['sha256']}" in str(err.value)
    assert present.exists()
    assert server["requests"] == []


def test_ensure_file_downloads_when_missing_and_allowed(server, tmp_path):
    data_dir = tmp_path / "data"
    url = server["base"] + "/tox21.csv.gz"
    out = ensure_file(data_dir, "tox21/tox21.csv.gz", url, md5=server["md5"], download=True)
    assert out.read_bytes() == server["payload"]
    ensure_file(data_dir, "tox21/tox21.csv.gz", url, md5=server["md5"], download=True, verify=True)
    assert server["requests"] == ["/tox21.csv.gz"]  # the second call found the file


def test_missing_file_with_download_off_says_the_fix(server, tmp_path):
    url = server["base"] + "/tox21.csv.gz"
    with pytest.raises(DataError) as err:
        ensure_file(tmp_path / "data", "tox21/tox21.csv.gz", url, download=False)
    msg = str(err.value)
    dest = tmp_path / "data" / "tox21" / "tox21.csv.gz"
    assert f"{dest} is missing" in msg and f"download it by hand from {url} and put it at {dest}" in msg
    assert "download: true" in msg
    assert server["requests"] == []
    assert isinstance(err.value, UserError)  # the command line prints it without a traceback


def test_offline_gives_data_error_with_the_fix(tmp_path):
    # A port that nobody listens on: bind to get a free one, then close it -> connection refused.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/tox21.csv.gz"
    with pytest.raises(DataError) as err:
        ensure_file(tmp_path / "data", "tox21.csv.gz", url, md5="0" * 32, download=True, timeout=5)
    msg = str(err.value)
    dest = tmp_path / "data" / "tox21.csv.gz"
    assert f"could not reach {url}" in msg and "offline" in msg
    assert f"download it by hand from {url} and put it at {dest}" in msg
    assert folder_listing(tmp_path / "data") == []


def test_large_download_shows_progress_on_stderr(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(dl, "PROGRESS_MIN_BYTES", 10)  # the small payload counts as "large"
    fetch(server["base"] + "/tox21.csv.gz", tmp_path / "big.gz", sha256=server["sha256"])
    out, err = capsys.readouterr()
    assert "big.gz" in err and "big.gz" not in out  # tqdm's bar, labelled with the file, on stderr
    monkeypatch.setattr(dl, "PROGRESS_MIN_BYTES", 1 << 30)
    fetch(server["base"] + "/tox21.csv.gz", tmp_path / "small.gz")
    assert "small.gz" not in capsys.readouterr().err  # small files: no bar
