"""Checks of `diffscale` arguments beyond argparse's: every problem at once, each naming the
flag, the value and what is allowed (exit code 2), before anything heavy is imported.
"""

from __future__ import annotations

import argparse
import os
import re


def out_dir_problem(flag: str, value: str) -> str | None:
    """Why `value` cannot be an output directory (created if missing); None if it can."""
    from suite.config.settings import expand_path

    if not value.strip():
        return f"{flag} {value!r}: empty; give a directory"
    path = expand_path(value)
    if path.exists() and not path.is_dir():
        return (
            f"{flag} {value}: exists and is not a directory; give a directory (created if missing)"
        )
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                return f"{flag} {value}: {parent} is a file, so the directory cannot be made"
            if not os.access(parent, os.W_OK | os.X_OK):
                return f"{flag} {value}: {parent} is not writable"
            break
    return None


_SIZES = re.compile(r"^\s*(\d+(?:\.\d+)?[KMG]|\d+)\s*-\s*(\d+(?:\.\d+)?[KMG]|\d+)\s*$", re.I)
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
MAX_CALIBRATION_BYTES = 4 << 30  # each rank allocates buffers of the largest size
RANK_BYTES = 1 << 30  # one calibrating rank: torch and diffusers imported, buffers


def _bytes(text: str) -> int:
    text = text.strip().upper()
    return int(float(text[:-1]) * _UNITS[text[-1]]) if text[-1] in _UNITS else int(text)


def calibrate_problems(args: argparse.Namespace) -> tuple[list[str], tuple[int, ...]]:
    """Every bad calibrate argument, and the world sizes asked for."""
    from suite.config.memory import mem_available
    from suite.config.settings import EXPERIMENT_NAME, MAX_THREADS
    from workloads.presets import get_preset

    problems, sizes = [], []
    available, _ = mem_available()
    most = max(2, available // RANK_BYTES)
    bad = []
    for part in args.world_sizes.split(","):
        if not part.strip().isdigit() or not 2 <= int(part) <= most:
            bad.append(part.strip())
        elif int(part) not in sizes:
            sizes.append(int(part))
    if bad:
        problems.append(
            f"--world-sizes {args.world_sizes!r}: {', '.join(map(repr, bad))} not world sizes; "
            f"give comma-separated integers from 2 to {most} (about 1 GiB of this host's "
            "available memory per rank), e.g. 2,4"
        )
    m = _SIZES.match(args.sizes)
    if not m:
        problems.append(
            f"--sizes {args.sizes!r}: write a byte range LOW-HIGH with optional K, M, G, e.g. "
            "1K-256M"
        )
    elif not 1 <= _bytes(m[1]) <= _bytes(m[2]) <= MAX_CALIBRATION_BYTES:
        problems.append(
            f"--sizes {args.sizes!r}: need 1 <= LOW <= HIGH <= 4G bytes (each rank allocates "
            "buffers of HIGH bytes)"
        )
    if not 1 <= args.threads <= MAX_THREADS:
        problems.append(f"--threads {args.threads}: must be an integer from 1 to {MAX_THREADS}")
    if not EXPERIMENT_NAME.fullmatch(args.name) or args.name in ("devices", "links"):
        problems.append(
            f"--name {args.name!r}: the profile's file name: up to 100 letters, digits, '_', '.', "
            "'-' starting with a letter or digit, not 'devices' or 'links' (the catalogs)"
        )
    if problem := out_dir_problem("--out", args.out):
        problems.append(problem)
    try:
        get_preset(args.preset)
    except ValueError as e:
        problems.append(f"--preset {args.preset!r}: {e}")
    if getattr(args, "keep_collectives", False):
        from suite.config.settings import expand_path

        kept = expand_path(args.out) / f"{args.name}.yaml"
        if not kept.is_file():
            problems.append(
                f"--keep-collectives: no profile {kept} whose collective measurements to keep; "
                "calibrate without it first"
            )
    return problems, tuple(sizes)


def profile_problems(args: argparse.Namespace) -> tuple[list[str], list[str], float | str | None]:
    """Every bad --hardware / --source / --dtype / --anchor / --out of `project`; the hardware
    names and the anchor (seconds, a run id, or None)."""
    import yaml

    from analysis.hardware import available_profiles, load_profile
    from analysis.opmodel import check_dtype, dtype_key

    names = [h.strip() for h in args.hardware.split(",") if h.strip()]
    problems = []
    if not names:
        problems.append(
            f"--hardware {args.hardware!r}: names no profile; give comma-separated names from: "
            f"{', '.join(available_profiles())}"
        )
    targets = []
    for flag, name in [("--hardware", h) for h in names] + [("--source", args.source)]:
        try:
            profile = load_profile(name)
        except (ValueError, KeyError, TypeError, AttributeError, OSError, yaml.YAMLError) as e:
            why = (
                e
                if isinstance(e, ValueError)
                else f"not a usable profile ({type(e).__name__}: {e})"
            )
            problems.append(f"{flag} {name!r}: {why}")
            continue
        if flag == "--hardware":
            targets.append(profile)
    if args.dtype is not None:  # the dtype on the targets; the source prices each run's own
        try:
            key = dtype_key(args.dtype)
        except ValueError as e:
            problems.append(f"--dtype {args.dtype!r}: {e}")
        else:
            for profile in targets:
                try:
                    check_dtype(profile, key)
                except ValueError as e:
                    problems.append(f"--dtype {args.dtype!r}: {e}")
    anchor = getattr(args, "anchor", None)
    if anchor is not None:
        anchor, problem = _anchor(anchor, len(names))
        if problem:
            problems.append(problem)
    if args.out is not None and (problem := out_dir_problem("--out", args.out)):
        problems.append(problem)
    return problems, names, anchor


_RUN_ID = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")


def _anchor(text: str, n_hardware: int) -> tuple[float | str | None, str | None]:
    """(seconds or a run id, problem or None) of `--anchor TEXT`."""
    allowed = (
        "give a latency in seconds (> 0, e.g. 2.085) or the run_id of a stored single-device "
        "run measured on the target"
    )
    value: float | str
    try:
        value = float(text)
    except ValueError:
        value = text.strip()
        if not _RUN_ID.match(value):
            return None, f"--anchor {text!r}: neither a number nor a run id; {allowed}"
    else:
        if not (value > 0 and value < float("inf")):
            return None, f"--anchor {text!r}: not a positive finite latency; {allowed}"
    if n_hardware != 1:
        return None, (
            f"--anchor {text!r}: anchors one profile's compute; give exactly one --hardware "
            f"profile (got {n_hardware})"
        )
    return value, None
