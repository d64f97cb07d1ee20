"""Optional instrumentation around the timed loops: torch.profiler traces, NVML samples, and
the ledger's own timeline as a Chrome trace (Perfetto / chrome://tracing).

Settings come from environment variables, not from the RunSpec: profiling changes what is
recorded, not what the run computes, so it must not change the run's identity hash. The CLI sets
them before it spawns the ranks; `configure` sets them in ranks that are already running.

- DIFFSCALE_PROFILE=1: torch.profiler wraps the timed loops; each rank's Chrome trace is saved as
  runs/<run_id>/rank{r}_trace.json.gz, next to ledger_trace.json.gz. The profiler's own overhead
  is then part of the measured latency.
- DIFFSCALE_LEDGER=off: no collective is logged (to measure the ledger's overhead); the run's
  communication columns are then empty / zero.
- DIFFSCALE_NVML=off: no NVML sampling. By default a rank on a CUDA device samples its GPU's
  memory used, utilization and power at 10 Hz during the timed loops (runs/<run_id>/nvml.csv);
  on CPU, or where NVML cannot start, nothing is sampled and nothing fails.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

PROFILE_ENV = "DIFFSCALE_PROFILE"
LEDGER_ENV = "DIFFSCALE_LEDGER"
NVML_ENV = "DIFFSCALE_NVML"
_OFF = ("0", "off", "false", "no")

NVML_DTYPE = np.dtype(
    [
        ("t", np.float64),  # perf_counter seconds, the clock of the ledger and the step marks
        ("mem_used_bytes", np.float64),  # whole GPU, every process on it (NVML's view)
        ("util_pct", np.float64),  # percent of the sample period a kernel ran
        ("power_w", np.float64),
    ]
)
NVML_COLUMNS = ("rank", "t_s", "mem_used_bytes", "util_pct", "power_w")


def _flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() not in _OFF


def profile_requested() -> bool:
    """True when DIFFSCALE_PROFILE asks for torch.profiler traces."""
    return _flag(PROFILE_ENV, False)


def ledger_requested() -> bool:
    """False when DIFFSCALE_LEDGER=off: collectives run unlogged (overhead measurement)."""
    return _flag(LEDGER_ENV, True)


def nvml_requested() -> bool:
    """False when DIFFSCALE_NVML=off."""
    return _flag(NVML_ENV, True)


def configure(ctx: Any, settings: dict[str, str | None]) -> None:
    """Set (str) or unset (None) environment settings in a running rank.

    For worlds spawned before the setting was chosen: `world.call(configure, {...})`.
    """
    for key, value in settings.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


# -- NVML ------------------------------------------------------------------------------------
class NvmlSampler:
    """Samples one CUDA device's memory used, utilization and power on a background thread.

    `start()` / `stop()`; `stop()` returns the samples (NVML_DTYPE). On a CPU device, without
    the NVML library or driver, or when any NVML call fails at start, it samples nothing and
    returns an empty array: the run goes on without these numbers.
    """

    def __init__(self, device: torch.device, interval_s: float = 0.1):
        self.device = device
        self.interval_s = interval_s
        self._rows: list[tuple[float, float, float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml: Any = None
        self._handle: Any = None

    def start(self) -> None:
        if self.device.type != "cuda":
            return
        self._handle = self._open()
        if self._handle is None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="nvml-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> np.ndarray:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5 * self.interval_s + 1)
            self._thread = None
        if self._nvml is not None:
            _read(self._nvml.nvmlShutdown)
            self._nvml = None
        return np.array(self._rows, dtype=NVML_DTYPE)

    def _open(self) -> Any:
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception:  # no nvidia-ml-py, no libnvidia-ml, no driver: nothing to sample
            return None
        self._nvml = pynvml
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        try:
            # NVML numbers GPUs physically; CUDA_VISIBLE_DEVICES renumbers them for torch.
            uuid = str(torch.cuda.get_device_properties(index).uuid)
            return pynvml.nvmlDeviceGetHandleByUUID(
                uuid if uuid.startswith("GPU-") else "GPU-" + uuid
            )
        except Exception:
            pass
        try:
            return pynvml.nvmlDeviceGetHandleByIndex(index)
        except Exception:
            self.stop()
            return None

    def _sample(self) -> tuple[float, float, float, float]:
        nv, h = self._nvml, self._handle
        t = time.perf_counter()
        # A GPU may not report every counter (power on some boards): NaN, not an error.
        mem = _read(lambda: nv.nvmlDeviceGetMemoryInfo(h).used)
        util = _read(lambda: nv.nvmlDeviceGetUtilizationRates(h).gpu)
        power = _read(lambda: nv.nvmlDeviceGetPowerUsage(h) / 1e3)  # milliwatts
        return t, mem, util, power

    def _loop(self) -> None:
        while True:
            self._rows.append(self._sample())
            if self._stop.wait(self.interval_s):
                self._rows.append(self._sample())  # one at the end, so short runs get two
                return


def _read(fn: Callable[[], Any]) -> float:
    try:
        return float(fn())
    except Exception:
        return float("nan")


def nvml_summary(samples: dict[int, np.ndarray]) -> dict[str, float | None]:
    """Run-level NVML numbers from each rank's samples (the `runs` table's nvml_* columns).

    nvml_mem_used_max_bytes: max over ranks and samples; nvml_util_mean_pct and
    nvml_power_mean_w: mean over ranks of each GPU's mean; nvml_energy_j: summed over GPUs,
    trapezoid rule over the sampled span. All None without samples.
    """
    got = {r: s for r, s in samples.items() if len(s)}
    if not got:
        return dict.fromkeys(
            ("nvml_mem_used_max_bytes", "nvml_util_mean_pct", "nvml_power_mean_w", "nvml_energy_j")
        )

    def nanmean(values: list[float]) -> float | None:
        arr = np.array(values, dtype=float)
        return None if np.isnan(arr).all() else float(np.nanmean(arr))

    energy = None  # stays None unless some GPU has two power samples to integrate
    for s in got.values():
        ok = ~np.isnan(s["power_w"])
        if ok.sum() > 1:
            p, t = s["power_w"][ok], s["t"][ok]
            energy = (energy or 0.0) + float(np.sum((p[1:] + p[:-1]) / 2 * np.diff(t)))
    mem = np.concatenate([s["mem_used_bytes"] for s in got.values()])
    return {
        "nvml_mem_used_max_bytes": None if np.isnan(mem).all() else float(np.nanmax(mem)),
        "nvml_util_mean_pct": nanmean([np.nanmean(s["util_pct"]) for s in got.values()]),
        "nvml_power_mean_w": nanmean([np.nanmean(s["power_w"]) for s in got.values()]),
        "nvml_energy_j": energy,
    }


# -- the capture around the timed loops --------------------------------------------------------
class Capture:
    """Context manager around a rank's timed loops: NVML sampling, and torch.profiler when
    DIFFSCALE_PROFILE is set. After exit: `trace_gz` (gzipped Chrome trace bytes, or None) and
    `nvml` (NVML_DTYPE samples, empty without NVML)."""

    def __init__(self, device: torch.device, profile: bool | None = None):
        self.device = device
        self.profile = profile_requested() if profile is None else profile
        self.trace_gz: bytes | None = None
        self.nvml = np.zeros(0, dtype=NVML_DTYPE)
        self._sampler = NvmlSampler(device) if nvml_requested() else None
        self._prof: Any = None

    def __enter__(self) -> Capture:
        if self._sampler is not None:
            self._sampler.start()
        if self.profile:
            from torch.profiler import ProfilerActivity, profile

            if self.device.type != "cuda":
                # Kineto logs "gpuGetDeviceCount failed" as an ERROR on machines without a GPU.
                os.environ.setdefault("KINETO_LOG_LEVEL", "5")
            activities = [ProfilerActivity.CPU]
            if self.device.type == "cuda":
                activities.append(ProfilerActivity.CUDA)
            self._prof = profile(activities=activities)
            self._prof.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._prof is not None:
                self._prof.__exit__(None, None, None)
                if exc[0] is None:
                    self.trace_gz = _export(self._prof)
        finally:
            if self._sampler is not None:
                self.nvml = self._sampler.stop()


def _export(prof: Any) -> bytes:
    # The profiler writes to a path only; the bytes travel back to the recording rank.
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        return gzip.compress(path.read_bytes(), compresslevel=6)


# -- the ledger's timeline as a Chrome trace ---------------------------------------------------
def _us(t: float, origin: float) -> float:
    # Rounded to ns so that a child's end computed from the same time equals its parent's.
    return round((t - origin) * 1e6, 3)


def _slice(name: str, cat: str, pid: int, tid: int, start: float, end: float, args: dict) -> dict:
    return {
        "name": name,
        "cat": cat,
        "ph": "X",
        "pid": pid,
        "tid": tid,
        "ts": start,
        "dur": round(end - start, 3),
        "args": args,
    }


def _meta(kind: str, pid: int, tid: int, **args: Any) -> dict:
    return {"name": kind, "ph": "M", "pid": pid, "tid": tid, "args": args}


def _lanes(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Greedy interval partitioning: lane per interval so that no lane holds two overlapping."""
    lane_end: list[float] = []
    out = np.zeros(len(starts), dtype=int)
    for i in np.argsort(starts, kind="stable"):
        free = [k for k, end in enumerate(lane_end) if end <= starts[i]]
        k = free[0] if free else len(lane_end)
        if not free:
            lane_end.append(0.0)
        lane_end[k] = ends[i]
        out[i] = k
    return out


