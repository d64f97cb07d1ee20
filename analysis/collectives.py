"""Collectives as NCCL runs them: latency by algorithm and hop, bus bandwidth by message size,
on the path a group spans in the profile's topology.

The data is `configs/hardware/collectives.yaml`: NCCL's own latency model (tuning.cc: a base
latency per algorithm and protocol plus a latency per hop and hardware class) and, per link
class, published nccl-tests bus-bandwidth curves by message size, every point with its source
or `estimate`.

One collective of `size` bytes (nccl-tests' size) among p ranks on link class c costs

    t = L(op, p) + max(0, T_c(op, size) - L(op, n_c)) * f(op, p) / f(op, n_c)

where T_c = size * f(op, n_c) / busbw_c(size) is what nccl-tests measured on n_c ranks, f is
nccl-tests' bus-bandwidth factor (all_reduce 2(p-1)/p, all_gather / reduce_scatter /
all_to_all (p-1)/p, send / broadcast 1) and L = base + steps(op, p) * hop latency (ring steps:
2(p-1) all_reduce, p-1 all_gather / reduce_scatter / all_to_all / broadcast, 1 send). At p = n_c
it returns the measurement itself; at other p it moves the latency hops and the bytes on the
wire, which is how NCCL's ring algorithms scale (busbw is p-independent by construction).

The path: a group inside one socket (or one NVSwitch) uses the profile's `intra` class; one
spanning sockets of a node the `cross_socket` class (every ring crosses the socket link); one
spanning nodes is bound by the slowest of its node's own path and the network class, whose
bandwidth the node's concurrent groups share: the same-axis groups of an SPMD layout all run the
collective at once, so a shared link (a node's one NIC, the socket link) carries
gpus_under_it / members_under_it of them. With one NIC per GPU (rails), k members of a group on
a node drive k NICs. numpy and yaml only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import yaml

COLLECTIVES_FILE = (
    Path(__file__).resolve().parent.parent / "configs" / "hardware" / "collectives.yaml"
)
OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send", "broadcast")
# the curve an op is priced with, in order of preference (a ring all_gather moves the same
# bytes per rank and step as a ring all_reduce's halves: NVIDIA/nccl-tests doc/PERFORMANCE.md)
_CURVES = {
    "all_reduce": ("all_reduce",),
    "all_gather": ("all_gather", "all_reduce"),
    "reduce_scatter": ("reduce_scatter", "all_gather", "all_reduce"),
    "all_to_all": ("all_to_all", "all_gather", "all_reduce"),
    "send": ("send_recv", "all_gather", "all_reduce"),
    "broadcast": ("all_gather", "all_reduce"),
}
# NVLink SHARP all_reduce: NCCL picks it on NVSwitch systems for communicators of more than 4
# GPUs and a ring below (collectives.yaml, nvswitch-h100 description, from S6)
_NVLS_MIN_RANKS = 5
# NCCL's protocol by message size (estimate: its tuner picks LL for small messages, LL128 for
# medium, Simple for large; the crossovers vary by system, these are typical of nccl-tests logs)
_LL_MAX_BYTES, _LL128_MAX_BYTES = 64 * 1024, 8 * 1024 * 1024


def busbw_factor(op: str, p: int) -> float:
    """nccl-tests' bus-bandwidth factor: busbw = algbw * factor."""
    if op == "all_reduce":
        return 2 * (p - 1) / p
    if op in ("all_gather", "reduce_scatter", "all_to_all"):
        return (p - 1) / p
    return 1.0


def ring_steps(op: str, p: int) -> int:
    """Latency hops of NCCL's ring algorithm for `op` over p ranks."""
    if op == "all_reduce":
        return 2 * (p - 1)
    if op == "send":
        return 1
    return p - 1


@dataclass(frozen=True)
class BusCurve:
    """nccl-tests busbw (GB/s) by size (bytes), measured on `gpus` ranks."""

    gpus: int
    sizes: tuple[float, ...]
    gb_s: tuple[float, ...]

    def measured_s(self, op: str, size: float) -> float:
        """Seconds nccl-tests took at `size` (at least the smallest point's) on `gpus` ranks:
        size * factor / busbw, busbw linear in log(size) between points and the largest point's
        above them."""
        bw = float(np.interp(math.log(max(size, self.sizes[0])), np.log(self.sizes), self.gb_s))
        return size * busbw_factor(op, self.gpus) / (bw * 1e9)


