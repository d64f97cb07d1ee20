"""Every strategy, registered: names, mesh axes, families, options and validation, as data.

Torch-free: config validation reads this registry in milliseconds. Each `apply` is named by a
"module:function" path into the strategy's module (torch, diffusers), imported only when a
rank applies the strategy (`suite.parallel.apply`).
"""

from __future__ import annotations

from suite.parallel import Option, Strategy, register
from suite.parallel import checks as c
from suite.parallel.plans import PIPE_PLANS, PLANS, SEQUENCE_FAMILIES
from workloads.preset import FAMILIES

ALL_FAMILIES = frozenset(FAMILIES)
_P = "suite.parallel."

# -- single device; batch-level (cfg.py) -------------------------------------------------------

register(
    Strategy(
        name="none",
        axes=(),
        families=ALL_FAMILIES,
        exact=True,
        paper="single device (baseline)",
        apply=_P + "single:apply_none",
    )
)
register(
    Strategy(
        name="data",
        axes=("data",),
        families=ALL_FAMILIES,
        exact=True,
        paper="data parallelism (independent images per device)",
        apply=_P + "cfg:apply_data",
        validate=c.validate_data,
    )
)
register(
    Strategy(
        name="cfg",
        axes=("cfg",),
        families=ALL_FAMILIES,
        exact=True,
        paper="CFG parallelism (xDiT, Fang et al. 2024): one guidance branch per device",
        apply=_P + "cfg:apply_cfg",
        validate=c.validate_cfg,
    )
)

# -- patch parallelism (patch.py) --------------------------------------------------------------

register(
    Strategy(
        name="naive_patch",
        axes=("patch",),
        families=ALL_FAMILIES,
        exact=False,
        paper="Naive Patch baseline of DistriFusion (Li et al., CVPR 2024)",
        apply=_P + "patch:apply_naive_patch",
        # images: row | column | alternate; video: frames | height | alternate (patch_video)
        options={"split": Option("alternate", choices=c.SPLITS)},
        validate=c.validate_naive_patch,
    )
)
register(
    Strategy(
        name="distrifusion",
        axes=("patch",),
        families=ALL_FAMILIES,
        exact=False,  # exact with full_sync=True
        paper="DistriFusion: displaced patch parallelism (Li et al., CVPR 2024)",
        apply=_P + "patch:apply_distrifusion",
        options={
            "gn_mode": Option("corrected", choices=c.GN_MODES),
            "warmup_steps": Option(1, kind=int, minimum=0),
            "full_sync": Option(False, choices=(False, True)),
            # async all-gathers batched per top-level block or per step, as the reference code
            # batches them (bytes unchanged; suite.parallel.patch_state)
            "coalesce": Option("block", choices=c.COALESCE_MODES),
            # bands: rows on images; on video along latent frames (unset: frames) or token
            # rows of every frame (suite.parallel.patch_video). Not stored unless set, so image
            # runs keep their run ids
            "split": Option(None, choices=c.DISTRI_SPLITS, stored=False),
        },
        validate=c.validate_distrifusion,
    )
)

# -- pipeline (pipeline.py) --------------------------------------------------------------------

register(
    Strategy(
        name="pipefusion",
        axes=("pipefusion",),
        families=frozenset(PIPE_PLANS),
        exact=False,
        paper="PipeFusion: Patch-level Pipeline Parallelism for DiT Inference (Wang et al. 2024)",
        apply=_P + "pipeline:apply_pipefusion",
        options={
            # M: patches (bands of latent rows) per image; None means M = N, the paper's choice
            "patches": Option(default=None, kind=int, minimum=1),
            # synchronous whole-image steps before the pipeline starts (xDiT's default: 1)
            "warmup_steps": Option(default=1, kind=int, minimum=0),
        },
        validate=c.validate_pipefusion,
    )
)

# -- sequence parallelism (sequence.py) --------------------------------------------------------

_SEQUENCE = dict(
    families=SEQUENCE_FAMILIES,
    exact=True,
    apply=_P + "sequence:apply_sequence",
    validate=c.validate_sequence,
)
register(
    Strategy(
        name="ulysses",
        axes=("ulysses",),
        paper="DeepSpeed-Ulysses (Jacobs et al. 2023): all-to-all token <-> head sharding",
        **_SEQUENCE,
    )
)
register(
    Strategy(
        name="ring",
        axes=("ring",),
        paper="Ring attention (Liu et al. 2023): K/V blocks passed around a ring, LSE merge",
        **_SEQUENCE,
    )
)
register(
    Strategy(
        name="usp",
        axes=("ulysses", "ring"),  # a plain world size goes to ulysses
        paper="USP (Fang & Zhao 2024): Ulysses inside, Ring outside, on a 2-D mesh",
        **_SEQUENCE,
    )
)

# -- tensor parallelism (tensor.py) ------------------------------------------------------------

register(
    Strategy(
        name="tensor",
        axes=("tensor",),
        families=frozenset(PLANS),
        exact=True,
        paper="Megatron-LM tensor parallelism (Shoeybi et al. 2019); UNet: DistriFusion's "
        "tensor-parallel baseline (Li et al. 2024)",
        apply=_P + "tensor:apply_tensor",
        validate=c.validate_tensor,
    )
)

# -- the library's own (diffusers_cp.py) ------------------------------------------------------

register(
    Strategy(
        name="diffusers_cp",
        axes=("ulysses", "ring"),
        families=SEQUENCE_FAMILIES,
        exact=True,
        paper="diffusers ContextParallelConfig (the library's Ulysses / Ring attention)",
        apply=_P + "diffusers_cp:apply_diffusers_cp",
        validate=c.validate_diffusers_cp,
        library_collectives=True,
    )
)
register(
    Strategy(
        name="diffusers_tp",
        axes=("tensor",),
        families=SEQUENCE_FAMILIES,
        exact=True,
        paper="diffusers TensorParallelConfig (the library's tensor parallelism)",
        apply=_P + "diffusers_cp:apply_diffusers_tp",
        validate=c.validate_diffusers_tp,
        library_collectives=True,
    )
)
