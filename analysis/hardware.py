"""Hardware profiles: devices, links and topology, loaded from `configs/hardware/`.

Kinds of file:
- `devices.yaml`: name -> dense peak throughput (TFLOP/s per dtype), memory bandwidth and size;
- `links.yaml`: name -> per-direction bandwidth (GB/s) and latency (us) of one hop, and whether
  one link is shared by a node's GPUs (a node's single NIC) or each GPU has its own;
- one file per system profile: a device, GPUs per node, nodes, the intra- and inter-node links;
  a calibrated profile (`diffscale calibrate`) also carries fitted alpha/beta per collective and
  group size, the throughput the device achieved rather than its peak, and its measured operator
  efficiency curves (`opcurves`, see analysis.opmodel);
- `opcurves/<device>.yaml`: a catalog device's operator efficiency curves (analysis.opmodel).
Every catalog number cites its source in a comment of the YAML (opcurves: a `source` or an
`estimate` field on every point).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path

import yaml

from analysis.collectives import Topology, load_collectives
from analysis.execution import Execution, load_execution
from analysis.opcurves import OpCurves, parse_curves

HARDWARE_DIR = Path(__file__).resolve().parent.parent / "configs" / "hardware"
CATALOGS = ("devices.yaml", "links.yaml", "collectives.yaml", "execution.yaml")
OPCURVES_DIR = "opcurves"  # under the hardware directory: <device name>.yaml
DTYPE_KEYS = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}  # run dtype -> catalog key


@dataclass(frozen=True)
class Device:
    name: str
    tflops: dict[str, float]  # dtype -> dense TFLOP/s (peak, or achieved when `achieved`)
    mem_bandwidth_gb_s: float
    mem_gb: float
    achieved: bool = False  # measured throughput (calibrated), not the datasheet peak

    def throughput(self, dtype: str) -> float:
        """TFLOP/s for `dtype` (torch or short name; fp32 falls back to tf32 tensor cores)."""
        short = DTYPE_KEYS.get(dtype, dtype)
        for key in (short, "tf32" if short == "fp32" else None):
            if key in self.tflops:
                return self.tflops[key]
        raise ValueError(
            f"device {self.name} has no throughput for {dtype}; it lists {sorted(self.tflops)}"
        )


@dataclass(frozen=True)
class Link:
    name: str
    bandwidth_gb_s: float  # per direction, per GPU (or per node when shared)
    latency_us: float  # one hop
    shared_by_node: bool = False  # one NIC for the whole node: its GPUs split the bandwidth

    def effective_bandwidth_gb_s(self, gpus_per_node: int) -> float:
        return self.bandwidth_gb_s / gpus_per_node if self.shared_by_node else self.bandwidth_gb_s


@dataclass(frozen=True)
class Fit:
    """Fitted cost of one collective at one group size: t = alpha_s + beta_s_per_byte * bytes."""

    alpha_s: float
    beta_s_per_byte: float


@dataclass(frozen=True)
class Profile:
    name: str
    device: Device
    gpus_per_node: int
    nodes: int
    intra_node: Link
    inter_node: Link | None
    description: str = ""
    measured: bool = False  # a calibrated profile of a machine diffscale ran on
    fits: dict[tuple[str, int], Fit] = field(default_factory=dict)  # (op, group size) -> Fit
    # calibrated profiles: measured (bytes, seconds) per (op, group size), preferred to the fit
    # inside the measured range (large messages bend away from a straight alpha-beta line)
    curves: dict[tuple[str, int], tuple[tuple[float, ...], tuple[float, ...]]] = field(
        default_factory=dict
    )
    cpu_cores: int | None = None  # CPU profiles: ranks beyond the cores share them
    opcurves: OpCurves | None = None  # operator efficiency curves (None: the device's peaks)
    # GPU profiles: which link class (collectives.yaml) joins which GPUs; collectives are then
    # priced as NCCL runs them (analysis.collectives) instead of alpha-beta on `intra_node`
    topology: Topology | None = None
    # GPU profiles: how the model runs (eager by default; `with_execution` for another mode)
    execution: Execution | None = None

    def contention(self, world_size: int, threads_per_rank: int) -> float:
        """How much slower compute runs because ranks share cores (1 on GPUs), if every rank
        were always busy: an upper bound; the projection solves the actual sharing from the
        timeline (analysis.projection.simulate_shared), where waiting ranks free their cores."""
        if not self.cpu_cores:
            return 1.0
        return max(1.0, world_size * threads_per_rank / self.cpu_cores)

    @property
    def world_size(self) -> int:
        return self.gpus_per_node * self.nodes


def _read(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return data


@cache
def devices(root: Path = HARDWARE_DIR) -> dict[str, Device]:
    out = {}
    for name, d in _read(root / "devices.yaml").items():
        tflops = {
            k.removesuffix("_tflops"): float(v) for k, v in d.items() if k.endswith("_tflops")
        }
        out[name] = Device(name, tflops, float(d["mem_bandwidth_gb_s"]), float(d["mem_gb"]))
    return out


@cache
def links(root: Path = HARDWARE_DIR) -> dict[str, Link]:
    return {
        name: Link(
            name,
            float(d["bandwidth_gb_s"]),
            float(d["latency_us"]),
            bool(d.get("shared_by_node", False)),
        )
        for name, d in _read(root / "links.yaml").items()
    }


def _device(value, root: Path) -> Device:
    if isinstance(value, str):
        known = devices(root)
        if value not in known:
            raise ValueError(f"device {value!r} is not in devices.yaml; known: {', '.join(known)}")
        return known[value]
    tflops = {
        k.removesuffix("_tflops"): float(v) for k, v in value.items() if k.endswith("_tflops")
    }
    return Device(
        value["name"],
        tflops,
        float(value.get("mem_bandwidth_gb_s", 0)),
        float(value.get("mem_gb", 0)),
        bool(value.get("achieved", False)),
    )


def _link(value, root: Path) -> Link | None:
    if value is None:
        return None
    if isinstance(value, str):
        known = links(root)
        if value not in known:
            raise ValueError(f"link {value!r} is not in links.yaml; known: {', '.join(known)}")
        return known[value]
    return Link(
        value["name"],
        float(value["bandwidth_gb_s"]),
        float(value["latency_us"]),
        bool(value.get("shared_by_node", False)),
    )


def load_profile(name_or_path: str | Path, root: Path = HARDWARE_DIR) -> Profile:
    """A system profile by name (a file in configs/hardware/) or by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = root / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ValueError(
            f"no hardware profile {name_or_path!r}; available: {', '.join(available_profiles(root))}"
        )
    d = _read(path)
    fits = {
        (op, int(size)): Fit(float(f["alpha_s"]), float(f["beta_s_per_byte"]))
        for op, by_size in (d.get("collectives") or {}).items()
        for size, f in by_size.items()
    }
    raw = (d.get("measurements") or {}).get("raw") or []
    points: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for r in raw:
        for op in ("send", "recv") if r["op"] == "send" else (r["op"],):
            points.setdefault((op, int(r["group_size"])), []).append(
                (float(r["nbytes"]), float(r["time_s"]))
            )
    curves = {k: tuple(zip(*sorted(v), strict=True)) for k, v in points.items()}
    nodes = int(d.get("nodes", 1))
    inter = _link(d.get("inter_node_link"), root)
    device = _device(d["device"], root)
    if nodes > 1 and inter is None:
        raise ValueError(f"{path}: {nodes} nodes need an inter_node_link")
    return Profile(
        name=d.get("name", path.stem),
        device=device,
        gpus_per_node=int(d["gpus_per_node"]),
        nodes=nodes,
        intra_node=_link(d["intra_node_link"], root),
        inter_node=inter,
        description=d.get("description", ""),
        measured=bool(d.get("measured", False)),
        fits=fits,
        curves=curves,
        cpu_cores=d.get("cpu_cores"),
        opcurves=_opcurves(d, device.name, path, root),
        topology=_topology(d, path),
        execution=load_execution("eager") if d.get("topology") is not None else None,
    )


