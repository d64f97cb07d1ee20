"""Experiment configs: YAML -> typed, validated `ExperimentConfig` -> grid of `RunSpec`s.

Everything is checked here, before any process starts. Each problem is reported as
`<field path>: <value> ...; <what is allowed>`, and all problems of a file are reported at once.

    experiment: quickstart
    workloads: [tiny-pixart-alpha, tiny-sdxl]
    resolutions: [256, 256x512]          # pixels; an int is a square
    settings: {steps: 4, batch: 2, repeats: 3}
    strategies:
      - name: none
      - name: data
        world_sizes: [2]
      - name: data
        degrees: {data: 2}
        settings: {batch: 4}              # per-entry override of settings
        sweep: {some_option: [a, b]}      # one run per value (strategy options)
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from suite import parallel
from suite.mesh import AXES, ParallelDims

DTYPES = ("float32", "float16", "bfloat16")
DEVICES = ("cpu", "cuda", "auto")
WORLD_MODES = ("real", "fake")


class ConfigError(ValueError):
    """A config that cannot run; the message lists every problem found."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = problems
        super().__init__(f"{source} is invalid:\n" + "\n".join(f"  - {p}" for p in problems))


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
    world_mode: str = "real"  # fake: one process emulates each rank, collectives move no data


def _looks_local(weights: str) -> bool:
    """A path rather than a hub id ('org/name')."""
    return weights.startswith(("/", ".", "~")) or weights.count("/") != 1


_INT_MIN = {
    "steps": 1,
    "batch": 1,
    "seed": 0,
    "warmup_runs": 0,
    "repeats": 1,
    "threads_per_rank": 1,
}


def _check_settings(raw: Any, path: str, base: Settings, problems: list[str]) -> Settings:
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
        if key in _INT_MIN:
            ok_none = key == "steps" and value is None
            if not ok_none and (
                not isinstance(value, int) or isinstance(value, bool) or value < _INT_MIN[key]
            ):
                problems.append(f"{where}: {value!r}; must be an integer >= {_INT_MIN[key]}")
                continue
        elif key == "dtype" and value not in DTYPES:
            problems.append(f"{where}: {value!r}; allowed: {', '.join(DTYPES)}")
            continue
        elif key == "device" and value not in DEVICES:
            problems.append(f"{where}: {value!r}; allowed: {', '.join(DEVICES)}")
            continue
        elif key == "world_mode" and value not in WORLD_MODES:
            problems.append(f"{where}: {value!r}; allowed: {', '.join(WORLD_MODES)}")
            continue
        elif (
            key in ("guidance", "timeout_s")
            and value is not None
            and (not isinstance(value, int | float) or isinstance(value, bool) or value <= 0)
        ):
            problems.append(f"{where}: {value!r}; must be a number > 0")
            continue
        elif key in ("scheduler", "weights") and value is not None and not isinstance(value, str):
            problems.append(f"{where}: {value!r}; must be a string")
            continue
        elif (
            key == "weights"
            and value is not None
            and _looks_local(value)
            and not Path(value).expanduser().is_dir()
        ):
            problems.append(
                f"{where}: {value!r} is not a directory; give a local diffusers model or "
                "pipeline directory, or a hub id like 'org/name'"
            )
            continue
        values[key] = value
    return Settings(**values)


