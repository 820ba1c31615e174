"""CSI300 with HIST (SPEC section 3, the paper's Figure 9): the light description the Snakefile reads.

No heavy import here (no torch, pandas or qlib): only what names the raw files, the prepared cache and
the declared outputs.

Raw data (``data.source: qlib``, the paper's):

* qlib's CN daily bundle, a folder (``data.qlib_dir``), fetched by qlib's own ``get_data`` entry point
  (:func:`experiments.csi300.qlib_data.fetch_bundle`); it is published without a checksum.
* HIST's side files from the authors' repository (github.com/Wentao-Xu/HIST, folder ``data/``): the
  stock-to-concept matrix, the map from stock code to matrix row, and the market values. Only the stock
  index has a known sha256 (that of the copy in ../shared/data, byte-identical to the repository's blob);
  the other two are unknown here (no copy could be fetched on the machine that wrote this), so they are
  None and are checked only for their format.

``data.source: daily_csv``: a folder of per-stock daily CSVs and an index-membership file (``data.daily_csv``),
the user's own data; prepare builds a qlib bundle from them (:mod:`.daily_csv`) into the cache folder.

``data.source: fixture`` (tests, the quick profile) needs only the real stock index: the prepare step
writes a small synthetic market in qlib's format into the cache folder and reads it through qlib.

HIST's concept matrix and stock index are raw files only with ``data.concepts: hist``, the market-value
file only with ``data.market_value_source: file`` (see concepts.py for the substitutes).

The grid factor ``width`` multiplies HIST's hidden size (``model.hidden_size`` x width, rounded; 1 = the
authors' 64): a wider baseline is the parameter-matched control.
"""
from __future__ import annotations

from ..config import digest
from ..registry import BenchmarkInfo, Factor, Output, RawFile

# The authors' repository serves the three side files from its data/ folder.
HIST_DATA_URL = "https://github.com/Wentao-Xu/HIST/raw/main/data/"
STOCK_INDEX_SHA256 = "c6d2d57a1b3c643b046e4e3466faa147583cb582282580fb9cd5fd3872e77e17"
QLIB_BUNDLE_FETCHER = "experiments.csi300.qlib_data:fetch_bundle"
DAILY_CSV_FETCHER = "experiments.csi300.daily_csv:no_download"
SOURCES = ("qlib", "daily_csv", "fixture")


def raw_files(block: dict) -> list[RawFile]:
    data = block["data"]
    index = RawFile(data["stock_index"], HIST_DATA_URL + "csi300_stock_index.npy", sha256=STOCK_INDEX_SHA256)
    if data["source"] == "fixture":
        # the fixture writes its own concept matrix and market values; it needs the real codes only
        return [index]
    files = []
    if data["source"] == "qlib":
        files.append(RawFile(data["qlib_dir"], is_dir=True, fetcher=QLIB_BUNDLE_FETCHER))
    else:
        files += [RawFile(data["daily_csv"]["dir"], is_dir=True, fetcher=DAILY_CSV_FETCHER),
                  RawFile(data["daily_csv"]["membership"], fetcher=DAILY_CSV_FETCHER)]
    if data["concepts"] == "hist":
        files += [index, RawFile(data["concept_matrix"], HIST_DATA_URL + "csi300_stock2concept.npy")]
    if data["market_value_source"] == "file":
        files.append(RawFile(data["market_value"], HIST_DATA_URL + "csi300_market_value_07to20.pkl"))
    return files


def prepared_path(block: dict) -> str:
    # One cache per data settings: the fixture market and the real data (or two segmentations) never
    # overwrite each other's cache.
    return f"csi300/prepared-{block['data']['source']}-{digest(block['data'])}.pt"


INFO = BenchmarkInfo(
    package="csi300",
    metric="precision_at_1",
    chance=0.5,
    raw_files=raw_files,
    prepared_path=prepared_path,
    prepare_keys=("data",),
    factors=(Factor("width", exclusive_minimum=0,
                    description="HIST's hidden size is model.hidden_size x width, rounded (a wider baseline is the "
                                "parameter-matched control)"),),
    outputs=(
        Output("precision", "figure", draw="experiments.csi300.figures:draw_precision",
               caption="Figure 9: validation and test Precision@1 of HIST on CSI300, original (first "
                       "neuron cycle) vs max (best validation epoch), over the seeds; the title names the predefined "
                       "concepts the runs used (HIST's matrix, none, or training-return clusters)"),
        Output("ranking_metrics", "table", draw="experiments.csi300.report:ranking_metrics_table",
               caption="IC, rank IC and Precision@k of every run's final network on the validation "
                       "and test days, with the predefined concepts each run used", needs=("runs", "prepared"),
               local=False),
    ),
    metric_label="Precision@1",
    description="HIST (GRU encoder + predefined and hidden concepts) on qlib's CSI300 Alpha360 data",
)
