"""Experiment configs: YAML -> typed, validated `ExperimentConfig` -> grid of `RunSpec`s.

Everything is checked here, before any process starts. Each problem is reported as
`<field path>: <value> ...; <what is allowed>`, and all problems of a file are reported at once.

    experiment: quickstart
    workloads: [tiny-pixart-alpha, tiny-sdxl]
    resolutions: [256, 256x512]          # pixels; an int is a square; video: 81x480x832
    settings: {steps: 4, batch: 2, repeats: 3}
    strategies:
      - name: none
      - name: data
        world_sizes: [2]
      - name: data
        degrees: {data: 2}
        settings: {batch: 4}              # per-entry override of settings
        sweep: {some_option: [a, b]}      # one run per value (strategy options)

Checking is cheap and torch-free (milliseconds: this module, suite.parallel and
workloads.presets / workloads.limits import neither torch nor diffusers); only a valid config
goes on to what needs torch (resolving `device: auto`, counting GPUs) and, in `diffscale run`,
to the memory check (suite.config.memory).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from suite import parallel
from suite.config.entries import check_degrees, check_options, check_shape
from suite.config.settings import (
    EXPERIMENT_NAME,
    FidelitySettings,
    Settings,
    as_list,
    check_fidelity,
    check_settings,
    looks_local,
    parse_resolution,
)
from suite.distributed.mesh import AXES, ParallelDims
from suite.parallel.checks import video_unsupported


class ConfigError(ValueError):
    """A config that cannot run; the message lists every problem found."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = problems
        super().__init__(f"{source} is invalid:\n" + "\n".join(f"  - {p}" for p in problems))


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
    memory_check: bool = True  # suite.config.memory refuses it when it would not fit (not identity)
    frames: int = 0  # video presets: frames of each clip (0: an image workload)

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
        d.pop("memory_check")
        if not self.frames:
            d.pop("frames")  # image runs keep the identity (and run ids) they had before video
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
        fake = f" ({self.world_mode} world)" if self.world_mode != "real" else ""
        size = f"{self.frames}x" * bool(self.frames) + f"{self.height}x{self.width}"
        name = f"{self.workload} {size} {self.strategy}[{degrees}]{fake}"
        return f"{name} {opts}".strip()


