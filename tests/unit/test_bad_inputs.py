"""A corpus of bad inputs: each is refused before any process starts, with exit code 2 and a
message naming the field (and the value) and what is allowed; never a traceback. Plus: invalid
configs are rejected fast, without importing torch, and the memory estimate is checked against a
measured peak."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from suite.commands.cli import main

ROOT = Path(__file__).resolve().parents[2]
BASE = {
    "experiment": "t",
    "workloads": ["tiny-pixart-alpha"],
    "resolutions": [256],
    "settings": {"steps": 2, "batch": 2},
    "strategies": [{"name": "none"}],
}


@dataclass
class Case:
    id: str
    argv: list[str] | None = None  # CLI arguments ({tmp} -> the test's directory)
    config: dict | str | bytes | None = None  # `diffscale run` of this config
    expect: tuple[str, ...] = ()  # fragments the message must hold (field, value, allowed)
    absent: tuple[str, ...] = ()  # fragments it must not hold (spurious follow-on errors)
    setup: dict[str, str] = field(default_factory=dict)  # files to make: path -> text


def cfg(settings=None, strategies=None, **top) -> dict:
    raw = json.loads(json.dumps(BASE))
    raw["settings"].update(settings or {})
    if strategies is not None:
        raw["strategies"] = strategies
    raw.update(top)
    return raw


DUPLICATE_KEYS = """experiment: t
workloads: [tiny-pixart-alpha]
resolutions: [256]
settings:
  steps: 2
  steps: 3
