"""Everything that touches qlib: fetching its CN bundle, a quiet local session, Alpha360 through its handler.

qlib is used as HIST's ``learn.py`` uses it: the ``Alpha360`` handler on the ``csi300`` universe, with the
processors and segments of the configuration, and ``DatasetH.prepare(..., data_key=DK_L)`` for every
segment (the learn-processed data: features robust-z-scored and filled, rows without a label dropped,
labels rank-normalised per day).

A session here is local and leaves nothing behind:

* ``qlib.init`` registers an experiment manager; qlib's default is MLflow with an ``mlruns`` folder in
  the working directory. :class:`.no_tracking.NoTracking` replaces it: it has no folder and refuses to
  start an experiment (nothing in this suite starts one).
* no expression or dataset cache (those need Redis or write into the data folder), no network: the
  provider is a local folder, checked before qlib sees it.
* ``qlib.init`` also installs a ``sys.excepthook`` that ends qlib experiments; the previous hook is
  put back, so an error in the suite prints as usual.

qlib is imported inside the functions: a training job imports this module (through ``benchmark.py``) but
never needs qlib.
"""
from __future__ import annotations

import copy
import logging
import os
import shutil
import sys
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

from ..errors import DataError
from ..registry import RawFile

log = logging.getLogger(__name__)

LAYOUT = ("calendars/day.txt", "instruments", "features")


def get_data_command(target: Path) -> str:
    """The command a user runs by hand to get qlib's CN bundle (qlib's own ``get_data`` entry point)."""
    return f"python -m qlib.cli.data qlib_data --target_dir {target} --region cn --interval 1d"


def check_bundle(folder: Path, instruments: str) -> Path:
    """``folder`` if it has qlib's layout and the universe's instrument file, else DataError with the fix."""
    folder = Path(folder)
    fix = (f"get qlib's CN bundle with `{get_data_command(folder)}` (or `python -m experiments download "
           f"csi300`), or point data.qlib_dir at a folder that holds one")
    if not folder.is_dir():
        raise DataError(f"{folder} does not exist; {fix}")
    missing = [part for part in LAYOUT if not (folder / part).exists()]
    if missing:
        raise DataError(f"{folder} is not a qlib data folder: {missing} missing; {fix}")
    if not (folder / "instruments" / f"{instruments.lower()}.txt").is_file():
        raise DataError(f"{folder}/instruments/{instruments.lower()}.txt is missing: the bundle has no "
                        f"{instruments!r} universe; {fix}")
    return folder


@contextmanager
def qlib_session(provider_uri: Path, region: str = "cn", kernels: int | None = None):
    """``qlib.init`` on a local folder, without tracking, caches or network; restores ``sys.excepthook``.

    ``kernels``: worker processes for loading instruments (qlib's default: every usable CPU).
    """
    import qlib
    from qlib.config import C

    hook = sys.excepthook
    options = dict(provider_uri=str(Path(provider_uri).resolve()), region=region,
                   expression_cache=None, dataset_cache=None, logging_level=logging.WARNING,
                   exp_manager={"class": "NoTracking", "module_path": "experiments.csi300.no_tracking",
                                "kwargs": {"uri": "", "default_exp_name": None}})
    if kernels is not None:
        options["kernels"] = kernels
    try:
        qlib.init(**options)
    finally:
        sys.excepthook = hook
    try:
        yield C
    finally:
        sys.excepthook = hook


