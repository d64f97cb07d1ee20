"""Published rows of the papers diffscale reproduces (`papers/<paper>.csv`), as one tidy DataFrame.

One row is one number of one paper: where it sits (arXiv id and version, table or figure, row and
column label), the workload (model, our preset, resolution, steps, scheduler, guidance, dtype,
batch), the system (as the paper describes it, and the `configs/hardware` profile that models it),
the method (the paper's label, the diffscale strategy and degrees that run it, options), the
metric with its reference, unit and value, the experiment in `configs/papers/` that reproduces
it, and its provenance: `source` says where the number was read, `checked` whether it was
compared with a primary source (`checked_against`: the paper, or the authors' own repository
files, with commit), `note` what agrees or disagrees and the paper's measurement conventions.
`timed` says what a latency covers: the loop, the prompt encoding too, or the whole pipeline call
with the VAE decode.

`load_papers()` validates every row and reports every problem at once (file, line, column, value,
what is allowed). Torch-free: it reads the strategy registry and the preset list only.
"""

from __future__ import annotations

import functools
import json
import math
import re
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent.parent
PAPERS_DIR = ROOT / "papers"
PAPER_CONFIGS_DIR = ROOT / "configs" / "papers"
# How each paper ran its timed loops, as its rows' notes record it: DistriFusion with CUDA graphs
# ("CUDA graphs on"), PipeFusion without ("no CUDA graphs by default"), xDiT's figures without
# torch.compile ("latency without torch.compile"). The projection prices per-call costs in that
# execution mode (configs/hardware/execution.yaml).
PAPER_EXECUTION = {"distrifusion": "cuda_graphs", "pipefusion": "eager", "xdit": "eager"}


def paper_execution(paper: str) -> str:
    """The execution mode (execution.yaml) `paper` timed its rows in; eager when not recorded."""
    return PAPER_EXECUTION.get(paper, "eager")


COLUMNS = (
    "paper",
    "arxiv_id",
    "arxiv_version",  # v1, v2, ... or "unknown" (the note says why)
    "table_or_figure",
    "row_label",
    "column_label",
    "model",  # as the paper names it
    "workload",  # our preset (workloads/presets.py)
    "height",
    "width",
    "steps",
    "scheduler",  # our scheduler name (workloads.limits.SCHEDULERS)
    "guidance",  # empty where the paper does not say (or the model takes none)
    "dtype",
    "batch",  # images per denoising loop
    "timed",  # what a latency covers (TIMED); empty for fidelity metrics
    "hardware",  # the system as the paper describes it
    "hardware_profile",  # configs/hardware/<name>.yaml that models it; empty if none
    "devices",
    "method",  # the paper's label
    "strategy",  # diffscale strategy that runs it; empty where diffscale cannot (see note)
    "degrees",  # JSON {mesh axis: degree}; {} on one device; empty where the paper does not say
    "options",  # JSON strategy options that select the row's run (ablations); usually empty
    "metric",
    "reference",  # original | ground_truth for fidelity metrics; empty otherwise
    "status",  # reported | oom (the paper reports out of memory: no value)
    "value",
    "unit",
    "experiment",  # configs/papers/<experiment>.yaml
    "source",  # where the number was read
    "checked",  # yes | no: compared with a primary source (checked_against says which)
    "checked_against",  # the paper, or the authors' repository files with commit
    "note",
)
METRIC_UNITS = {
    "latency_s": "s",
    "speedup": "x",
    "psnr": "dB",
    "lpips": "1",
    "fid": "1",
    "comm_share_pct": "%",  # share of the latency spent communicating
}
FIDELITY_METRICS = ("psnr", "lpips", "fid")
# What a paper's timed call covers, from its measurement code: the denoising loop alone, the
# prompt encoding and the loop (DistriFusion, PipeFusion's legacy code: output_type latent), or
# the whole pipeline call with the VAE decode (xDiT's examples: output_type pil)
TIMED = ("loop", "loop+text", "pipeline")
REFERENCES = ("original", "ground_truth")
STATUSES = ("reported", "oom")
DTYPES = ("float32", "float16", "bfloat16")
INT_COLUMNS = ("height", "width", "steps", "batch", "devices")
REQUIRED = (
    "paper",
    "arxiv_id",
    "arxiv_version",
    "table_or_figure",
    "row_label",
    "column_label",
    "model",
    "workload",
    *INT_COLUMNS,
    "scheduler",
    "dtype",
    "method",
    "metric",
    "status",
    "unit",
    "experiment",
    "source",
    "checked",
)
ARXIV_ID = re.compile(r"\d{4}\.\d{4,5}")
ARXIV_VERSION = re.compile(r"v\d+|unknown")


