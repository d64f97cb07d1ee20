"""The PipeFusion denoising loop: stages run patches one after another, activations flow on.

Schedule of stage k of N, M patches, S steps, W warm-up steps:
- steps i < W (warm-up): the whole image, synchronously: stage 0 embeds the full latent, every
  stage runs its blocks on all tokens and sends them on; the last stage's prediction goes back
  to stage 0 as M patch messages.
- steps i >= W: patch m = 0..M-1 in order; stage k waits for patch m's activations from stage
  k-1, runs its blocks (attention against its own K/V buffer, see pipeline_stage.KVBuffer) and
  sends the result to stage k+1 asynchronously; the last stage applies the output head and CFG
  and sends patch m's prediction back to stage 0.
- stage 0 owns the latents and one solver per patch (multistep solvers keep per-patch history):
  before embedding patch m at step i it waits for the patch's prediction of step i-1 and steps
  that patch's solver. After the last step it collects the final predictions, so the final
  latents are on stage 0 (and rank 0 with it) without an extra gather.

An analytic world may stand in for steady steps (`fast_forward`, as in workloads.denoise):
stage 0 then only steps its solvers over them, and what step i-1 sent it is taken at the step
the loop resumes at.

Receives of a step are posted when the step begins, so a message can land while the receiver
still computes; sends are waited at the end of the step that issued them (the receiver posted
their receives when it began that step, which never depends on this rank's later work, so this
cannot deadlock, and at most one step of messages is in flight). Every message on the
pipefusion axis goes through `Comm`, so the ledger holds exactly the activations and
predictions moved. Per-rank step i spans this stage's share of step i; time blocked on a
receive is the bubble. The ledger stamps a point-to-point op done at the first ledger event
(or step end) that finds it complete, or at its wait's end if it was still running: its comm_s
may span compute up to that poll, its exposed time is only the wait.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from suite.distributed.comm import Comm, Pending
from suite.parallel.pipeline_stage import Stage, StageOutput

AXIS = "pipefusion"


@dataclass
class _Mailbox:
    """Posted receives and sends in flight of one rank, per step."""

    comm: Comm
    stage: Stage
    recvs: dict[int, list[Pending]] = field(default_factory=dict)  # step -> one per message
    sends: list[tuple[int, Pending]] = field(default_factory=list)

    def post(self, step: int, shapes: list[tuple[int, ...]], like: torch.Tensor, src: int) -> None:
        self.recvs[step] = [
            self.comm.recv(like.new_empty(s), AXIS, src=src, layer=_layer(src), async_op=True)
            for s in shapes
        ]

    def take(self, step: int, j: int) -> torch.Tensor:
        return self.recvs[step][j].wait()

    def send(self, step: int, x: torch.Tensor, dst: int) -> None:
        layer = _layer(self.stage.index)
        self.sends.append((step, self.comm.send(x, AXIS, dst=dst, layer=layer, async_op=True)))

    def settle(self, before: int) -> None:
        """Wait for the sends issued before step `before`; drop the receives of steps before
        `before - 1` (all taken by then), so buffers of at most two steps are kept."""
        keep = []
        for step, pending in self.sends:
            if step < before:
                pending.wait()
            else:
                keep.append((step, pending))
        self.sends = keep
        for step in [s for s in self.recvs if s < before - 1]:
            del self.recvs[step]


def _layer(stage: int) -> str:
    return f"pipefusion.stage{stage}"


@dataclass
class PipeLoop:
    """The loop one rank runs; `__call__` has workloads.denoise's signature."""

    comm: Comm
    stage: Stage
    warmup_steps: int
    hidden: int  # width of the activations between stages
    token_patch: int  # latent pixels per token side
    shards: int = 1  # ranks the sequence is split over inside a stage (ring x ulysses)

    def __call__(
        self,
        workload,
        denoiser: Callable,
        inputs,
        *,
        before_step: Callable[[int], None] | None = None,
        after_step: Callable[[int], None] | None = None,
        finalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
        fast_forward: Callable[[int], int] | None = None,
    ) -> torch.Tensor:
        from workloads import combine_cfg, initial_latents, scale_input

        stage, cursor = self.stage, self.stage.cursor
        n, k, m_count = stage.stages, stage.index, cursor.patches
        stage.attach(self.comm)
        cursor.loop += 1
        solvers = [workload.new_scheduler() for _ in range(m_count)]
        timesteps = solvers[0].timesteps
        cfg = inputs.uncond is not None
        cond = inputs.model_cond()
        latents = initial_latents(solvers[0], inputs.latents)
        shape = latents.shape
        # video (B, C, F, h, w): frames x rows as one axis of rows. Tokens are frame-major and
        # row-major, so a patch (a contiguous run of whole token rows) is a band of these rows
        latents = latents.reshape(*shape[:2], -1, shape[-1])
        b, c, h, w = latents.shape
        rows = h // m_count
        band = [slice(m * rows, (m + 1) * rows) for m in range(m_count)]
        # stage 0's latents, one tensor per patch (its solver's state; never a view of another)
        parts = [latents[:, :, band[m]].clone() for m in range(m_count)]
        # model input (stage 0 fills it) and its view as rows
        x = latents.new_zeros((2 * b if cfg else b, *shape[1:]))
        x_rows = x.view(x.shape[0], c, h, w)
        tokens = (h // self.token_patch) * (w // self.token_patch) // self.shards  # per rank
        act_full = (x.shape[0], tokens, self.hidden)
        act_patch = (x.shape[0], tokens // m_count, self.hidden)
        pred_band = (b, c, rows, w)
        mail = _Mailbox(self.comm, stage)
        local: dict[tuple[int, int], torch.Tensor] = {}  # N = 1: predictions stay here

        def pred_of(step: int, m: int) -> torch.Tensor:
            return local.pop((step, m)) if n == 1 else mail.take(step, m)

        def advance(step: int, m: int) -> None:
            """Stage 0: step patch m's solver with its prediction of `step`."""
            t = timesteps[step]
            parts[m] = solvers[m].step(pred_of(step, m), t, parts[m], return_dict=False)[0]

        def run(i: int, t: torch.Tensor) -> None:
            """This stage's share of the current part (whole image or patch m) at step i."""
            j = 0 if cursor.full else cursor.index
            todo = range(m_count) if cursor.full else [cursor.index]
            if stage.first:
                for m in todo:  # each band scaled by its own solver (Euler tracks sigma)
                    xin = scale_input(solvers[m], parts[m], t)
                    x_rows[:, :, band[m]] = torch.cat([xin, xin]) if cfg else xin
            else:
                cursor.inbox = mail.take(i, j)
            try:
                out = denoiser(x, t, cond)
            except StageOutput as done:
                mail.send(i, done.hidden_states, dst=k + 1)
                return
            out = out.reshape(out.shape[0], c, h, w)
            for m in todo:
                pred = out[:, :, band[m]]
                pred = combine_cfg(pred, workload.guidance) if cfg else pred
                if n == 1:
                    local[(i, m)] = pred
                else:
                    mail.send(i, pred.contiguous(), dst=0)

        def skip(first: int, resume: int) -> None:
            """Steps first..resume-1 are stood in for (workloads.denoise's `fast_forward`):
            stage 0 steps its solvers over them on stand-in predictions, and takes what the
            last stage sent in step first-1 at step `resume`, as the prediction of resume-1."""
            for step in range(first - 1, resume - 1):
                for m in range(m_count):
                    if stage.first:
                        stand_in = torch.empty_like(parts[m])
                        parts[m] = solvers[m].step(
                            stand_in, timesteps[step], parts[m], return_dict=False
                        )[0]
            if first - 1 in mail.recvs:
                mail.recvs[resume - 1] = mail.recvs.pop(first - 1)
            for m in range(m_count):
                if (first - 1, m) in local:
                    local[(resume - 1, m)] = local.pop((first - 1, m))

        last = len(timesteps) - 1
        resume = 0
        for i, t in enumerate(timesteps):
            if i < resume:
                continue
            if fast_forward is not None and (resume := fast_forward(i)) > i:
                skip(i, resume)
                continue
            if before_step is not None:
                before_step(i)
            full = i < self.warmup_steps
            if n > 1:
                if stage.first:
                    mail.post(i, [pred_band] * m_count, latents, src=n - 1)
                else:
                    mail.post(i, [act_full] if full else [act_patch] * m_count, x, src=k - 1)
            cursor.full = full
            if full:
                if stage.first and i > 0:
                    for m in range(m_count):
                        advance(i - 1, m)
                cursor.index = 0
                run(i, t)
            else:
                for m in range(m_count):
                    if stage.first and i > 0:
                        advance(i - 1, m)
                    cursor.index = m
                    run(i, t)
            if i == last:
                if stage.first:  # the pipeline drains into stage 0: the final predictions
                    for m in range(m_count):
                        advance(i, m)
                cursor.full = True
            mail.settle(before=i + 1)
            if i == last:
                # stage 0 holds the final latents; other stages return their initial ones
                # (same shape, so the outer strategies' gathers still match up)
                latents = (torch.cat(parts, dim=2) if stage.first else latents).reshape(shape)
                latents = finalize(latents) if finalize is not None else latents
            if after_step is not None:
                after_step(i)
        return latents