@dataclass(frozen=True)
class LinkClass:
    name: str
    hop: str  # nvlink | pci | net: which per-hop latency row applies
    peak_gb_s: float
    curves: dict[str, BusCurve]

    def curve(self, op: str, p: int) -> tuple[str, BusCurve]:
        """(curve name, curve) that prices `op` over p ranks on this class."""
        if op == "all_reduce" and p < _NVLS_MIN_RANKS and "all_reduce_ring" in self.curves:
            return "all_reduce", self.curves["all_reduce_ring"]
        for name in _CURVES[op]:
            if name in self.curves:
                return ("all_reduce" if name == "all_reduce" else _as_op(name)), self.curves[name]
        raise ValueError(f"link class {self.name} has no bus-bandwidth curve for {op}")


def _as_op(curve: str) -> str:
    return "send" if curve == "send_recv" else curve


@dataclass(frozen=True)
class Latency:
    base: dict[str, float]  # protocol -> us (ring algorithm)
    per_hop: dict[str, dict[str, float]]  # hop class -> protocol -> us (ring algorithm)

    def seconds(
        self, op: str, p: int, hop: str, size: float, net_hop: str | None = None, nodes: int = 1
    ) -> float:
        """NCCL's ring latency for `op` over p ranks whose hops are `hop`, except the 2(nodes-1)
        (all_reduce) or nodes-1 (others) steps that cross nodes on `net_hop` (tuning.cc)."""
        if p <= 1:
            return 0.0
        proto = "ll" if size <= _LL_MAX_BYTES else "ll128" if size <= _LL128_MAX_BYTES else "simple"
        steps = ring_steps(op, p)
        inter = 0 if net_hop is None else min(steps, ring_steps(op, nodes) if nodes > 1 else 0)
        hops = (steps - inter) * self.per_hop[hop][proto]
        if inter:
            hops += inter * self.per_hop[net_hop][proto]
        return (self.base[proto] + hops) * 1e-6


@dataclass(frozen=True)
class Collectives:
    latency: Latency
    classes: dict[str, LinkClass]
    overlap_slowdown: (
        float  # fraction: compute overlapping a collective in flight runs this much slower
    )

    def link(self, name: str) -> LinkClass:
        if name not in self.classes:
            raise ValueError(
                f"link class {name!r} is not in {COLLECTIVES_FILE.name}; known: "
                + ", ".join(self.classes)
            )
        return self.classes[name]

    def wire_s(self, cls: LinkClass, op: str, size: float, p: int, share: float = 1.0) -> float:
        """Seconds one `op` of `size` bytes over p ranks spends moving data on `cls` (its
        latency taken out), at `share` times the class's bandwidth (a shared link's fraction,
        or several rails)."""
        if p <= 1:
            return 0.0
        curve_op, curve = cls.curve(op, p)
        n = curve.gpus
        # below the smallest measured size the data time shrinks with the size at that point's
        # bandwidth (the latency, priced apart, stays): a curve whose smallest point is large
        # must not turn a small message into a large one's time
        at = max(size, curve.sizes[0])
        wire = curve.measured_s(curve_op, at) - self.latency.seconds(curve_op, n, cls.hop, at)
        wire = max(0.0, wire) * size / at
        return wire * busbw_factor(op, p) / busbw_factor(curve_op, n) / share

    def time_on(self, cls: LinkClass, op: str, size: float, p: int, share: float = 1.0) -> float:
        """Seconds of one `op` of `size` bytes over p ranks on `cls`: latency plus wire time."""
        if p <= 1:
            return 0.0
        return self.latency.seconds(op, p, cls.hop, size) + self.wire_s(cls, op, size, p, share)


def _curve(raw: dict, where: str) -> BusCurve:
    points = sorted((float(pt["bytes"]), float(pt["gb_s"])) for pt in raw["points"])
    if not points or any(s <= 0 or b <= 0 for s, b in points):
        raise ValueError(f"{where}: need points with positive bytes and gb_s")
    sizes, gb_s = zip(*points, strict=True)
    return BusCurve(int(raw["gpus"]), sizes, gb_s)


def _protocols(raw: dict) -> dict[str, float]:
    return {k: float(raw[k]) for k in ("ll", "ll128", "simple")}