class PapersError(ValueError):
    """Invalid published rows; `problems` lists each one in a sentence."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("published rows are invalid:\n" + "\n".join(f"  - {p}" for p in problems))


def paper_experiments(config_dir: Path = PAPER_CONFIGS_DIR) -> set[str]:
    """Experiment names of the paper configs (`experiment:` of configs/papers/*.yaml)."""
    names = set()
    for path in sorted(config_dir.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text()) or {}
        if isinstance(doc, dict) and isinstance(doc.get("experiment"), str):
            names.add(doc["experiment"])
    return names


def load_papers(
    directory: Path | str = PAPERS_DIR, config_dir: Path | str | None = PAPER_CONFIGS_DIR
) -> pd.DataFrame:
    """All rows of `directory/*.csv`, validated; PapersError lists every problem.

    Integer columns come back as ints, `guidance` and `value` as floats (NaN where empty: an
    unstated guidance, an out-of-memory row); JSON columns stay strings (`parse_json`). With
    `config_dir`, every row's experiment must be one of its configs.
    """
    directory = Path(directory)
    paths = sorted(directory.glob("*.csv"))
    if not paths:
        raise PapersError([f"{directory}: no <paper>.csv files"])
    experiments = None if config_dir is None else paper_experiments(Path(config_dir))
    problems: list[str] = []
    frames = []
    for path in paths:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        missing = [c for c in COLUMNS if c not in frame.columns]
        extra = [c for c in frame.columns if c not in COLUMNS]
        if missing or extra:
            problems.append(
                f"{path.name}: columns {list(frame.columns)}; missing {missing}, unknown {extra}; "
                f"expected {list(COLUMNS)}"
            )
            continue
        for i, row in enumerate(frame.to_dict("records")):
            where = f"{path.name}:{i + 2}"  # line 1 is the header
            problems += [f"{where}: {p}" for p in _row_problems(row, path.stem, experiments)]
        frames.append(frame)
    if problems:
        raise PapersError(problems)
    df = pd.concat(frames, ignore_index=True)[list(COLUMNS)]
    for col in INT_COLUMNS:
        df[col] = df[col].astype(int)
    for col in ("guidance", "value"):
        df[col] = pd.to_numeric(df[col].replace("", math.nan))
    return df


def parse_json(text: str) -> dict | None:
    """A `degrees` / `options` cell as a dict; None where it is empty (not stated)."""
    return json.loads(text) if text else None


@functools.cache
def _profiles() -> tuple[str, ...]:
    from analysis.hardware import available_profiles

    return tuple(available_profiles())


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _row_problems(row: dict[str, str], stem: str, experiments: set[str] | None) -> list[str]:
    from suite import parallel
    from suite.distributed.mesh import AXES
    from workloads.limits import SCHEDULERS
    from workloads.presets import PRESETS

    out = [f"{c}: empty; every row needs it" for c in REQUIRED if not row[c].strip()]
    if out:
        return out
    if row["paper"] != stem:
        out.append(f"paper: {row['paper']!r} in {stem}.csv; a file holds one paper's rows")
    if not ARXIV_ID.fullmatch(row["arxiv_id"]):
        out.append(f"arxiv_id: {row['arxiv_id']!r}; expected NNNN.NNNNN")
    if not ARXIV_VERSION.fullmatch(row["arxiv_version"]):
        out.append(f"arxiv_version: {row['arxiv_version']!r}; expected v<N> or 'unknown'")
    if row["workload"] not in PRESETS:
        out.append(f"workload: {row['workload']!r} is not a preset; known: {', '.join(PRESETS)}")
    for col in INT_COLUMNS:
        if not re.fullmatch(r"[1-9]\d*", row[col]):
            out.append(f"{col}: {row[col]!r}; expected a positive integer")
    if row["scheduler"] not in SCHEDULERS:
        out.append(f"scheduler: {row['scheduler']!r}; allowed: {', '.join(SCHEDULERS)}")
    if row["guidance"] and (_number(row["guidance"]) is None or float(row["guidance"]) < 0):
        out.append(f"guidance: {row['guidance']!r}; expected a number >= 0 or empty")
    if row["dtype"] not in DTYPES:
        out.append(f"dtype: {row['dtype']!r}; allowed: {', '.join(DTYPES)}")
    if row["hardware_profile"] and row["hardware_profile"] not in _profiles():
        out.append(
            f"hardware_profile: {row['hardware_profile']!r} is not in configs/hardware; known: "
            f"{', '.join(_profiles())}"
        )
    if row["strategy"]:
        try:
            parallel.get(row["strategy"])
        except ValueError as e:
            out.append(f"strategy: {e}")
    out += _json_problems(row, AXES)
    metric = row["metric"]
    if metric not in METRIC_UNITS:
        out.append(f"metric: {metric!r}; known: {', '.join(METRIC_UNITS)}")
    elif row["unit"] != METRIC_UNITS[metric]:
        out.append(f"unit: {row['unit']!r} for {metric}; it is {METRIC_UNITS[metric]!r}")
    if metric in FIDELITY_METRICS and row["timed"]:
        out.append(f"timed: {row['timed']!r}; a fidelity metric times nothing (leave it empty)")
    if metric not in FIDELITY_METRICS and row["timed"] not in TIMED:
        out.append(f"timed: {row['timed']!r} for {metric}; allowed: {', '.join(TIMED)}")
    if metric in FIDELITY_METRICS and row["reference"] not in REFERENCES:
        out.append(f"reference: {row['reference']!r} for {metric}; allowed: {REFERENCES}")
    if metric not in FIDELITY_METRICS and row["reference"]:
        out.append(f"reference: {row['reference']!r}; only fidelity metrics have one")
    if row["status"] not in STATUSES:
        out.append(f"status: {row['status']!r}; allowed: {', '.join(STATUSES)}")
    elif row["status"] == "reported" and _number(row["value"]) is None:
        out.append(f"value: {row['value']!r}; a reported row needs a finite number")
    elif row["status"] == "oom" and (row["value"] or metric != "latency_s"):
        out.append("status: oom is a latency_s row without a value")
    if row["checked"] not in ("yes", "no"):
        out.append(f"checked: {row['checked']!r}; allowed: yes, no")
    elif (row["checked"] == "yes") != bool(row["checked_against"].strip()):
        out.append("checked_against: must name what the value was checked against iff checked=yes")
    if experiments is not None and row["experiment"] not in experiments:
        out.append(
            f"experiment: {row['experiment']!r} is not a configs/papers experiment; known: "
            f"{', '.join(sorted(experiments))}"
        )
    return out


def _json_problems(row: dict[str, str], axes: tuple[str, ...]) -> list[str]:
    out = []
    for col in ("degrees", "options"):
        try:
            parsed = parse_json(row[col])
        except json.JSONDecodeError as e:
            out.append(f"{col}: {row[col]!r} is not JSON ({e.msg})")
            continue
        if parsed is not None and not isinstance(parsed, dict):
            out.append(f"{col}: {row[col]!r}; expected a JSON object")
    if out or not row["degrees"]:
        return out
    degrees = parse_json(row["degrees"])
    bad = {a: d for a, d in degrees.items() if a not in axes or not isinstance(d, int) or d < 1}
    if bad:
        out.append(f"degrees: {bad}; axes are {', '.join(axes)} with integer degrees >= 1")
    elif row["devices"].isdigit() and math.prod(degrees.values()) != int(row["devices"]):
        out.append(
            f"degrees: {row['degrees']} has product {math.prod(degrees.values())} but devices is "
            f"{row['devices']}"
        )
    return out
