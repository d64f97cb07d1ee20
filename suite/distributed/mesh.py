"""Parallel degrees and the one device mesh that all strategies share.

Axis order, outermost to innermost: data, cfg, pipefusion, ring, ulysses, tensor, patch. The
chattiest axes sit innermost so that, with ranks numbered node by node, their groups land on
the fastest links (NVLink inside a node); data and cfg exchange once per step or once per run
and tolerate slow links.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

AXES: tuple[str, ...] = ("data", "cfg", "pipefusion", "ring", "ulysses", "tensor", "patch")


@dataclass(frozen=True)
class ParallelDims:
    """Degree per mesh axis; the product is the world size."""

    data: int = 1
    cfg: int = 1
    pipefusion: int = 1
    ring: int = 1
    ulysses: int = 1
    tensor: int = 1
    patch: int = 1

    @classmethod
    def from_mapping(cls, degrees: Mapping[str, int]) -> ParallelDims:
        unknown = sorted(set(degrees) - set(AXES))
        if unknown:
            raise ValueError(f"unknown mesh axis {unknown}; allowed axes: {', '.join(AXES)}")
        for axis, degree in degrees.items():
            if not isinstance(degree, int) or isinstance(degree, bool) or degree < 1:
                raise ValueError(
                    f"degree of axis '{axis}' is {degree!r}; it must be an integer >= 1"
                )
        return cls(**dict(degrees))

    @property
    def world_size(self) -> int:
        return math.prod(getattr(self, f.name) for f in fields(self))

    def active(self) -> dict[str, int]:
        """Axes with degree > 1, outermost first."""
        return {axis: getattr(self, axis) for axis in AXES if getattr(self, axis) > 1}

    def degree(self, axis: str) -> int:
        return getattr(self, axis)

    def label(self) -> str:
        """Short human label, e.g. 'cfg=2 ulysses=2' ('single' for one device)."""
        return " ".join(f"{a}={d}" for a, d in self.active().items()) or "single"


class ParallelMesh:
    """The world's named DeviceMesh, handing out process groups by axis name.

    Axes of degree 1 have no group: `size(axis)` is 1 and `rank(axis)` is 0 there, so strategies
    can be written for the general case and still run on one device.
    """

    def __init__(self, dims: ParallelDims, device_type: str):
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh

        self.dims = dims
        self.world_size = dims.world_size
        self.global_rank = dist.get_rank() if dist.is_initialized() else 0
        active = dims.active()
        self._mesh = None
        self._ranks: dict[str, list[int]] = {}  # axis -> group's global ranks (asked per op)
        self._groups: dict[str, object] = {}  # axis -> process group (asked per op)
        if active:
            self._mesh = init_device_mesh(
                device_type, tuple(active.values()), mesh_dim_names=tuple(active.keys())
            )

    def size(self, axis: str) -> int:
        return self.dims.degree(axis)

    def rank(self, axis: str) -> int:
        if self.size(axis) == 1:
            return 0
        return self._mesh.get_local_rank(axis)

    def group(self, axis: str):
        """The process group spanning `axis`, or None for an axis of degree 1."""
        if self.size(axis) == 1:
            return None
        group = self._groups.get(axis)
        if group is None:
            group = self._groups[axis] = self._mesh.get_group(axis)
        return group

    def global_ranks(self, axis: str) -> list[int]:
        """Global ranks of this rank's group on `axis`, in axis-rank order."""
        if axis not in self._ranks:
            if self.size(axis) == 1:
                self._ranks[axis] = [self.global_rank]
            else:
                import torch.distributed as dist

                self._ranks[axis] = dist.get_process_group_ranks(self.group(axis))
        return self._ranks[axis]


_LIBRARY_MESHES: dict[tuple, object] = {}  # (device type, shape, names) -> DeviceMesh


def library_mesh(device_type: str, shape: tuple[int, ...], names: tuple[str, ...]):
    """A DeviceMesh over the whole world with a library's own dim names (diffusers wants e.g.
    ('ring', 'ulysses') with both present, or ('tp',)), made once per layout so every run of a
    sweep reuses its process groups. Collectives the library issues on it bypass the ledger."""
    from torch.distributed.device_mesh import init_device_mesh

    key = (device_type, shape, names)
    if key not in _LIBRARY_MESHES:
        _LIBRARY_MESHES[key] = init_device_mesh(device_type, shape, mesh_dim_names=names)
    return _LIBRARY_MESHES[key]
