"""Parallel strategies: a registry of `Strategy` entries, one module per family.

A strategy's `apply` takes the built workload and the rank's `Comm` and returns a
`Parallelized`: the denoiser to call (full latent in, full prediction out, on every rank), the
inputs this rank denoises, and how final latents are gathered. Strategies swap or wrap modules;
they never fork diffusers code, and every collective goes through `suite.distributed.comm`.

Hybrids are named by joining strategies with '+' ("cfg+ulysses", "data+cfg+ring"): `get`
synthesizes a Strategy whose axes are the union of the parts', families the intersection,
options the union, and whose validation runs every part's. Its apply composes the parts in one
fixed order, outermost first along the mesh axes (data, cfg, pipefusion, ring, ulysses, tensor,
patch): each part sees the workload as the parts outside it left it (cfg: B images without a
CFG branch), and each part's denoiser calls the one of the parts inside it.

Importing this package loads no torch: the registry (registry.py) and every strategy's
validation (checks.py) are plain data and functions, so configs are checked in milliseconds.
A strategy's `apply` is a "module:function" path, imported when a rank first applies it.

May import `suite.distributed` (the mesh, the ledger) and `workloads`; `suite.config` reads its
registry and checks to validate configs, `suite.worlds` applies the strategies.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from suite.distributed.mesh import AXES

if TYPE_CHECKING:
    import torch

    from suite.distributed.comm import Comm


class Unsupported(RuntimeError):
    """Raised by `apply` when a method cannot run in this environment (e.g. a library lacks
    it on CPU); the run is stored as skipped with this reason, not as failed."""


@dataclass
class Parallelized:
    """What the runner drives on one rank after a strategy is applied."""

    denoiser: Callable[[torch.Tensor, torch.Tensor, dict], torch.Tensor]
    inputs: Any  # workloads.Inputs this rank denoises
    gather: Callable[[torch.Tensor], torch.Tensor] = lambda latents: latents
    modules: list[torch.nn.Module] = field(default_factory=list)  # held parameters, for memory
    warmup_steps: int = 0  # synchronous warm-up steps of the method (0: none)
    on_step: Callable[[int], None] | None = None  # told each step index before the step runs
    # bytes of activation buffers the method keeps per rank (DistriFusion's stale K/V, halos,
    # GroupNorm statistics), read after the timed loops; None: it keeps none
    buffer_bytes: Callable[[], int] | None = None
    # A strategy that drives its own loop (PipeFusion: patch-wise, per-patch scheduler state)
    # replaces workloads.denoise; same signature: (workload, denoiser, inputs, *, before_step,
    # after_step, finalize, fast_forward) -> final latents, calling the hooks around each of
    # its steps.
    loop: Callable[..., torch.Tensor] | None = None


@dataclass(frozen=True)
class Option:
    """A strategy option: its default and either the allowed values or a type with a minimum."""

    default: Any
    choices: tuple | None = None
    kind: type | None = None
    minimum: float | None = None
    # False: the default is resolved when the strategy is applied and a run stores the option
    # only when a config sets it, so adding an option keeps the identity (run id) of the runs
    # stored before it existed
    stored: bool = True

    def check(self, name: str, value: Any) -> str | None:
        # by type too: 0 == False and 1.0 == 1 must not pass for a boolean or an int choice
        if self.choices is not None and not any(
            type(value) is type(c) and value == c for c in self.choices
        ):
            return f"option '{name}' is {value!r}; allowed: {', '.join(map(repr, self.choices))}"
        if self.kind is not None and (not isinstance(value, self.kind) or isinstance(value, bool)):
            return f"option '{name}' is {value!r}; it must be of type {self.kind.__name__}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"option '{name}' is {value!r}; it must be a finite number"
        if self.minimum is not None and isinstance(value, int | float) and value < self.minimum:
            return f"option '{name}' is {value!r}; it must be >= {self.minimum}"
        return None


@dataclass(frozen=True)
class Strategy:
    name: str
    axes: tuple[str, ...]  # mesh axes it may use; the first is where a plain world size goes
    families: frozenset[str]  # workload families it supports
    exact: bool  # output equals the single-device output up to floating-point rounding
    paper: str
    # (workload, comm, options) -> Parallelized, or its "module:function" path (imported on use)
    apply: Callable[..., Parallelized] | str
    options: dict[str, Option] = field(default_factory=dict)
    # extra checks on (RunSpec, Preset) before any process starts; returns error sentences
    validate: Callable[[Any, Any], list[str]] | None = None
    # communicates through a library's own collectives, outside the ledger: it cannot run in an
    # analytic world, where no collective is launched
    library_collectives: bool = False


REGISTRY: dict[str, Strategy] = {}


def register(strategy: Strategy) -> Strategy:
    REGISTRY[strategy.name] = strategy
    return strategy


def _callable(apply: Callable[..., Parallelized] | str) -> Callable[..., Parallelized]:
    """A strategy's apply function, importing its module when given as "module:function"."""
    if callable(apply):
        return apply
    module, _, function = apply.partition(":")
    return getattr(importlib.import_module(module), function)


