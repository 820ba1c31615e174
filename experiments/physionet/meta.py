"""PhysioNet Challenge 2012 (in-hospital mortality) with mTAN, described for the Snakefile (no heavy import).

The grid factor ``width`` multiplies mTAN's sizes (see model.py); the outputs are the paper's Figure 10
(parameters vs mean test AUC), Figure 11 (candles per width and dendrite count) and Table 2 (timing,
measured by a job of its own).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..registry import BenchmarkInfo, Factor, Output, RawFile

BASE_URL = "https://physionet.org/files/challenge-2012/1.0.0/"
# SHA-256 of the canonical files. PhysioNet publishes SHA256SUMS.txt for challenge-2012/1.0.0, but it could
# not be fetched from the machine this was written on; these values are the ones two independent public
# loaders check against downloads from BASE_URL (tsdm's PhysioNet2012 dataset class, and a `sha256sum -c`
# download script), and the two Outcomes files on that machine match them byte for byte. The local
# set-a/set-b archives there are repacked copies (other checksums), which is why local files are never
# checked, only downloads.
SHA256 = {
    "set-a.tar.gz": "8cb250f179cd0952b4b9ebcf8954b63d70383131670fac1cfee13deaa13ca920",
    "set-b.tar.gz": "b1637a2a423a8e76f8f087896cfc5fdf28f88519e1f4e874fbda69b2a64dac30",
    "Outcomes-a.txt": "2613ea60ccda29f87571a7d6b09ad130858a8ccd66325bd073365925026883c2",
    "Outcomes-b.txt": "1305f29734da374a809483229a99f33a9230aa8d4fa74b1a2d6ad788136423d5",
    # Set C (not on the machine this was written on): the same two sources as set A's and B's values.
    "set-c.tar.gz": "a4a56b95bcee4d50a3874fe298bf2998f2ed0dd98a676579573dc10419329ee1",
    "Outcomes-c.txt": "0b32dcb7753c0f18f2f5fde498a28618b8879c5e527ce0dae8ad120dd7e205c9",
}
SETS = ("a", "b", "c")


def set_files(set_name: str) -> tuple[str, str]:
    """(archive, outcomes) file names of one set."""
    return f"set-{set_name}.tar.gz", f"Outcomes-{set_name}.txt"


def all_sets(data: dict) -> list[str]:
    """The sets a block reads: its training sets (``data.sets``), then its held-out ``data.test_set`` if any.

    Without ``test_set`` every run splits ``sets`` per seed; with it the runs train and validate on ``sets``
    and all test on ``test_set`` (the Challenge's external validation), which must then not be a training set.
    """
    test_set = data.get("test_set")
    if test_set is None:
        return list(data["sets"])
    if test_set in data["sets"]:
        raise ConfigError(f"data.test_set {test_set!r} is also in data.sets {list(data['sets'])}: a held-out "
                          f"set must not be trained on; remove it from data.sets")
    return [*data["sets"], test_set]


def raw_files(block: dict) -> list[RawFile]:
    folder = block["data"]["folder"]
    return [RawFile(f"{folder}/{name}", BASE_URL + name, sha256=SHA256[name])
            for s in all_sets(block["data"]) for name in set_files(s)]


def prepared_path(block: dict) -> str:
    """One cache per data settings: two sets, a held-out set, quantisations or limits never overwrite each
    other's cache (``prepared-a+b-testc-q0.016.pt`` holds sets A and B for training and C for testing)."""
    data = block["data"]
    all_sets(data)  # a held-out set that is also trained on is a ConfigError before any path is named
    test = f"-test{data['test_set']}" if data.get("test_set") is not None else ""
    limit = f"-first{data['limit']}" if data.get("limit") is not None else ""
    return f"physionet/prepared-{'+'.join(data['sets'])}{test}-q{data['quantization']}{limit}.pt"


def defects_path(prepared: str | Path) -> Path:
    """The CSV beside a prepared cache that counts what its raw files held that could not be read as it stands."""
    return Path(prepared).with_suffix(".defects.csv")


INFO = BenchmarkInfo(
    package="physionet",
    metric="auc",
    chance=0.5,
    raw_files=raw_files,
    prepared_path=prepared_path,
    prepare_keys=("data",),
    factors=(Factor("width", kind="number", exclusive_minimum=0,
                    description="multiplies mTAN's latent size, encoder/decoder hidden sizes, time embedding "
                                "and classifier width (1 = the mTAN authors' classification model)"),),
    # The figures need the aggregate step too, so that a figure target also makes summary.csv and stats.csv
    # (with the width-0.125-vs-width-1 comparison); they draw from the runs' cycles.csv.
    outputs=(
        Output("params_auc", "figure", "experiments.physionet.figures:params_auc",
               "Figure 10: parameters vs mean test ROC-AUC, one line per width through its dendrite counts "
               "(each neuron cycle's validation-selected test score), 95% intervals over seeds",
               needs=("runs", "aggregate")),
        Output("auc_by_arch", "figure", "experiments.physionet.figures:auc_by_arch",
               "Figure 11: test ROC-AUC per width and dendrite count over seeds (box Q1-Q3, wick min-max, "
               "dot mean)", needs=("runs", "aggregate")),
        Output("timing", "table", "experiments.physionet.figures:timing",
               "Table 2 measurements: seconds per epoch and per cycle of every neuron and dendrite cycle per "
               "width and dendrite count, inference inputs/s (GPU batch 100, CPU batch 1), total training time",
               needs=("prepared",), local=False),
        Output("table2", "table", "experiments.physionet.figures:table2",
               "Table 2 rendered next to the paper's numbers (CSV, and Markdown beside it)",
               needs=(), after=("timing",)),
    ),
    metric_label="test ROC-AUC (in-hospital death)",
    description="PhysioNet Challenge 2012 in-hospital mortality, mTAN (mTAND-Full) classifier at several widths",
)
