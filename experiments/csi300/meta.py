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

``data.source: fixture`` (tests, the quick profile) needs only the real stock index: the prepare step
writes a small synthetic market in qlib's format into the cache folder and reads it through qlib.
"""
from __future__ import annotations

from ..config import digest
from ..registry import BenchmarkInfo, Output, RawFile

# The authors' repository serves the three side files from its data/ folder.
HIST_DATA_URL = "https://github.com/Wentao-Xu/HIST/raw/main/data/"
STOCK_INDEX_SHA256 = "c6d2d57a1b3c643b046e4e3466faa147583cb582282580fb9cd5fd3872e77e17"
QLIB_BUNDLE_FETCHER = "experiments.csi300.qlib_data:fetch_bundle"
SOURCES = ("qlib", "fixture")


def raw_files(block: dict) -> list[RawFile]:
    data = block["data"]
    index = RawFile(data["stock_index"], HIST_DATA_URL + "csi300_stock_index.npy", sha256=STOCK_INDEX_SHA256)
    if data["source"] == "fixture":
        return [index]
    return [
        RawFile(data["qlib_dir"], is_dir=True, fetcher=QLIB_BUNDLE_FETCHER),
        index,
        RawFile(data["concept_matrix"], HIST_DATA_URL + "csi300_stock2concept.npy"),
        RawFile(data["market_value"], HIST_DATA_URL + "csi300_market_value_07to20.pkl"),
    ]


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
    outputs=(
        Output("precision", "figure", draw="experiments.csi300.figures:draw_precision",
               caption="Figure 9: validation and test Precision@1 of HIST on CSI300, original (first "
                       "neuron cycle) vs max (best validation epoch), over the seeds"),
        Output("ranking_metrics", "table", draw="experiments.csi300.report:ranking_metrics_table",
               caption="IC, rank IC and Precision@k of every run's final network on the validation "
                       "and test days", needs=("runs", "prepared"), local=False),
    ),
    metric_label="Precision@1",
    description="HIST (GRU encoder + predefined and hidden concepts) on qlib's CSI300 Alpha360 data",
)