def ledger_trace(ranks: Sequence[Any], meta: dict | None = None) -> dict:
    """The ledger's timeline in Chrome trace format (JSON object), one process per rank.

    `ranks`: objects with `rank`, `events` (suite.distributed.comm.EVENT_DTYPE), `steps` (runner STEP_DTYPE),
    `layers`, and optionally `nvml` (NVML_DTYPE). Per rank, thread 0 ("host") holds the step
    slices and, nested in them, one "wait <op>" slice per time the rank was blocked on
    communication (a blocking op's whole duration, an async op's wait); threads "comm k" hold
    one slice per collective from t_issue to t_done, packed so slices never overlap within a
    thread, each with a nested "blocked" slice where the rank waited while the op was in flight.
    NVML samples become counter tracks. Times are microseconds from the first step of any rank
    (perf_counter: one clock per host; ranks on different hosts are not aligned).
    """
    from suite.distributed.comm import OPS
    from suite.distributed.mesh import AXES

    starts = [r.steps["t_start"].min() for r in ranks if len(r.steps)]
    starts += [r.events["t_issue"].min() for r in ranks if len(r.events)]
    origin = float(min(starts)) if starts else 0.0
    out: list[dict] = []
    for r in sorted(ranks, key=lambda x: x.rank):
        pid = int(r.rank)
        out += [
            _meta("process_name", pid, 0, name=f"rank {pid}"),
            _meta("process_sort_index", pid, 0, sort_index=pid),
            _meta("thread_name", pid, 0, name="host: steps, waits"),
            _meta("thread_sort_index", pid, 0, sort_index=0),
        ]
        for rep, step, t0, t1 in r.steps.tolist():
            args = {"repeat": rep, "step": step}
            out.append(
                _slice(f"step {step}", "step", pid, 0, _us(t0, origin), _us(t1, origin), args)
            )
        ev = r.events
        # An async op whose completion was never seen ends at its wait, or at its issue.
        fallback = np.where(ev["t_wait_end"] > 0, ev["t_wait_end"], ev["t_issue"])
        done = np.where(np.isnan(ev["t_done"]), fallback, ev["t_done"])
        lanes = _lanes(ev["t_issue"], done)
        for k in range(int(lanes.max()) + 1 if len(lanes) else 0):
            out += [
                _meta("thread_name", pid, 1 + k, name=f"comm {k}"),
                _meta("thread_sort_index", pid, 1 + k, sort_index=1 + k),
            ]
        for e, t_done, lane in zip(ev, done.tolist(), lanes.tolist(), strict=True):
            op = OPS[e["op"]]
            args = {
                "op": op,
                "axis": AXES[e["axis"]],
                "bytes": int(e["nbytes"]),
                "layer": r.layers[e["layer"]] if 0 <= e["layer"] < len(r.layers) else "",
                "group_size": int(e["group_size"]),
                "async": bool(e["is_async"]),
                "repeat": int(e["repeat"]),
                "step": int(e["step"]),
                "wait_step": int(e["wait_step"]),
            }
            ws, we = float(e["t_wait_start"]), float(e["t_wait_end"])
            waited = we > 0 and we >= ws  # an async op nobody waited on has zero wait times
            args["wait_ms"] = (we - ws) * 1e3 if waited else 0.0
            issue, end = _us(e["t_issue"], origin), _us(t_done, origin)
            out.append(_slice(op, "comm", pid, 1 + lane, issue, end, args))
            if not waited:
                continue
            # The blocked part of the op's flight nests in its slice; the whole wait nests in
            # the host's step (a wait can trail the op's completion by a callback's latency).
            b0, b1 = max(_us(ws, origin), issue), min(_us(we, origin), end)
            if b1 > b0:
                out.append(_slice("blocked", "wait", pid, 1 + lane, b0, b1, {"op": op}))
            out.append(_slice(f"wait {op}", "wait", pid, 0, _us(ws, origin), _us(we, origin), args))
        nvml = getattr(r, "nvml", None)
        for s in nvml if nvml is not None else ():
            ts = _us(s["t"], origin)
            for name, key, scale in (
                ("gpu memory used (GB)", "mem_used_bytes", 1e-9),
                ("gpu utilization (%)", "util_pct", 1.0),
                ("gpu power (W)", "power_w", 1.0),
            ):
                if not np.isnan(s[key]):
                    value = float(s[key]) * scale
                    out.append(
                        {"name": name, "ph": "C", "pid": pid, "ts": ts, "args": {"value": value}}
                    )
    return {
        "traceEvents": out,
        "displayTimeUnit": "ms",
        "otherData": {"source": "diffscale comm ledger", **(meta or {})},
    }


