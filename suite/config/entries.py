"""One `strategies:` entry of an experiment config: its degrees (one mapping per world size) and
its options (fixed values x sweep values), every bad field reported; torch-free.
"""

from __future__ import annotations

import itertools
from typing import Any

from suite.config.settings import MAX_WORLD, as_list, is_int
from suite.distributed.mesh import AXES, ParallelDims


def check_world_size(w: Any, where: str, problems: list[str]) -> bool:
    if not is_int(w) or not 1 <= w <= MAX_WORLD:
        problems.append(f"{where}: {w!r}; must be an integer >= 1 and <= {MAX_WORLD}")
        return False
    return True


def check_degree_map(degrees: Any, path: str, problems: list[str]) -> dict[str, int] | None:
    """`degrees:` as {axis: degree}, every bad axis and degree reported; None if any is bad."""
    if not isinstance(degrees, dict):
        problems.append(f"{path}.degrees: {degrees!r} must map axis names to degrees")
        return None
    before = len(problems)
    for axis, degree in degrees.items():
        if axis not in AXES:
            problems.append(f"{path}.degrees.{axis}: unknown mesh axis; allowed: {', '.join(AXES)}")
        elif not is_int(degree) or not 1 <= degree <= MAX_WORLD:
            problems.append(
                f"{path}.degrees.{axis}: {degree!r}; must be an integer >= 1 and <= {MAX_WORLD}"
            )
    if len(problems) > before:
        return None
    dims = ParallelDims.from_mapping(degrees)
    if dims.world_size > MAX_WORLD:
        problems.append(
            f"{path}.degrees: {degrees} makes a world of {dims.world_size} ranks; at most "
            f"{MAX_WORLD}"
        )
        return None
    return degrees


def check_shape(entry: dict, path: str, problems: list[str]) -> None:
    """What can be checked of an entry whose strategy is unknown: the form of its fields."""
    if entry.get("degrees") is not None:
        check_degree_map(entry["degrees"], path, problems)
    for i, w in enumerate(as_list(entry.get("world_sizes"), f"{path}.world_sizes", problems)):
        check_world_size(w, f"{path}.world_sizes[{i}]", problems)
    for key in ("options", "sweep"):
        raw = entry.get(key)
        if raw is not None and not isinstance(raw, dict):
            problems.append(f"{path}.{key}: {raw!r} must be a mapping")
    sweep = entry.get("sweep")
    for name, values in (sweep if isinstance(sweep, dict) else {}).items():
        if not isinstance(values, list) or not values:
            problems.append(f"{path}.sweep.{name}: {values!r} must be a non-empty list")


def check_degrees(entry: dict, strategy, path: str, problems: list[str]) -> list[dict[str, int]]:
    """The list of degree mappings (one per world size) an entry asks for."""
    degrees, world_sizes = entry.get("degrees"), entry.get("world_sizes")
    if degrees is not None:
        if check_degree_map(degrees, path, problems) is None:
            return []
        dims = ParallelDims.from_mapping(degrees)
        foreign = [a for a in dims.active() if a not in strategy.axes]
        if foreign:
            allowed = ", ".join(strategy.axes) or "none (it runs on one device)"
            problems.append(
                f"{path}.degrees: axis {foreign} is not used by strategy '{strategy.name}'; "
                f"its axes: {allowed}"
            )
            return []
        sizes = as_list(world_sizes, f"{path}.world_sizes", problems) or [dims.world_size]
        bad = [w for w in sizes if w != dims.world_size]
        if bad:
            problems.append(
                f"{path}.degrees: {degrees} has product {dims.world_size} but world_sizes is "
                f"{sizes}; the product of the degrees must equal the world size"
            )
            return []
        return [dims.active()]
    out = []
    for i, w in enumerate(as_list(world_sizes, f"{path}.world_sizes", problems) or [1]):
        if not check_world_size(w, f"{path}.world_sizes[{i}]", problems):
            continue
        if w > 1 and not strategy.axes:
            problems.append(
                f"{path}.world_sizes[{i}]: {w}; strategy '{strategy.name}' runs on one device, "
                "so its world size must be 1"
            )
        else:
            out.append({strategy.axes[0]: w} if w > 1 else {})
    return out


def check_options(entry: dict, strategy, path: str, problems: list[str]) -> list[dict[str, Any]]:
    """Every combination of options (fixed options x sweep values) an entry asks for; every bad
    option and value is reported, and none is returned if there is one."""
    options = entry.get("options") or {}
    sweep = entry.get("sweep") or {}
    before = len(problems)
    for key, raw in (("options", options), ("sweep", sweep)):
        if not isinstance(raw, dict):
            problems.append(f"{path}.{key}: {raw!r} must be a mapping")
    if len(problems) > before:
        return []
    allowed = ", ".join(strategy.options) or "none"
    base, sweep_values = {}, []
    for name, value in options.items():
        where = f"{path}.options.{name}"
        if name not in strategy.options:
            problems.append(f"{where}: unknown option of '{strategy.name}'; allowed: {allowed}")
        elif name in sweep:
            problems.append(f"{where}: set in both options and sweep; give it in one of them")
        elif err := strategy.options[name].check(name, value):
            problems.append(f"{where}: {err}")
        else:
            base[name] = value
    for name, values in sweep.items():
        where = f"{path}.sweep.{name}"
        if name not in strategy.options:
            problems.append(f"{where}: unknown option of '{strategy.name}'; allowed: {allowed}")
        elif not isinstance(values, list) or not values:
            problems.append(f"{where}: {values!r} must be a non-empty list")
        else:
            errs = [e for v in values if (e := strategy.options[name].check(name, v))]
            problems.extend(f"{where}: {e}" for e in errs)
            sweep_values.append([(name, v) for v in values])
    if len(problems) > before:
        return []
    resolved = {k: o.default for k, o in strategy.options.items() if o.stored} | base
    return [resolved | dict(combo) for combo in itertools.product(*sweep_values)]
