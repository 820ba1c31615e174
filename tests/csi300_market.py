"""The CSI300 tests' market: written and prepared through qlib once per test session, shared by the
test_csi300_* modules (a helper module, not a conftest: tests/conftest.py is shared by the suite).

The preparation runs in an empty working directory with every socket connection refused, and records
what appeared there, so a test can prove qlib wrote no tracking folder and needed no network.
"""
from __future__ import annotations

import atexit
import copy
import functools
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from experiments.config import load_config, run_settings
from experiments.grid import make_run

# Small enough to prepare in seconds, large enough for realistic days (index changes, suspensions,
# late listings, splits): 16 stocks, 10 of them in the index at a time, nine months.
FIXTURE = {"start": "2013-01-01", "end": "2013-09-30", "stocks": 16, "members": 10, "concepts": 6,
           "rebalance_days": 30, "seed": 3}
SEGMENTS = {"train": ["2013-04-01", "2013-06-30"], "valid": ["2013-07-01", "2013-08-15"],
            "test": ["2013-08-16", "2013-09-30"]}


@dataclass
class PreparedMarket:
    cfg: dict
    block: dict
    cache_dir: Path
    prepared: Path
    market_root: Path
    truth: object           # experiments.csi300.fixture.FixtureMarket: the same market's ground truth
    stray_files: list       # what appeared in the working directory during prepare
    blocked_connections: list


def fixture_config(**data_overrides) -> dict:
    cfg = load_config()
    block = cfg["benchmarks"]["csi300"]
    block["data"].update(source="fixture", fixture=dict(FIXTURE), segments=copy.deepcopy(SEGMENTS), **data_overrides)
    return cfg


def settings_for(cfg: dict, variant: str = "baseline", seed: int = 0) -> dict:
    return run_settings(cfg, make_run(cfg, "csi300", variant, seed))


@functools.lru_cache(maxsize=None)
def prepared_market(data_dir: str) -> PreparedMarket:
    from experiments.config import digest
    from experiments.csi300.benchmark import prepare
    from experiments.csi300.data import load_stock_index
    from experiments.csi300.fixture import write_market

    root = Path(tempfile.mkdtemp(prefix="csi300-tests-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    workdir = root / "workdir"
    workdir.mkdir()
    cfg = fixture_config()
    block = cfg["benchmarks"]["csi300"]
    blocked = []
    real_connect = socket.socket.connect

    def refuse(sock, address):
        blocked.append(address)
        raise OSError(f"network access refused in the CSI300 tests ({address})")

    previous = os.getcwd()
    socket.socket.connect = refuse
    try:
        os.chdir(workdir)
        prepared = prepare(block, Path(data_dir), root / "cache", False, kernels=1)
    finally:
        os.chdir(previous)
        socket.socket.connect = real_connect
    market_root = root / "cache" / "csi300" / f"fixture-{digest(block['data'])}"
    # The writer is deterministic: writing the market again gives its ground truth (prices, membership).
    index = load_stock_index(Path(data_dir) / block["data"]["stock_index"])
    truth = write_market(root / "truth", index, **FIXTURE)
    return PreparedMarket(cfg=cfg, block=block, cache_dir=root / "cache", prepared=prepared,
                          market_root=market_root, truth=truth, stray_files=sorted(p.name for p in workdir.iterdir()),
                          blocked_connections=blocked)


# A real slice of the shared daily data for the daily_csv tests: four stocks, 2007-01 to 2008-06. SH600000
# goes ex-dividend on 2007-07-18 (prev_close 36.18 after a close of 36.33), SZ000002 on 2007-05-16 (bonus
# shares: 22.97 -> 15.21), SH601318 lists on 2007-03-01 and joins the index on 2007-07-02, SH600089 leaves
# the index on 2007-07-01 and comes back on 2008-01-02.
SLICE_CODES = ("SH600000", "SZ000002", "SH601318", "SH600089")
SLICE_DATES = ("2007-01-01", "2008-06-30")


def write_real_slice(data_dir: Path, dest: Path, codes=SLICE_CODES, dates=SLICE_DATES) -> tuple[Path, Path]:
    """(csv folder, membership file) under ``dest``: the shared data's rows of ``codes`` between ``dates``
    and their membership lines (the builder clips them to the calendar)."""
    import gzip

    source = Path(data_dir) / "csi300"
    folder = dest / "cn_daily"
    folder.mkdir(parents=True)
    for code in codes:
        with gzip.open(source / "cn_daily" / f"{code}.csv.gz", "rt") as f:
            header, *rows = f.read().splitlines()
        kept = [r for r in rows if dates[0] <= r[:10] <= dates[1]]
        with gzip.open(folder / f"{code}.csv.gz", "wt") as f:
            f.write("\n".join([header, *kept]) + "\n")
    lines = (source / "csi300_membership.txt").read_text().splitlines()
    membership = dest / "membership.txt"
    membership.write_text("".join(f"{line}\n" for line in lines if line.split("\t")[0] in codes))
    return folder, membership