def write_json_gz(path: Path, obj: dict) -> Path:
    """`obj` as gzipped JSON at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        json.dump(obj, f, separators=(",", ":"))
    return path


def ledger_trace_from_npz(npz_path: str | Path, meta: dict | None = None) -> dict:
    """The ledger timeline of a stored run from its runs/<run_id>/trace.npz."""
    from types import SimpleNamespace

    with np.load(npz_path) as z:
        ranks = sorted(int(k.removeprefix("events_rank")) for k in z if k.startswith("events_rank"))
        per_rank = [
            SimpleNamespace(
                rank=r,
                events=z[f"events_rank{r}"],
                steps=z[f"steps_rank{r}"],
                layers=[str(x) for x in z[f"layers_rank{r}"]],
            )
            for r in ranks
        ]
    return ledger_trace(per_rank, meta)


def save_traces(results: Sequence[Any], run_dir: Path) -> list[Path]:
    """Write a run's profiling files into `run_dir`; returns the paths written.

    rank{r}_trace.json.gz (torch.profiler) and ledger_trace.json.gz when the run was profiled;
    nvml.csv when any rank has NVML samples (times in seconds from the run's first step).
    """
    written = []
    profiled = [r for r in results if getattr(r, "trace_gz", None)]
    for r in profiled:
        path = run_dir / f"rank{r.rank}_trace.json.gz"
        path.write_bytes(r.trace_gz)
        written.append(path)
    if profiled:
        written.append(write_json_gz(run_dir / "ledger_trace.json.gz", ledger_trace(results)))
    sampled = [r for r in results if getattr(r, "nvml", None) is not None and len(r.nvml)]
    if sampled:
        marks = [r.steps["t_start"].min() for r in results if len(r.steps)]
        origin = min(marks) if marks else min(r.nvml["t"].min() for r in sampled)
        lines = [",".join(NVML_COLUMNS)]
        for r in sorted(sampled, key=lambda x: x.rank):
            for s in r.nvml:
                lines.append(
                    f"{r.rank},{s['t'] - origin:.4f},{_csv(s['mem_used_bytes'])},"
                    f"{_csv(s['util_pct'])},{_csv(s['power_w'])}"
                )
        path = run_dir / "nvml.csv"
        path.write_text("\n".join(lines) + "\n")
        written.append(path)
    return written


def _csv(x: float) -> str:
    return "" if np.isnan(x) else f"{x:.6g}"