@cache
def load_collectives(path: Path = COLLECTIVES_FILE) -> Collectives:
    """The NCCL latency model and link classes of `collectives.yaml`."""
    data = yaml.safe_load(path.read_text())
    lat = data["nccl_latency_us"]
    latency = Latency(
        _protocols(lat["base"]["ring"]),
        {hop: _protocols(rows["ring"]) for hop, rows in lat["per_hop"].items()},
    )
    classes = {}
    for name, c in data["link_classes"].items():
        curves = {op: _curve(raw, f"{path}: {name}.{op}") for op, raw in c["busbw"].items()}
        if c["hop"] not in latency.per_hop:
            raise ValueError(f"{path}: {name}.hop {c['hop']!r} has no per-hop latency row")
        classes[name] = LinkClass(name, c["hop"], float(c["peak_gb_s"]), curves)
    # the file's recommended central value (the entry whose source is an estimate of the centre)
    central = [
        float(e["compute_slowdown_pct"])
        for e in data.get("overlap_slowdown") or []
        if str(e.get("source", "")).startswith("estimate")
    ]
    return Collectives(latency, classes, (central[0] if central else 0.0) / 100)


@dataclass(frozen=True)
class Topology:
    """Where a node's GPUs sit and which link class joins each pair (names in collectives.yaml).

    GPUs are numbered node by node, and inside a node socket by socket in equal shares."""

    gpus_per_node: int
    nodes: int
    intra: str  # GPUs under one socket (one PCIe switch / root complex) or one NVSwitch
    sockets_per_node: int = 1
    cross_socket: str | None = None  # a group spanning a node's sockets
    inter_node: str | None = None  # a group spanning nodes
    nics_per_node: int = 1  # network ports a node's GPUs share (gpus_per_node: one per GPU)

    @property
    def gpus_per_socket(self) -> int:
        return self.gpus_per_node // self.sockets_per_node

    def node(self, rank: int) -> int:
        return rank // self.gpus_per_node

    def socket(self, rank: int) -> int:
        return rank // self.gpus_per_socket


def _per(key, ranks: list[int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for r in ranks:
        out[key(r)] = out.get(key(r), 0) + 1
    return out


def collective_s(
    topo: Topology,
    data: Collectives,
    op: str,
    size: float,
    members: list[int],
    group: list[int] | None = None,
) -> float:
    """Seconds of one `op` of `size` bytes among global ranks `members` on `topo`.

    `group`: the axis group the op belongs to (for send / recv, the ranks of the axis the pair
    lies on; default `members`): it tells how many groups of the same axis share a link."""
    p = len(members)
    if p <= 1:
        return 0.0
    group = group or members
    intra = data.link(topo.intra)
    on_node = _per(topo.node, group)
    nodes = len(_per(topo.node, members))
    if nodes > 1:
        if topo.inter_node is None:
            raise ValueError(
                "the profile's topology has no inter_node class for a group across nodes"
            )
        net = data.link(topo.inter_node)
        node = _node_class(topo, data, group)
        k = min(on_node.values())  # members of the group on one node
        # network bandwidth this group gets on a node: its share of a shared NIC (the node's
        # same-axis groups all cross at once), or one rail per member with a NIC per GPU
        nics = k * topo.nics_per_node / topo.gpus_per_node
        latency = data.latency.seconds(op, p, node.hop, size, net.hop, nodes)
        if op == "send":
            return latency + data.wire_s(net, op, size, 2, min(1.0, nics))
        if op == "all_to_all":
            # pairwise exchange: (p - k) / p of each rank's data leaves the node through the NICs
            # while k / p of it stays on the node's own fabric
            net_s = data.wire_s(
                net, "send", size * topo.gpus_per_node * (p - k) / p, 2, topo.nics_per_node
            )
            node_s = data.wire_s(node, op, size * k / p, k) if k > 1 else 0.0
            return latency + max(net_s, node_s)
        node_s = data.wire_s(node, op, size, p) if k > 1 else 0.0
        return latency + max(node_s, data.wire_s(net, op, size, p, nics))
    if topo.sockets_per_node > 1 and len(_per(topo.socket, members)) > 1:
        cross = data.link(topo.cross_socket or topo.intra)
        k = min(_per(topo.socket, group).values())
        return data.time_on(cross, op, size, p, k / topo.gpus_per_socket)
    return data.time_on(intra, op, size, p)


def _node_class(topo: Topology, data: Collectives, group: list[int]) -> LinkClass:
    """The class of a group's path inside a node: across its sockets or within one."""
    sockets = {topo.socket(r) % topo.sockets_per_node for r in group}
    if topo.sockets_per_node > 1 and len(sockets) > 1:
        return data.link(topo.cross_socket or topo.intra)
    return data.link(topo.intra)