@dataclass(frozen=True)
class ExperimentConfig:
    experiment: str
    description: str
    runs: tuple[RunSpec, ...]
    source: str = ""
    warnings: tuple[str, ...] = field(default_factory=tuple)
    fidelity: FidelitySettings = field(default_factory=FidelitySettings)


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _sizes_for(preset, resolutions: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """The resolutions of the preset's kind: FxHxW clips for a video model, images otherwise."""
    return [r for r in resolutions if (len(r) == 3) == preset.video]


def _check_geometry(presets: list, resolutions: list[tuple[int, ...]], problems: list[str]):
    """(preset name, *size) tuples the presets cannot take, each reported once. Image sizes go
    to image presets and FxHxW clips to video presets; a preset given none of its kind is an
    error."""
    from workloads.limits import check_resolution
    from workloads.video_size import check_video_size, format_size, video_rule

    bad = set()
    for preset in presets:
        if resolutions and not _sizes_for(preset, resolutions):
            if preset.video:
                example = f"{preset.native_frames}x{preset.native_resolution}x{preset.native_width}"
                problems.append(
                    f"resolutions: {preset.name} is a video model and no resolution is a clip; "
                    f"add frames x height x width, e.g. '{example}' ({video_rule(preset)})"
                )
            else:
                problems.append(
                    f"resolutions: {preset.name} is an image model and every resolution is a "
                    "frames x height x width clip; add an int or 'HxW'"
                )
        for size in _sizes_for(preset, resolutions):
            if len(size) == 3:
                try:
                    check_video_size(preset, *size)
                except ValueError as e:
                    problems.append(f"resolutions: {format_size(size)} for {preset.name}: {e}")
                    bad.add((preset.name, *size))
    images = [r for r in resolutions if len(r) == 2]
    for preset, (h, w) in itertools.product([p for p in presets if not p.video], images):
        multiple = preset.vae_scale_factor * preset.spatial_multiple
        if h % multiple or w % multiple:
            problems.append(
                f"resolutions: {h}x{w} for {preset.name}; height and width must be "
                f"multiples of {multiple} (VAE factor {preset.vae_scale_factor} x "
                f"latent multiple {preset.spatial_multiple})"
            )
            bad.add((preset.name, h, w))
            continue
        try:
            check_resolution(preset, h, w)
        except ValueError as e:
            problems.append(f"resolutions: {h}x{w} for {preset.name}: {e}")
            bad.add((preset.name, h, w))
    return bad


def _settings_path(entry: dict, key: str, path: str) -> str:
    """Where setting `key` of an entry's runs was written: the entry's settings or the top's."""
    own = entry.get("settings")
    return f"{path}.settings.{key}" if isinstance(own, dict) and key in own else f"settings.{key}"


def parse_config(raw: Any, source: str = "config") -> ExperimentConfig:
    """Validate a loaded YAML document and expand its grid; raise ConfigError on any problem.

    Every problem of the document is reported, each once. Checks that need torch (resolving
    `device: auto`, counting GPUs) run only when the torch-free ones all passed.
    """
    from workloads.limits import check_scheduler, check_steps
    from workloads.presets import get_preset

    problems: list[str] = []
    if raw is None:
        raise ConfigError(["top level: the document is empty; expected a mapping"], source)
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
    if not isinstance(experiment, str) or not EXPERIMENT_NAME.fullmatch(experiment):
        problems.append(
            f"experiment: {experiment!r}; must be a name of up to 100 letters, digits, '_', '.', "
            "'-' starting with a letter or digit (it names the results directory: no paths)"
        )
    presets = []
    names = as_list(raw.get("workloads"), "workloads", problems)
    if not names and isinstance(raw.get("workloads"), list | None):
        problems.append("workloads: missing or empty; name at least one preset")
    for i, name in enumerate(names):
        try:
            if not isinstance(name, str):
                raise ValueError(f"{name!r} must be a preset name (a string)")
            presets.append(get_preset(name))
        except ValueError as e:
            problems.append(f"workloads[{i}]: {e}")
    resolutions = []
    for i, r in enumerate(as_list(raw.get("resolutions"), "resolutions", problems)):
        parsed = parse_resolution(r)
        if parsed is None:
            problems.append(
                f"resolutions[{i}]: {r!r}; write a positive int (square), 'HxW', or 'FxHxW' "
                "(frames x height x width, video presets)"
            )
        else:
            resolutions.append(parsed)
    if not resolutions and not any(p.startswith("resolutions") for p in problems):
        problems.append("resolutions: missing or empty; e.g. [256] or ['512x1024']")
    bad_geometry = _check_geometry(presets, resolutions, problems)
    settings_before = len(problems)
    settings = check_settings(raw.get("settings"), "settings", Settings(), problems)
    top_settings_ok = len(problems) == settings_before
    fidelity = check_fidelity(raw.get("fidelity"), problems)

    entries = as_list(raw.get("strategies"), "strategies", problems)
    if not entries and isinstance(raw.get("strategies"), list | None):
        problems.append(
            "strategies: missing or empty; e.g. [{name: none}, {name: data, world_sizes: [2]}]"
        )
    runs: list[tuple[str, RunSpec]] = []
    for i, entry in enumerate(entries):
        path = f"strategies[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{path}: {entry!r} must be a mapping with at least 'name'")
            continue
        extra = set(entry) - {"name", "degrees", "world_sizes", "options", "sweep", "settings"}
        if extra:
            problems.append(
                f"{path}: unknown key(s) {sorted(extra, key=str)}; allowed: name, degrees, "
                "world_sizes, options, sweep, settings"
            )
        before = len(problems)
        s = check_settings(entry.get("settings"), f"{path}.settings", settings, problems)
        settings_ok = top_settings_ok and len(problems) == before
        strategy = None
        if "name" not in entry:
            problems.append(
                f"{path}.name: missing; allowed: {', '.join(sorted(parallel.REGISTRY))}, or "
                "parts joined by '+'"
            )
        else:
            try:
                strategy = parallel.get(entry["name"])
            except ValueError as e:
                problems.append(f"{path}.name: {e}")
        if strategy is None:
            check_shape(entry, path, problems)
            continue
        degree_sets = check_degrees(entry, strategy, path, problems)
        option_sets = check_options(entry, strategy, path, problems)
        for preset, size, degrees, options in itertools.product(
            presets, resolutions, degree_sets, option_sets
        ):
            if size not in _sizes_for(preset, resolutions):
                continue  # a size of the other kind (clip / image): reported above if none fits
            frames, (h, w) = (size[0], size[1:]) if len(size) == 3 else (0, size)
            where = f"{path} on {preset.name} {'x'.join(map(str, size))}"
            if preset.video and (why := video_unsupported(strategy.name, preset.family)):
                problems.append(
                    f"{path}.name: strategy '{strategy.name}' cannot run video model "
                    f"'{preset.name}': {why}"
                )
                continue
            if preset.family not in strategy.families:
                problems.append(
                    f"{path}.name: strategy '{strategy.name}' does not support workload "
                    f"'{preset.name}' (family {preset.family}); it supports families: "
                    f"{', '.join(sorted(strategy.families))}"
                )
                continue
            if (preset.name, *size) in bad_geometry or not settings_ok:
                continue  # reported above; checks on top of a bad value would only echo it
            analytic = s.world_mode == "analytic"
            if analytic and strategy.library_collectives:
                problems.append(
                    f"{_settings_path(entry, 'world_mode', path)}: strategy '{strategy.name}' "
                    "communicates through the library's own collectives, which an analytic world "
                    "cannot emulate (it launches none and logs only the ledger's); run it in a "
                    "real or fake world"
                )
                continue
            scheduler = s.scheduler or preset.default_scheduler
            steps = s.steps or preset.default_steps
            try:
                check_scheduler(scheduler, preset)
            except ValueError as e:
                problems.append(f"{_settings_path(entry, 'scheduler', path)}: {e}")
                continue
            try:
                check_steps(steps, scheduler)
            except ValueError as e:
                problems.append(f"{_settings_path(entry, 'steps', path)}: {e}")
                continue
            spec = RunSpec(
                experiment=experiment or "",
                workload=preset.name,
                height=h,
                width=w,
                steps=steps,
                scheduler=scheduler,
                guidance=float(s.guidance if s.guidance is not None else preset.default_guidance),
                batch=s.batch,
                seed=s.seed,
                dtype=s.dtype,
                device=s.device,  # 'auto' is resolved below, once everything else passed
                strategy=strategy.name,
                degrees=tuple((a, d) for a, d in degrees.items()),
                options=tuple(sorted(options.items())),
                world_size=ParallelDims.from_mapping(degrees).world_size,
                # an analytic world times nothing: one loop, no warm-up, whatever was set
                warmup_runs=0 if analytic else s.warmup_runs,
                repeats=1 if analytic else s.repeats,
                threads_per_rank=s.threads_per_rank,
                timeout_s=float(s.timeout_s),
                weights=s.weights,
                world_mode=s.world_mode,
                memory_check=s.memory_check,
                frames=frames,
            )
            if s.weights is not None and not _weights_fit(s.weights, preset):
                problems.append(
                    f"{_settings_path(entry, 'weights', path)}: {s.weights!r} is a pipeline "
                    f"directory without {preset.weights_subfolder}/config.json, the subfolder "
                    f"{preset.name} loads"
                )
                continue
            if strategy.validate is not None:
                errs = strategy.validate(spec, preset)
                if errs:
                    problems.extend(f"{where}: {e}" for e in errs)
                    continue
            runs.append((where, spec))
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)), source)
    specs, notes = _device_checks(runs, source)
    unique = list(dict.fromkeys(specs))  # the same run listed twice is run once
    return ExperimentConfig(
        experiment=experiment,
        description=str(raw.get("description", "")),
        runs=tuple(unique),
        source=source,
        warnings=tuple(dict.fromkeys(notes)),
        fidelity=fidelity,
    )