strategies: [{name: none}]
"""

CASES = [
    # -- experiment names: never a path -----------------------------------------------------
    Case("experiment-dotdot", config=cfg(experiment=".."), expect=("experiment: '..'", "no paths")),
    Case("experiment-dot", config=cfg(experiment="."), expect=("experiment: '.'",)),
    Case("experiment-slash", config=cfg(experiment="a/b"), expect=("experiment: 'a/b'",)),
    Case(
        "experiment-missing",
        config={k: v for k, v in BASE.items() if k != "experiment"},
        expect=("experiment: None",),
    ),
    # -- settings: integers in range, finite numbers -----------------------------------------
    Case(
        "seed-2^63",
        config=cfg({"seed": 2**63}),
        expect=("settings.seed: 9223372036854775808", "<= 9223372036854775807"),
    ),
    Case("seed-negative", config=cfg({"seed": -1}), expect=("settings.seed: -1", ">= 0")),
    Case(
        "guidance-nan",
        config=cfg({"guidance": float("nan")}),
        expect=("settings.guidance: nan", "finite number > 0"),
    ),
    Case(
        "timeout-inf",
        config=cfg({"timeout_s": float("inf")}),
        expect=("settings.timeout_s: inf", "finite number"),
    ),
    Case("guidance-negative", config=cfg({"guidance": -1}), expect=("settings.guidance: -1",)),
    Case(
        "steps-over-ddim",
        config=cfg({"steps": 2000, "scheduler": "ddim"}),
        expect=("settings.steps", "steps=2000", "'ddim'", "at most 1000"),
    ),
    Case(
        "steps-over-euler-entry",
        config=cfg(
            strategies=[{"name": "none", "settings": {"steps": 1001, "scheduler": "euler"}}]
        ),
        expect=("strategies[0].settings.steps", "steps=1001", "at most 1000"),
    ),
    Case("steps-float", config=cfg({"steps": 2.5}), expect=("settings.steps: 2.5", "integer")),
    Case(
        "batch-zero-no-echo",
        config=cfg({"batch": 0}, [{"name": "data", "world_sizes": [2]}]),
        expect=("settings.batch: 0", ">= 1"),
        absent=("does not split",),
    ),
    Case(
        "threads-zero",
        config=cfg({"threads_per_rank": 0}),
        expect=("settings.threads_per_rank: 0",),
    ),
    Case(
        "threads-huge",
        config=cfg({"threads_per_rank": 10**6}),
        expect=("settings.threads_per_rank: 1000000", "<= 1024"),
    ),
    Case("dtype", config=cfg({"dtype": "float8"}), expect=("settings.dtype: 'float8'", "bfloat16")),
    Case(
        "memory-check-not-bool",
        config=cfg({"memory_check": "no"}),
        expect=("settings.memory_check: 'no'", "true, false"),
    ),
    # -- weights: a directory holding a model -----------------------------------------------
    Case("weights-empty", config=cfg({"weights": ""}), expect=("settings.weights: ''", "empty")),
    Case(
        "weights-home",
        config=cfg({"weights": "~"}),
        expect=("settings.weights: '~'", "holds no model", "config.json"),
    ),
    Case(
        "weights-empty-dir",
        config=cfg({"weights": "{tmp}/empty"}),
        setup={"empty/.keep": ""},
        expect=("settings.weights:", "holds no model"),
    ),
    Case(
        "weights-wrong-subfolder",
        config=cfg({"weights": "{tmp}/pipe"}),
        setup={"pipe/unet/config.json": "{}"},
        expect=("settings.weights:", "transformer/config.json", "tiny-pixart-alpha"),
    ),
    Case("weights-int", config=cfg({"weights": 3}), expect=("settings.weights: 3", "string")),
    Case(
        "weights-no-such-home",
        config=cfg({"weights": "~nosuchuser-diffscale/model"}),
        expect=("settings.weights: '~nosuchuser-diffscale/model'", "not a directory"),
    ),
    # -- the file itself ---------------------------------------------------------------------
    Case(
        "duplicate-keys",
        config=DUPLICATE_KEYS,
        expect=("line 6: duplicate key 'steps'", "first at line 5"),
    ),
    Case(
        "not-utf8",
        config=b"experiment: t\nworkloads: [\xff\xfe]\n",
        expect=("not UTF-8", "0xff", "offset"),
    ),
    Case("not-yaml", config="experiment: [unclosed\n", expect=("not valid YAML",)),
    Case("empty-file", config="", expect=("top level", "empty")),
    Case("top-level-list", config="[1, 2]\n", expect=("top level", "list")),
    Case("config-is-dir", argv=["run", "{tmp}"], expect=("not a file",)),
    Case("config-missing", argv=["run", "{tmp}/nope.yaml"], expect=("no such file",)),
    # -- strategies: every problem of an entry, each once ---------------------------------------
    Case(
        "name-empty",
        config=cfg(strategies=[{"name": ""}]),
        expect=("strategies[0].name: strategy name ''", "allowed: cfg"),
    ),
    Case("name-int", config=cfg(strategies=[{"name": 3}]), expect=("strategy name 3",)),
    Case("name-null", config=cfg(strategies=[{"name": None}]), expect=("strategy name None",)),
    Case(
        "name-missing",
        config=cfg(strategies=[{"world_sizes": [2]}]),
        expect=("strategies[0].name: missing",),
    ),
    Case(
        "unknown-name-hides-nothing",
        config=cfg(
            strategies=[
                {
                    "name": "warp",
                    "degrees": {"data": 0, "nope": 2},
                    "options": 3,
                    "settings": {"batch": 0},
                }
            ]
        ),
        expect=(
            "unknown strategy 'warp'",
            "strategies[0].settings.batch: 0",
            "strategies[0].degrees.data: 0",
            "strategies[0].degrees.nope: unknown mesh axis",
            "strategies[0].options: 3",
        ),
    ),
    Case(
        "every-bad-option",
        config=cfg(
            strategies=[
                {
                    "name": "distrifusion",
                    "world_sizes": [2],
                    "options": {"gn_mode": "x", "warmup_steps": -1, "full_sync": 0, "nope": 1},
                }
            ]
        ),
        expect=(
            "options.gn_mode: option 'gn_mode' is 'x'",
            "options.warmup_steps:",
            "options.full_sync: option 'full_sync' is 0",
            "options.nope: unknown option",
        ),
    ),
    Case(
        "option-nan",
        config=cfg(
            strategies=[
                {"name": "pipefusion", "world_sizes": [2], "options": {"patches": float("nan")}}
            ]
        ),
        expect=("options.patches", "nan"),
    ),
    Case(
        "sweep-empty",
        config=cfg(
            strategies=[{"name": "naive_patch", "world_sizes": [2], "sweep": {"split": []}}]
        ),
        expect=("strategies[0].sweep.split: []", "non-empty list"),
    ),
    Case(
        "option-and-sweep",
        config=cfg(
            strategies=[
                {
                    "name": "naive_patch",
                    "world_sizes": [2],
                    "options": {"split": "row"},
                    "sweep": {"split": ["row"]},
                }
            ]
        ),
        expect=("options.split: set in both",),
    ),
    Case(
        "world-size-huge",
        config=cfg(strategies=[{"name": "data", "world_sizes": [100000]}]),
        expect=("world_sizes[0]: 100000", "<= 65536"),
    ),
    Case(
        "degree-float",
        config=cfg(strategies=[{"name": "data", "degrees": {"data": 2.5}}]),
        expect=("strategies[0].degrees.data: 2.5",),
    ),
    # -- workloads and resolutions ------------------------------------------------------------
    Case(
        "workload-not-a-string",
        config=cfg(workloads=[["tiny-sdxl"]]),
        expect=("workloads[0]: ['tiny-sdxl']",),
    ),
    Case("resolution-zero", config=cfg(resolutions=[0]), expect=("resolutions[0]: 0",)),
    Case(
        "resolution-zero-width",
        config=cfg(resolutions=["256x0"]),
        expect=("resolutions[0]: '256x0'",),
    ),
    Case(
        "resolution-sd3-limit",
        config=cfg(workloads=["tiny-sd3-medium"], resolutions=[4096]),
        expect=("resolutions: 4096x4096 for tiny-sd3-medium", "at most 2048"),
    ),
    Case(
        "resolution-over-memory",
        config=cfg(resolutions=[100000]),
        expect=(
            "tiny-pixart-alpha 100000x100000",
            "needs about",
            "the limit is",
            "memory_check: false",
        ),
    ),
    # -- CLI arguments -------------------------------------------------------------------------
    Case(
        "run-out-file",
        argv=["run", "{cfg}", "--out", "{tmp}/file"],
        setup={"file": "x"},
        expect=("--out", "not a directory"),
    ),
    Case(
        "export-out-file",
        argv=["export", "{tmp}", "--out", "{tmp}/file"],
        setup={"file": "x"},
        expect=("--out", "not a directory"),
    ),
    Case(
        "workloads-resolution-250",
        argv=["workloads", "--tiny", "--resolution", "250"],
        expect=(
            "--resolution 250",
            "tiny-sdxl: multiples of 32 px",
            "tiny-sd3-medium: multiples of 16 px up to 2048",
        ),
    ),
    Case(
        "workloads-resolution-0",
        argv=["workloads", "--resolution", "0"],
        expect=("--resolution '0'", "HxW"),
    ),
    Case(
        "workloads-resolution-abc",
        argv=["workloads", "--resolution", "abc"],
        expect=("--resolution 'abc'",),
    ),
    Case(
        "project-source",
        argv=["project", "{tmp}", "--hardware", "8xH100-NVLink", "--source", "nope"],
        expect=("--source 'nope'", "available:"),
    ),
    Case(
        "project-hardware-empty",
        argv=["project", "{tmp}", "--hardware", ","],
        expect=("--hardware ','", "names no profile"),
    ),
    Case(
        "project-dtype",
        argv=["project", "{tmp}", "--hardware", "8xH100-NVLink", "--dtype", "fp8"],
        expect=("--dtype 'fp8'", "bf16"),
    ),
    Case(
        "project-dtype-unrunnable",
        argv=["project", "{tmp}", "--hardware", "local-cpu", "--dtype", "tf32"],
        expect=("--dtype 'tf32'", "cannot run tf32", "it runs: fp32"),
    ),
    Case(
        "project-anchor",
        argv=["project", "{tmp}", "--hardware", "8xH100-NVLink", "--anchor", "0"],
        expect=("--anchor '0'", "latency in seconds"),
    ),
    Case(
        "project-anchor-two-profiles",
        argv=["project", "{tmp}", "--hardware", "8xH100-NVLink,8xL40-PCIe4", "--anchor", "2.1"],
        expect=("--anchor '2.1'", "exactly one --hardware"),
    ),
    Case(
        "project-out-file",
        argv=["project", "{tmp}", "--hardware", "8xH100-NVLink", "--out", "{tmp}/file"],
        setup={"file": "x"},
        expect=("--out", "not a directory"),
    ),
    Case(
        "calibrate-world-sizes",
        argv=["calibrate", "--world-sizes", "abc"],
        expect=("--world-sizes 'abc'", "integers from 2"),
    ),
    Case(
        "calibrate-world-size-one",
        argv=["calibrate", "--world-sizes", "1,2"],
        expect=("--world-sizes '1,2'", "'1'"),
    ),
    Case("calibrate-sizes", argv=["calibrate", "--sizes", "lots"], expect=("--sizes 'lots'",)),
    Case(
        "calibrate-sizes-zero",
        argv=["calibrate", "--sizes", "0-1K"],
        expect=("--sizes '0-1K'", "1 <= LOW"),
    ),
    Case("calibrate-threads", argv=["calibrate", "--threads", "0"], expect=("--threads 0",)),
    Case(
        "calibrate-keep-collectives",
        argv=["calibrate", "--keep-collectives", "--name", "nothing-here", "--out", "{tmp}"],
        expect=("--keep-collectives", "nothing-here.yaml"),
    ),
    Case(
        "calibrate-threads-abc",
        argv=["calibrate", "--threads", "abc"],
        expect=("--threads", "invalid int value"),
    ),
    Case("calibrate-name", argv=["calibrate", "--name", "../x"], expect=("--name '../x'",)),
    Case(
        "calibrate-preset",
        argv=["calibrate", "--preset", "nope"],
        expect=("--preset 'nope'", "tiny-sdxl"),
    ),
]


def _fill(text: str, tmp: Path, config: Path) -> str:
    return text.replace("{tmp}", str(tmp)).replace("{cfg}", str(config))


@pytest.fixture
def no_spawn(monkeypatch):
    from suite.worlds.launch import LocalWorld

    def start(self):
        pytest.fail("a process was started for a bad input")

    monkeypatch.setattr(LocalWorld, "start", start)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_before_any_process(case, tmp_path, monkeypatch, capsys, no_spawn):
    monkeypatch.chdir(tmp_path)  # whatever happens, nothing lands in the repository
    for rel, text in case.setup.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    config = tmp_path / "bad.yaml"
    raw = case.config if case.config is not None else BASE
    if isinstance(raw, bytes):
        config.write_bytes(raw)
    elif isinstance(raw, str):
        config.write_text(raw)
    else:
        config.write_text(_fill(yaml.safe_dump(raw), tmp_path, config))
    argv = [_fill(a, tmp_path, config) for a in (case.argv or ["run", str(config)])]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own refusal
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    for fragment in case.expect:
        assert fragment in err, f"{fragment!r} not in:\n{err}"
    for fragment in case.absent:
        assert fragment not in err, f"{fragment!r} in:\n{err}"


def test_every_problem_of_a_file_is_reported_once(tmp_path, capsys):
    raw = cfg(
        {"batch": 0},
        [{"name": "none"}, {"name": "none"}, {"name": "data", "world_sizes": [2]}],
        resolutions=[250],
        workloads=["tiny-pixart-alpha", "tiny-nope"],
    )
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("  - ")]
    assert len(lines) == len(set(lines)) == 3, lines  # batch, the preset, the resolution


def _run(code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
    )


def test_config_checks_import_neither_torch_nor_diffusers():
    code = (
        "import sys, suite.config.experiment, suite.parallel, workloads, workloads.presets, workloads.limits\n"
        "suite.parallel.get('cfg+ulysses')\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'pandas') if m in sys.modules))"
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_invalid_config_is_rejected_fast(tmp_path):
    """End to end, process start to exit; the bound is loose for a shared machine (the
    measured median is in the README)."""
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg({"steps": 0}, [{"name": "warp"}])))
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "suite.commands.cli", "run", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            env=os.environ | {"PYTHONPATH": str(ROOT)},
        )
        times.append(time.perf_counter() - t0)
        assert proc.returncode == 2 and "settings.steps: 0" in proc.stderr
    assert statistics.median(times) < 3.0, times


def test_registry_names_real_apply_functions():
    from suite import parallel

    for strategy in parallel.REGISTRY.values():
        assert callable(parallel._callable(strategy.apply)), strategy.name


def test_estimate_splits_what_strategies_split():
    from suite.config.experiment import parse_config
    from suite.config.memory import estimate

    def one(strategy: dict, batch: int = 2):
        raw = cfg({"batch": batch}, [strategy], resolutions=[512])
        (spec,) = parse_config(raw).runs
        return estimate(spec)

    none = one({"name": "none"})
    assert one({"name": "data", "world_sizes": [2]}).activations < none.activations
    assert one({"name": "ulysses", "world_sizes": [2]}).activations < none.activations
    assert one({"name": "tensor", "world_sizes": [2]}).params < none.params
    assert one({"name": "pipefusion", "world_sizes": [2]}).params < none.params
    assert one({"name": "distrifusion", "world_sizes": [2]}).buffers > 0
    assert one({"name": "none"}, batch=4).activations > none.activations


MEASURE = """
import gc, json, sys, dataclasses
import torch
from suite.config.experiment import parse_config
from suite.config.memory import estimate
from suite.worlds.runner import RankContext, execute

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