def alpha360_frames(provider_uri: Path, *, instruments: str, segments: dict, label: str,
                    infer_processors: list, learn_processors: list, region: str = "cn",
                    kernels: int | None = None) -> dict:
    """``{segment: DataFrame}`` of Alpha360 features and the label, exactly as HIST's ``learn.py`` makes them.

    ``segments`` maps a name to ``(first day, last day)``; the first is the training segment, on which
    the processors that learn statistics (``RobustZScoreNorm``) are fitted, as in HIST. The frames are
    indexed by (datetime, instrument) and have 360 ``feature`` columns (CLOSE59..CLOSE0, OPEN59..,
    HIGH.., LOW.., VWAP.., VOLUME.., oldest first) and one ``label`` column.
    """
    from qlib.contrib.data.handler import Alpha360
    from qlib.data.dataset import DatasetH
    from qlib.data.dataset.handler import DataHandlerLP

    names = list(segments)
    bounds = {name: tuple(str(day) for day in segments[name]) for name in names}
    fit_start, fit_end = bounds[names[0]]
    check_bundle(provider_uri, instruments)
    with qlib_session(provider_uri, region=region, kernels=kernels), warnings.catch_warnings():
        # qlib's processors assign into slices of frames; pandas warns about it on every call.
        warnings.simplefilter("ignore", category=Warning)
        handler = Alpha360(instruments=instruments,
                           start_time=min(b[0] for b in bounds.values()),
                           end_time=max(b[1] for b in bounds.values()),
                           fit_start_time=fit_start, fit_end_time=fit_end,
                           # qlib writes the fit window into the processors' kwargs: give it copies
                           infer_processors=copy.deepcopy(list(infer_processors)),
                           learn_processors=copy.deepcopy(list(learn_processors)),
                           label=[label])
        frames = DatasetH(handler, bounds).prepare(names, col_set=["feature", "label"],
                                                    data_key=DataHandlerLP.DK_L)
    frames = dict(zip(names, frames if isinstance(frames, list) else [frames]))
    for name, frame in frames.items():
        if frame.empty:
            raise DataError(f"{provider_uri}: qlib returned no {instruments} rows for the {name} segment "
                            f"{bounds[name][0]} .. {bounds[name][1]}; check data.segments against the "
                            f"bundle's calendar ({provider_uri}/calendars/day.txt)")
    return frames


def universe_features(provider_uri: Path, *, instruments: str, expression: str, start: str, end: str,
                      members_only: bool, region: str = "cn", kernels: int | None = None):
    """One qlib expression of the universe's stocks from ``start`` to ``end``: a Series indexed by
    (datetime, instrument).

    ``members_only``: only the days each stock is in the universe (its rows in the handler's frames);
    otherwise every day of every stock that is a member at some time in the window."""
    from qlib.data import D

    check_bundle(provider_uri, instruments)
    with qlib_session(provider_uri, region=region, kernels=kernels), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=Warning)
        universe = D.instruments(instruments)
        if not members_only:
            universe = D.list_instruments(universe, start_time=start, end_time=end, as_list=True)
        frame = D.features(universe, [expression], start_time=start, end_time=end, freq="day")
    series = frame.iloc[:, 0].swaplevel().sort_index()
    series.index = series.index.set_names(["datetime", "instrument"])
    return series.astype("float64")


def fetch_bundle(raw: RawFile, data_dir: Path) -> Path:
    """Fetcher of the raw folder ``raw.name``: qlib's CN daily bundle through qlib's own ``get_data``.

    Downloads into a temporary sibling folder and renames it into place only once it has qlib's layout,
    so an interrupted download never leaves a folder that looks complete.
    """
    target = Path(data_dir) / raw.name
    if target.exists():
        return check_bundle(target, "csi300")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent))
    try:
        from qlib.tests.data import GetData
        try:
            GetData(delete_zip_file=True).qlib_data(target_dir=str(staging), region="cn", interval="1d",
                                                   delete_old=False)
        except Exception as exc:  # requests' errors (offline, HTTP status) and a broken zip alike
            raise DataError(f"cannot download qlib's CN bundle into {target}: {type(exc).__name__}: {exc}. "
                            f"Run `{get_data_command(target)}` by hand when online") from None
        found = [p.parent.parent for p in staging.rglob("calendars/day.txt")]
        if len(found) != 1:
            raise DataError(f"qlib's CN bundle unpacked into {staging} without one calendars/day.txt "
                            f"(found {len(found)}); run `{get_data_command(target)}` by hand")
        check_bundle(found[0], "csi300")
        os.replace(found[0], target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("csi300: qlib's CN bundle is in %s", target)
    return target
