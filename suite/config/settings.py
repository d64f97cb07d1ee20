"""The `settings:` of an experiment config (and its `fidelity:` mapping): typed, bounded,
checked without torch. `suite.config.experiment` applies them per strategy entry.

Each problem is reported as `<field path>: <value> ...; <what is allowed>`.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

DTYPES = ("float32", "float16", "bfloat16")
DEVICES = ("cpu", "cuda", "auto")
WORLD_MODES = ("real", "fake", "analytic")

MAX_COUNT = 2**31 - 1  # steps, batch, repeats: a C int on every rank
MAX_SEED = 2**63 - 1  # stored as a SQLite INTEGER (signed 64-bit); torch takes up to 2^64 - 1
MAX_THREADS = 1024  # OMP_NUM_THREADS of one rank
MAX_TIMEOUT_S = 1e6  # ~11.6 days; a datetime.timedelta in the process group
MAX_WORLD = 65536  # ranks of one run (a fake or analytic world emulates them in turn)
EXPERIMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


@dataclass(frozen=True)
class Settings:
    """Per-run settings; every field may be set in `settings:` or overridden per strategy."""

    steps: int | None = None  # None: the preset's default
    batch: int = 1
    seed: int = 0
    guidance: float | None = None  # None: the preset's default
    scheduler: str | None = None  # None: the preset's default
    dtype: str = "float32"
    device: str = "cpu"
    warmup_runs: int = 1
    repeats: int = 3
    threads_per_rank: int = 1
    timeout_s: float = 600.0
    weights: str | None = None
    # fake: one process emulates each rank, collectives move no data; analytic: the same on the
    # meta device, no compute at all: operators and collectives recorded (suite.worlds.analytic_run)
    world_mode: str = "real"
    # refuse runs whose estimated peak memory exceeds the device's (suite.config.memory); false: run
    memory_check: bool = True


def looks_local(weights: str) -> bool:
    """A path rather than a hub id ('org/name')."""
    return weights.startswith(("/", ".", "~")) or weights.count("/") != 1


# integer settings: (least, most)
_INT_RANGE = {
    "steps": (1, MAX_COUNT),
    "batch": (1, MAX_COUNT),
    "seed": (0, MAX_SEED),
    "warmup_runs": (0, MAX_COUNT),
    "repeats": (1, MAX_COUNT),
    "threads_per_rank": (1, MAX_THREADS),
}
_NUMBER_MAX = {"guidance": None, "timeout_s": MAX_TIMEOUT_S}
_CHOICES = {"dtype": DTYPES, "device": DEVICES, "world_mode": WORLD_MODES}
# the layouts workloads.models.pretrained_model loads: a saved model or a pipeline directory
WEIGHTS_LAYOUTS = ("config.json", "unet/config.json", "transformer/config.json")


def expand_path(value: str) -> Path:
    """`value` with a leading ~ expanded (left as written when that user has no home)."""
    try:
        return Path(value).expanduser()
    except RuntimeError:
        return Path(value)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_weights(value: str, where: str, problems: list[str]) -> str | None:
    """The weights setting, a local path expanded; None (and a problem) when it holds no model."""
    if not value.strip():
        problems.append(
            f"{where}: {value!r} is empty; give a local diffusers model or pipeline directory, "
            "or a hub id like 'org/name' (or leave it unset: packaged or random weights)"
        )
        return None
    if not looks_local(value):
        return value  # a hub id: checked when a rank downloads it
    path = expand_path(value)
    if not path.is_dir():
        problems.append(
            f"{where}: {value!r} is not a directory; give a local diffusers model or pipeline "
            "directory, or a hub id like 'org/name'"
        )
        return None
    if not any((path / layout).is_file() for layout in WEIGHTS_LAYOUTS):
        problems.append(
            f"{where}: {value!r} holds no model: none of {', '.join(WEIGHTS_LAYOUTS)} is in it; "
            "give a saved diffusers model directory (config.json) or a pipeline directory"
        )
        return None
    return str(path)


def check_settings(raw: Any, path: str, base: Settings, problems: list[str]) -> Settings:
    if raw is None:
        return base
    if not isinstance(raw, dict):
        problems.append(f"{path}: {raw!r} is not a mapping of setting names to values")
        return base
    allowed = [f.name for f in fields(Settings)]
    values = asdict(base)
    for key, value in raw.items():
        where = f"{path}.{key}"
        if key not in allowed:
            problems.append(f"{where}: unknown setting; allowed: {', '.join(allowed)}")
            continue
        if value is None and key in ("steps", "guidance", "scheduler", "weights"):
            values[key] = None  # the preset's default (weights: packaged or random)
            continue
        if key in _INT_RANGE:
            least, most = _INT_RANGE[key]
            if not is_int(value) or not least <= value <= most:
                problems.append(f"{where}: {value!r}; must be an integer >= {least} and <= {most}")
                continue
        elif key in _CHOICES:
            if not isinstance(value, str) or value not in _CHOICES[key]:
                problems.append(f"{where}: {value!r}; allowed: {', '.join(_CHOICES[key])}")
                continue
        elif key in _NUMBER_MAX:
            most = _NUMBER_MAX[key]
            if (
                not isinstance(value, int | float)
                or isinstance(value, bool)
                or not math.isfinite(value)
                or value <= 0
                or (most is not None and value > most)
            ):
                bound = f" and <= {most:g}" if most is not None else ""
                problems.append(f"{where}: {value!r}; must be a finite number > 0{bound}")
                continue
        elif key == "memory_check":
            if not isinstance(value, bool):
                problems.append(f"{where}: {value!r}; allowed: true, false")
                continue
        elif key in ("scheduler", "weights"):
            if not isinstance(value, str):
                problems.append(f"{where}: {value!r}; must be a string")
                continue
            if key == "weights":
                value = _check_weights(value, where, problems)
                if value is None:
                    continue
        values[key] = value
    return Settings(**values)


@dataclass(frozen=True)
class FidelitySettings:
    """The config's `fidelity:` mapping (suite.fidelity.score): scoring inputs, not run identity.

    fidelity: {reference: data/coco-val, weights_dir: ~/weights}
    """

    reference: str | None = None  # folder of ground-truth images: FID "vs ground truth"
    weights_dir: str | None = None  # Inception / AlexNet weights; None: $DIFFSCALE_WEIGHTS_DIR


def check_fidelity(raw: Any, problems: list[str]) -> FidelitySettings:
    if raw is None:
        return FidelitySettings()
    if not isinstance(raw, dict):
        problems.append(f"fidelity: {raw!r} must be a mapping with keys reference, weights_dir")
        return FidelitySettings()
    values: dict[str, str] = {}
    for key, value in raw.items():
        if key not in ("reference", "weights_dir"):
            problems.append(f"fidelity.{key}: unknown key; allowed: reference, weights_dir")
        elif value is not None and not isinstance(value, str):
            problems.append(f"fidelity.{key}: {value!r} must be a directory path")
        elif key == "reference" and value and not expand_path(value).is_dir():
            problems.append(f"fidelity.reference: {value!r} is not a directory of images")
        elif value:
            values[key] = str(expand_path(value))
    return FidelitySettings(**values)


_RESOLUTION = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?$")


def parse_resolution(value: Any) -> tuple[int, ...] | None:
    """(height, width) from an int (a square) or 'HxW'; (frames, height, width) from 'FxHxW' (a
    video clip); None when it is neither."""
    if is_int(value) and value > 0:
        return value, value
    if isinstance(value, str):
        m = _RESOLUTION.match(value)
        if m:
            parts = tuple(int(g) for g in m.groups() if g is not None)
            if all(v > 0 for v in parts):
                return parts
    return None


def as_list(raw: Any, path: str, problems: list[str]) -> list:
    if raw is None:
        return []
    if isinstance(raw, list):
        return raw
    problems.append(f"{path}: {raw!r} must be a list")
    return []