def get(name: str) -> Strategy:
    """The strategy called `name`; a '+'-joined name gives the composite of its parts."""
    if not isinstance(name, str) or not name.strip():
        allowed = ", ".join(sorted(REGISTRY))
        raise ValueError(f"strategy name {name!r} must be a non-empty string; allowed: {allowed}")
    if "+" in name:
        return _composite(name)
    if name not in REGISTRY:
        allowed = ", ".join(sorted(REGISTRY))
        raise ValueError(
            f"unknown strategy {name!r}; allowed: {allowed}, or parts joined by '+' "
            "(e.g. 'cfg+ulysses')"
        )
    return REGISTRY[name]


def apply(name: str, workload, comm: Comm, options: dict[str, Any]) -> Parallelized:
    """Parallelize `workload` on this rank with strategy `name`."""
    strategy = get(name)
    resolved = {k: opt.default for k, opt in strategy.options.items()} | dict(options)
    return _callable(strategy.apply)(workload, comm, resolved)


# -- composition ---------------------------------------------------------------------------


def _outermost_axis(strategy: Strategy) -> int:
    return min(AXES.index(a) for a in strategy.axes)


def _composite(name: str) -> Strategy:
    parts = [get(p.strip()) for p in name.split("+")]
    names = [p.name for p in parts]
    if len(set(names)) != len(names):
        raise ValueError(f"strategy {name!r} names a part twice; each part may appear once")
    single = [p.name for p in parts if not p.axes]
    if single:
        raise ValueError(f"strategy {name!r}: {single} run(s) on one device and cannot be composed")
    axes = [a for p in parts for a in p.axes]
    shared = sorted({a for a in axes if axes.count(a) > 1 and a not in ("ring", "ulysses")})
    if shared:
        raise ValueError(
            f"strategy {name!r}: parts share mesh axis {shared}; each axis has one owner"
        )
    # the fixed order: outermost mesh axis first (AXES), whatever order the name lists them in
    parts.sort(key=_outermost_axis)
    options: dict[str, Option] = {}
    for p in parts:
        for key, opt in p.options.items():
            if key in options and options[key] != opt:
                raise ValueError(f"strategy {name!r}: parts define option {key!r} differently")
            options[key] = opt

    def validate(spec, preset) -> list[str]:
        return [e for p in parts if p.validate is not None for e in p.validate(spec, preset)]

    return Strategy(
        name="+".join(p.name for p in parts),
        axes=tuple(a for a in AXES if a in axes),
        families=frozenset.intersection(*(p.families for p in parts)),
        exact=all(p.exact for p in parts),
        paper=" + ".join(p.paper for p in parts),
        apply=lambda workload, comm, opts: _apply_composed(parts, workload, comm, opts),
        options=options,
        validate=validate,
        library_collectives=any(p.library_collectives for p in parts),
    )


class _Inner:
    """Stands, for an outer part, for the denoiser the parts inside it will produce; attribute
    access (model, preset, ...) reaches the workload's real denoiser."""

    def __init__(self, real):
        self.real = real
        self.target = real

    def __call__(self, sample, timestep, cond):
        return self.target(sample, timestep, cond)

    def __getattr__(self, name):
        return getattr(self.real, name)


def _apply_composed(parts: list[Strategy], workload, comm: Comm, options: dict) -> Parallelized:
    # Parts sharing one apply are one transform reading several axes (ring and ulysses: the
    # sequence split over ring x ulysses): apply it once.
    applies = [_callable(p.apply) for p in parts]
    unique = [f for i, f in enumerate(applies) if all(f is not g for g in applies[:i])]
    links, pars, inputs = [], [], workload.inputs
    for apply_part in unique:  # outermost first
        link = _Inner(workload.denoiser)
        view = dataclasses.replace(workload, denoiser=link, inputs=inputs)
        par = apply_part(view, comm, options)
        links.append(link)
        pars.append(par)
        inputs = par.inputs
    for link, inner in zip(links[:-1], pars[1:], strict=True):
        link.target = inner.denoiser  # each part calls the parts inside it
    modules = []
    for par in pars:
        for m in par.modules:
            m = m.real if isinstance(m, _Inner) else m
            if all(m is not k for k in modules):
                modules.append(m)
    hooks = [par.on_step for par in pars if par.on_step is not None]
    buffers = [par.buffer_bytes for par in pars if par.buffer_bytes is not None]
    loops = [par.loop for par in pars if par.loop is not None]
    if len(loops) > 1:
        raise ValueError("two composed strategies both drive their own denoising loop")

    def gather(latents):
        for par in reversed(pars):  # innermost first
            latents = par.gather(latents)
        return latents

    def on_step(i: int) -> None:
        for hook in hooks:
            hook(i)

    return Parallelized(
        denoiser=pars[0].denoiser,
        inputs=inputs,
        gather=gather,
        modules=modules,
        warmup_steps=max(par.warmup_steps for par in pars),
        on_step=on_step if hooks else None,
        buffer_bytes=(lambda: sum(b() for b in buffers)) if buffers else None,
        loop=loops[0] if loops else None,
    )


# Registered last: registry.py imports Option, Strategy and register from this module.
from suite.parallel import registry as _registry  # noqa: E402, F401
