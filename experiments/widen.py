"""The parameter-matched control ``wider``: the same network made wider, trained as a plain network.

The paper compares a network with dendrites only with the same network without them. ``wider`` asks the
question it leaves out: does a plain network with as many parameters do as well? It is defined per seed,
paired: the ``wider`` run of (factor values, seed) reads the finished run of the block's ``matched_to``
variant (default ``pb``) of the same factor values and seed, takes the parameter count of that run's final
network (``params_final`` of its summary: the best network, with the dendrites it kept) as the target, and
widens its own network until its parameter count matches. It then trains one neuron cycle with the
benchmark's patience, as ``baseline`` does.

How a benchmark is widened is declared in its ``meta.py``: its factor named :data:`WIDTH_FACTOR` (a
``registry.Factor``), whose value its model builder reads from ``settings["factors"]`` and turns into layer
sizes (TrimNet's hidden size, the MNIST CNN's channels and hidden units, HIST's hidden size, mTAN's sizes).
The runner knows no benchmark: it sets that factor to ``run's width x multiplier`` and builds.

The matching. The parameter count of the real model is a non-decreasing step function of the width
multiplier (layer sizes are rounded to integers). :func:`match_width` searches the multipliers
``k / RESOLUTION`` (k >= RESOLUTION, i.e. at least the run's own width) by doubling and then bisection for
the smallest one whose count reaches the target, and keeps it or the one just below, whichever count is
closer to the target (the smaller one on a tie). When the target is at or below the original count (the
reference kept no dendrite), the match is the original network itself, multiplier 1: the ``wider`` run is
then the baseline network trained as the baseline is, and the runner starts it from the point's shared
first cycle (the same computation, so it costs no training and its scores equal the baseline's).

Nothing here imports torch at module level (the Snakefile reads the configuration modules).
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Callable

from .errors import ConfigError, UserError

VARIANT = "wider"
#: The factor a benchmark declares in its meta.py to say "this scales my network's width".
WIDTH_FACTOR = "width"
#: Multipliers are searched on this grid (1/1000 of the run's own width).
RESOLUTION = 1000
#: The widest network searched: 64 x the run's own width (far beyond any dendrite count the suite caps at).
MAX_MULTIPLIER = 64


@dataclass(frozen=True)
class WidthMatch:
    """What the ``wider`` run is built from and how close it came; recorded in its config and summary.

    ``width`` is the value of the width factor the network is built with (``base_width x multiplier``);
    ``parameters`` its parameter count, ``target_parameters`` that of the reference's final network.
    """
    matched_to: str
    reference_dendrites: int
    target_parameters: int
    base_width: float
    multiplier: float
    width: float
    parameters: int

    def __post_init__(self):
        if self.multiplier < 1 or self.width <= 0 or self.parameters < 1 or self.target_parameters < 1:
            raise ValueError(f"not a width match: {self}")

    @property
    def relative_error(self) -> float:
        return (self.parameters - self.target_parameters) / self.target_parameters

    def as_dict(self) -> dict:
        return {**asdict(self), "relative_error": round(self.relative_error, 6)}


def width_factor_of(info) -> str:
    """The factor that widens the benchmark (``info`` is its ``registry.BenchmarkInfo``), or a ConfigError."""
    if any(f.name == WIDTH_FACTOR for f in info.factors):
        return WIDTH_FACTOR
    raise ConfigError(f"benchmark package {info.package!r} cannot be widened: its meta.py declares no factor "
                      f"{WIDTH_FACTOR!r} (a registry.Factor whose value its model builder multiplies its layer "
                      f"sizes by). Declare one, or take {VARIANT!r} out of the block's variants")


def check_configurable(info, where: str) -> None:
    """A configuration error (with ``where``, the block's key path) when a block asks for ``wider`` but its
    package cannot be widened."""
    try:
        width_factor_of(info)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def match_width(count: Callable[[float], int], target: int, *, resolution: int = RESOLUTION,
                max_multiplier: float = MAX_MULTIPLIER) -> tuple[float, int]:
    """(multiplier, its count) whose ``count(multiplier)`` is closest to ``target``, over the multipliers
    ``k / resolution`` from 1 up to ``max_multiplier``; ``count`` must be non-decreasing (it is checked
    where it is evaluated). Multiplier 1 when ``count(1) >= target``."""
    if target < 1:
        raise ValueError(f"the target parameter count must be positive, got {target}")
    seen: dict[int, int] = {}

    def at(k: int) -> int:
        if k not in seen:
            seen[k] = int(count(k / resolution))
            below = [seen[j] for j in seen if j < k]
            above = [seen[j] for j in seen if j > k]
            if (below and max(below) > seen[k]) or (above and min(above) < seen[k]):
                raise ValueError(f"the parameter count is not monotone in the width multiplier near {k / resolution} "
                                 f"(counts {sorted(seen.items())}): the width cannot be matched by search")
        return seen[k]

    lo = resolution
    if at(lo) >= target:
        return 1.0, at(lo)
    hi = 2 * resolution
    while at(hi) < target:
        lo, hi = hi, 2 * hi
        if hi > max_multiplier * resolution:
            raise UserError(f"no network up to {max_multiplier}x as wide has {target} parameters "
                            f"(at {lo / resolution}x: {at(lo)}); the reference's final network is too large to match")
    while hi - lo > 1:  # invariant: at(lo) < target <= at(hi)
        mid = (lo + hi) // 2
        if at(mid) >= target:
            hi = mid
        else:
            lo = mid
    best = lo if target - at(lo) <= at(hi) - target else hi
    return best / resolution, at(best)


def reference_target(summary: dict) -> tuple[int, int]:
    """(parameters, dendrites) of the reference run's final network, from its summary.json."""
    try:
        return int(summary["params_final"]), int(summary["final_dendrites"])
    except (KeyError, TypeError, ValueError):
        raise UserError("the reference run's summary.json lacks params_final/final_dendrites; "
                        "rerun that run") from None


def widened_settings(settings: dict, width: float, factor: str = WIDTH_FACTOR) -> dict:
    """A copy of a run's settings that a benchmark builds at ``width`` (the run's own settings keep its
    factor values: its folder, records and pairing are those of its grid point)."""
    out = copy.deepcopy(settings)
    out["factors"] = {**out.get("factors", {}), factor: width}
    return out


def built_settings(settings: dict) -> dict:
    """The settings a finished or resumed run's network is built from: a ``wider`` run's at its matched width
    (recorded in its settings), any other run's as they are."""
    return widened_settings(settings, settings[VARIANT]["width"]) if VARIANT in settings else settings


def core_variant(variant: str) -> str:
    """The pb_core variant that trains (and reloads) a suite variant's network: the controls without
    dendrites (``baseline_matched``, ``wider``) are plain networks."""
    return "baseline" if variant in ("baseline_matched", VARIANT) else variant


def match(settings: dict, base_width: float, count: Callable[[dict], int], matched_to: str,
          reference_summary: dict, factor: str = WIDTH_FACTOR) -> WidthMatch:
    """The width match of a ``wider`` run with ``settings`` (its own width ``base_width``) against the
    finished reference run whose summary is ``reference_summary``. ``count(settings)`` is the parameter
    count of the network a benchmark builds from those settings."""
    target, dendrites = reference_target(reference_summary)
    multiplier, parameters = match_width(
        lambda m: count(widened_settings(settings, _width(base_width, m), factor)), target)
    return WidthMatch(matched_to, dendrites, target, base_width, multiplier, _width(base_width, multiplier),
                      parameters)


def saved_match(saved: dict | None, settings: dict, reference_summary: dict) -> WidthMatch | None:
    """The match recorded in a run's saved settings (its config.json, ``saved``) when it was made from the
    same settings and the same target: the search builds the model a dozen times, and need not run again."""
    if not isinstance(saved, dict) or not isinstance(saved.get(VARIANT), dict):
        return None
    record = saved[VARIANT]
    target, _ = reference_target(reference_summary)
    if {k: v for k, v in saved.items() if k != VARIANT} != settings or record.get("target_parameters") != target:
        return None
    try:
        return WidthMatch(**{k: record[k] for k in WidthMatch.__dataclass_fields__})
    except (KeyError, TypeError, ValueError):
        return None


def _width(base: float, multiplier: float) -> float:
    # rounded so that the recorded width reads as it was built (0.125 x 2.345 = 0.293125, not 0.29312500000000003)
    value = round(base * multiplier, 9)
    return int(value) if float(value).is_integer() else value