torch.set_num_threads(1)
(spec,) = parse_config(json.loads(sys.argv[1])).runs
ctx = RankContext(0, 1, torch.device("cpu"))
execute(dataclasses.replace(spec, height=128, width=128), ctx)  # kernels paged in, like a rank's
gc.collect()
base = rss()
measured = execute(spec, ctx).peak_mem_bytes - base
print(json.dumps({"estimate": estimate(spec).total, "measured": measured}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_estimate_is_within_a_factor_of_two_of_a_measured_peak():
    """A run's peak_mem_bytes less the process's resident size before it (torch, diffusers and
    the kernels of a first small forward): the run's own tensors, as the estimate counts them."""
    raw = cfg({"batch": 2, "steps": 1, "warmup_runs": 0, "repeats": 1}, resolutions=[1024])
    proc = subprocess.run(
        [sys.executable, "-c", MEASURE, json.dumps(raw)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    ratio = got["estimate"] / got["measured"]
    assert 0.5 <= ratio <= 2.0, got


def test_output_into_a_closed_pipe_ends_quietly():
    # `diffscale ... | head`: the reader is gone before the command writes; exit 141, no traceback
    proc = subprocess.Popen(
        [sys.executable, "-m", "suite.commands.cli", "workloads", "--tiny"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdout.close()  # before the command has imported anything, so every write fails
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err