@dataclass(frozen=True)
class RunSpec:
    """One fully resolved run: what every rank needs to reproduce it."""

    experiment: str
    workload: str
    height: int
    width: int
    steps: int
    scheduler: str
    guidance: float
    batch: int
    seed: int
    dtype: str
    device: str  # cpu | cuda (resolved)
    strategy: str
    degrees: tuple[tuple[str, int], ...]  # active axes, outermost first
    options: tuple[tuple[str, Any], ...]
    world_size: int
    warmup_runs: int
    repeats: int
    threads_per_rank: int
    timeout_s: float
    weights: str | None = None
    world_mode: str = "real"

    @property
    def backend(self) -> str:
        return "nccl" if self.device == "cuda" else "gloo"

    @property
    def dims(self) -> ParallelDims:
        return ParallelDims.from_mapping(dict(self.degrees))

    @property
    def options_dict(self) -> dict[str, Any]:
        return dict(self.options)

    def identity(self) -> dict[str, Any]:
        """The fields that decide what a run computes and measures (not how long we wait)."""
        d = asdict(self)
        d.pop("experiment")
        d.pop("timeout_s")
        return d

    @property
    def config_hash(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def run_id(self) -> str:
        blob = self.experiment + "/" + self.config_hash
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def label(self) -> str:
        degrees = " ".join(f"{a}={d}" for a, d in self.degrees) or "single"
        opts = " ".join(f"{k}={v}" for k, v in self.options)
        fake = " (fake world)" if self.world_mode == "fake" else ""
        name = f"{self.workload} {self.height}x{self.width} {self.strategy}[{degrees}]{fake}"
        return f"{name} {opts}".strip()


@dataclass(frozen=True)
class FidelitySettings:
    """The config's `fidelity:` mapping (suite.fidelity.score): scoring inputs, not run identity.

    fidelity: {reference: data/coco-val, weights_dir: ~/weights}
    """

    reference: str | None = None  # folder of ground-truth images: FID "vs ground truth"
    weights_dir: str | None = None  # Inception / AlexNet weights; None: $DIFFSCALE_WEIGHTS_DIR


def _check_fidelity(raw: Any, problems: list[str]) -> FidelitySettings:
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
        elif key == "reference" and value and not Path(value).expanduser().is_dir():
            problems.append(f"fidelity.reference: {value!r} is not a directory of images")
        elif value:
            values[key] = str(Path(value).expanduser())
    return FidelitySettings(**values)


@dataclass(frozen=True)
class ExperimentConfig:
    experiment: str
    description: str
    runs: tuple[RunSpec, ...]
    source: str = ""
    warnings: tuple[str, ...] = field(default_factory=tuple)
    fidelity: FidelitySettings = field(default_factory=FidelitySettings)


_RESOLUTION = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def _parse_resolution(value: Any) -> tuple[int, int] | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value, value
    if isinstance(value, str):
        m = _RESOLUTION.match(value)
        if m and int(m[1]) > 0 and int(m[2]) > 0:
            return int(m[1]), int(m[2])
    return None


def _as_list(raw: Any, path: str, problems: list[str]) -> list:
    if raw is None:
        return []
    if isinstance(raw, list):
        return raw
    problems.append(f"{path}: {raw!r} must be a list")
    return []


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_degrees(entry: dict, strategy, path: str, problems: list[str]) -> list[dict[str, int]]:
    """The list of degree mappings (one per world size) an entry asks for."""
    degrees, world_sizes = entry.get("degrees"), entry.get("world_sizes")
    if degrees is not None:
        if not isinstance(degrees, dict):
            problems.append(f"{path}.degrees: {degrees!r} must map axis names to degrees")
            return []
        try:
            dims = ParallelDims.from_mapping(degrees)
        except ValueError as e:
            problems.append(f"{path}.degrees: {e}")
            return []
        foreign = [a for a in dims.active() if a not in strategy.axes]
        if foreign:
            allowed = ", ".join(strategy.axes) or "none (it runs on one device)"
            problems.append(
                f"{path}.degrees: axis {foreign} is not used by strategy '{strategy.name}'; "
                f"its axes: {allowed}"
            )
            return []
        sizes = _as_list(world_sizes, f"{path}.world_sizes", problems) or [dims.world_size]
        bad = [w for w in sizes if w != dims.world_size]
        if bad:
            problems.append(
                f"{path}.degrees: {degrees} has product {dims.world_size} but world_sizes is "
                f"{sizes}; the product of the degrees must equal the world size"
            )
            return []
        return [dims.active()]
    out = []
    for i, w in enumerate(_as_list(world_sizes, f"{path}.world_sizes", problems) or [1]):
        if not isinstance(w, int) or isinstance(w, bool) or w < 1:
            problems.append(f"{path}.world_sizes[{i}]: {w!r}; must be an integer >= 1")
        elif w > 1 and not strategy.axes:
            problems.append(
                f"{path}.world_sizes[{i}]: {w}; strategy '{strategy.name}' runs on one device, "
                "so its world size must be 1"
            )
        else:
            out.append({strategy.axes[0]: w} if w > 1 else {})
    return out


def _check_options(entry: dict, strategy, path: str, problems: list[str]) -> list[dict[str, Any]]:
    """Every combination of options (fixed options x sweep values) an entry asks for."""
    options = entry.get("options") or {}
    sweep = entry.get("sweep") or {}
    for key, raw in (("options", options), ("sweep", sweep)):
        if not isinstance(raw, dict):
            problems.append(f"{path}.{key}: {raw!r} must be a mapping")
            return []
    base = {}
    for name, value in {**options, **{k: None for k in sweep}}.items():
        where = f"{path}.{'sweep' if name in sweep else 'options'}.{name}"
        if name not in strategy.options:
            allowed = ", ".join(strategy.options) or "none"
            problems.append(f"{where}: unknown option of '{strategy.name}'; allowed: {allowed}")
            return []
        if name in options and name not in sweep:
            err = strategy.options[name].check(name, value)
            if err:
                problems.append(f"{where}: {err}")
                return []
            base[name] = value
    sweep_values = []
    for name, values in sweep.items():
        if not isinstance(values, list) or not values:
            problems.append(f"{path}.sweep.{name}: {values!r} must be a non-empty list")
            return []
        for v in values:
            err = strategy.options[name].check(name, v)
            if err:
                problems.append(f"{path}.sweep.{name}: {err}")
                return []
        sweep_values.append([(name, v) for v in values])
    resolved = {k: o.default for k, o in strategy.options.items()} | base
    return [resolved | dict(combo) for combo in itertools.product(*sweep_values)]


def parse_config(raw: Any, source: str = "config") -> ExperimentConfig:
    """Validate a loaded YAML document and expand its grid; raise ConfigError on any problem."""
    import workloads

    problems: list[str] = []
    notes: list[str] = []
    if not isinstance(raw, dict):
        raise ConfigError([f"top level: expected a mapping, got {type(raw).__name__}"], source)
    known = {
        "experiment",
        "description",
        "workloads",
        "resolutions",
        "settings",
        "strategies",
        "fidelity",
    }
    for key in raw:
        if key not in known:
            problems.append(f"{key}: unknown key; allowed: {', '.join(sorted(known))}")
    experiment = raw.get("experiment")
    if not isinstance(experiment, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", experiment or ""):
        problems.append(
            f"experiment: {experiment!r}; must be a name of letters, digits, '_', '.', '-'"
        )
    presets = []
    names = _as_list(raw.get("workloads"), "workloads", problems)
    if not names:
        problems.append("workloads: missing or empty; name at least one preset")
    for i, name in enumerate(names):
        try:
            presets.append(workloads.get_preset(name))
        except ValueError as e:
            problems.append(f"workloads[{i}]: {e}")
    resolutions = []
    for i, r in enumerate(_as_list(raw.get("resolutions"), "resolutions", problems)):
        parsed = _parse_resolution(r)
        if parsed is None:
            problems.append(f"resolutions[{i}]: {r!r}; write a positive int (square) or 'HxW'")
        else:
            resolutions.append(parsed)
    if not resolutions and not any(p.startswith("resolutions") for p in problems):
        problems.append("resolutions: missing or empty; e.g. [256] or ['512x1024']")
    settings = _check_settings(raw.get("settings"), "settings", Settings(), problems)
    fidelity = _check_fidelity(raw.get("fidelity"), problems)

    entries = _as_list(raw.get("strategies"), "strategies", problems)
    if not entries:
        problems.append(
            "strategies: missing or empty; e.g. [{name: none}, {name: data, world_sizes: [2]}]"
        )
    runs: list[RunSpec] = []
    for i, entry in enumerate(entries):
        path = f"strategies[{i}]"
        if not isinstance(entry, dict) or "name" not in entry:
            problems.append(f"{path}: {entry!r} must be a mapping with at least 'name'")
            continue
        extra = set(entry) - {"name", "degrees", "world_sizes", "options", "sweep", "settings"}
        if extra:
            problems.append(
                f"{path}: unknown key(s) {sorted(extra)}; allowed: name, degrees, world_sizes, "
                "options, sweep, settings"
            )
        try:
            strategy = parallel.get(entry["name"])
        except ValueError as e:
            problems.append(f"{path}.name: {e}")
            continue
        degree_sets = _check_degrees(entry, strategy, path, problems)
        option_sets = _check_options(entry, strategy, path, problems)
        s = _check_settings(entry.get("settings"), f"{path}.settings", settings, problems)
        device = _resolve_device(s.device)
        for preset, (h, w), degrees, options in itertools.product(
            presets, resolutions, degree_sets, option_sets
        ):
            where = f"{path} on {preset.name} {h}x{w}"
            if preset.family not in strategy.families:
                problems.append(
                    f"{path}.name: strategy '{strategy.name}' does not support workload "
                    f"'{preset.name}' (family {preset.family}); it supports families: "
                    f"{', '.join(sorted(strategy.families))}"
                )
                continue
            multiple = preset.vae_scale_factor * preset.spatial_multiple
            if h % multiple or w % multiple:
                problems.append(
                    f"resolutions: {h}x{w} for {preset.name}; height and width must be "
                    f"multiples of {multiple} (VAE factor {preset.vae_scale_factor} x "
                    f"latent multiple {preset.spatial_multiple})"
                )
                continue
            scheduler = s.scheduler or preset.default_scheduler
            try:
                workloads.make_scheduler(scheduler, preset, steps=1, height=h, width=w)
            except ValueError as e:
                problems.append(f"{path}.settings.scheduler: {e}")
                continue
            world = ParallelDims.from_mapping(degrees).world_size
            spec = RunSpec(
                experiment=experiment or "",
                workload=preset.name,
                height=h,
                width=w,
                steps=s.steps or preset.default_steps,
                scheduler=scheduler,
                guidance=float(s.guidance if s.guidance is not None else preset.default_guidance),
                batch=s.batch,
                seed=s.seed,
                dtype=s.dtype,
                device=device,
                strategy=strategy.name,
                degrees=tuple((a, d) for a, d in degrees.items()),
                options=tuple(sorted(options.items())),
                world_size=world,
                warmup_runs=s.warmup_runs,
                repeats=s.repeats,
                threads_per_rank=s.threads_per_rank,
                timeout_s=float(s.timeout_s),
                weights=s.weights,
                world_mode=s.world_mode,
            )
            if strategy.validate is not None:
                errs = strategy.validate(spec, preset)
                if errs:
                    problems.extend(f"{where}: {e}" for e in errs)
                    continue
            if s.world_mode == "fake":
                pass  # one process emulates the ranks in turn: any world size fits
            elif device == "cuda":
                import torch

                if world > torch.cuda.device_count():
                    problems.append(
                        f"{path}: world size {world} needs {world} GPUs; this machine has "
                        f"{torch.cuda.device_count()} (use torchrun across nodes)"
                    )
                    continue
            elif world * s.threads_per_rank > (os.cpu_count() or 1):
                notes.append(
                    f"{where}: world {world} x {s.threads_per_rank} threads exceeds the "
                    f"{os.cpu_count()} CPU cores; its scaling numbers will be oversubscribed"
                )
            runs.append(spec)
    if problems:
        raise ConfigError(problems, source)
    unique = list(dict.fromkeys(runs))  # the same run listed twice is run once
    return ExperimentConfig(
        experiment=experiment,
        description=str(raw.get("description", "")),
        runs=tuple(unique),
        source=source,
        warnings=tuple(dict.fromkeys(notes)),
        fidelity=fidelity,
    )


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate a YAML experiment file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"{path}: no such file"], str(path))
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError([f"not valid YAML: {e}"], str(path)) from e
    return parse_config(raw, str(path))


__all__ = [
    "AXES",
    "ConfigError",
    "ExperimentConfig",
    "RunSpec",
    "Settings",
    "load_config",
    "parse_config",
]