def _weights_fit(weights: str, preset) -> bool:
    """False for a local pipeline directory lacking the preset's subfolder (hub ids pass)."""
    path = Path(weights)
    if not looks_local(weights) or (path / "config.json").is_file():
        return True
    return (path / preset.weights_subfolder / "config.json").is_file()


def _device_checks(runs: list[tuple[str, RunSpec]], source: str):
    """Second phase, on a config whose torch-free checks passed: resolve `device: auto`, check
    GPU counts, note CPU oversubscription. Imports torch only when a run asks for a GPU."""
    problems, notes, specs = [], [], []
    for where, spec in runs:
        device = _resolve_device(spec.device)
        if device != spec.device:
            spec = dataclasses.replace(spec, device=device)
        if spec.world_mode in ("fake", "analytic"):
            pass  # one process emulates the ranks in turn: any world size fits
        elif device == "cuda":
            import torch

            if spec.world_size > torch.cuda.device_count():
                problems.append(
                    f"{where}: world size {spec.world_size} needs {spec.world_size} GPUs; this "
                    f"machine has {torch.cuda.device_count()} (use torchrun across nodes)"
                )
                continue
        elif spec.world_size * spec.threads_per_rank > (os.cpu_count() or 1):
            notes.append(
                f"{where}: world {spec.world_size} x {spec.threads_per_rank} threads exceeds the "
                f"{os.cpu_count()} CPU cores; its scaling numbers will be oversubscribed"
            )
        specs.append(spec)
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)), source)
    return specs, notes


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml's safe loader, noting every key that a mapping repeats (YAML keeps the last value
    silently) so that the config check reports it with its line numbers."""

    def __init__(self, stream):
        super().__init__(stream)
        self.duplicates: list[str] = []

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # '<<' merges: overriding merged keys is what they are for
                key = self.construct_object(key_node, deep=True)
                try:
                    line = first.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:
                    continue  # an unhashable key: the base class reports it
                if line != key_node.start_mark.line + 1:
                    self.duplicates.append(
                        f"line {key_node.start_mark.line + 1}: duplicate key {key!r} (first at "
                        f"line {line}); YAML would keep only the last value: give each key once"
                    )
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate a YAML experiment file (UTF-8; keys unique within each mapping)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError([f"{path}: no such file"], str(path))
    if not path.is_file():
        raise ConfigError([f"{path}: not a file (give an experiment YAML file)"], str(path))
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError([f"{path}: cannot be read: {e.strerror or e}"], str(path)) from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            [
                f"{path}: not UTF-8 text: byte 0x{data[e.start]:02x} at offset {e.start}; save "
                "the config as UTF-8"
            ],
            str(path),
        ) from e
    loader = _UniqueKeyLoader(text)
    try:
        raw = loader.get_single_data()
    except yaml.YAMLError as e:
        raise ConfigError([f"not valid YAML: {e}"], str(path)) from e
    finally:
        loader.dispose()
    try:
        config = parse_config(raw, str(path))
    except ConfigError as e:
        raise ConfigError(loader.duplicates + e.problems, str(path)) from None
    if loader.duplicates:
        raise ConfigError(loader.duplicates, str(path))
    return config


__all__ = [
    "AXES",
    "ConfigError",
    "ExperimentConfig",
    "FidelitySettings",
    "RunSpec",
    "Settings",
    "load_config",
    "parse_config",
]