def with_execution(profile: Profile, mode: str) -> Profile:
    """`profile` running in execution mode `mode` (eager, cuda_graphs, compile: execution.yaml);
    a profile without a GPU topology (a CPU) has no execution modes: ValueError."""
    if profile.topology is None:
        raise ValueError(f"profile {profile.name} is not a GPU profile; it has no execution modes")
    return replace(profile, execution=load_execution(mode))


_TOPOLOGY_KEYS = {"intra", "sockets_per_node", "cross_socket", "inter_node", "nics_per_node"}


def _topology(d: dict, path: Path) -> Topology | None:
    """The profile's `topology:` mapping (link classes of collectives.yaml), checked."""
    raw = d.get("topology")
    if raw is None:
        return None
    unknown = set(raw) - _TOPOLOGY_KEYS
    if unknown or "intra" not in raw:
        raise ValueError(
            f"{path}: topology needs 'intra' and takes {sorted(_TOPOLOGY_KEYS)}; got {sorted(raw)}"
        )
    topo = Topology(
        gpus_per_node=int(d["gpus_per_node"]),
        nodes=int(d.get("nodes", 1)),
        intra=raw["intra"],
        sockets_per_node=int(raw.get("sockets_per_node", 1)),
        cross_socket=raw.get("cross_socket"),
        inter_node=raw.get("inter_node"),
        nics_per_node=int(raw.get("nics_per_node", 1)),
    )
    known = load_collectives()
    for name in (topo.intra, topo.cross_socket, topo.inter_node):
        if name is not None:
            known.link(name)  # ValueError naming the known classes
    if topo.gpus_per_node % topo.sockets_per_node:
        raise ValueError(
            f"{path}: {topo.gpus_per_node} GPUs do not split over {topo.sockets_per_node} sockets"
        )
    if topo.nodes > 1 and topo.inter_node is None:
        raise ValueError(f"{path}: {topo.nodes} nodes need topology.inter_node")
    return topo


def _opcurves(d: dict, device: str, path: Path, root: Path) -> OpCurves | None:
    """A profile's own `opcurves` (calibrated), else its catalog device's curve file."""
    if d.get("opcurves"):
        return parse_curves(d["opcurves"], f"{path}: opcurves")
    return device_curves(device, root)


@cache
def device_curves(device: str, root: Path = HARDWARE_DIR) -> OpCurves | None:
    """The catalog curves of `device` (configs/hardware/opcurves/<device>.yaml), or None."""
    path = root / OPCURVES_DIR / f"{device}.yaml"
    return parse_curves(_read(path), str(path)) if path.is_file() else None


def available_profiles(root: Path = HARDWARE_DIR) -> list[str]:
    return sorted(p.stem for p in root.glob("*.yaml") if p.name not in CATALOGS)
