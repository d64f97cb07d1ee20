"""Where a plan cuts a DiT's token sequence: the hooks shared by every token-splitting strategy.

Sequence parallelism (contiguous chunks over ring x ulysses) and patch parallelism on video
(bands along frames or token rows) cut the same places of the same models and differ only in
which tokens a rank keeps. `install_splits` installs the plan's hooks with the strategy's
`local(x, dim)`; the strategy installs its own gather after `plan.gather_after`.

What a plan may name (see plans.Plan): model inputs that already are tokens (`split_inputs`),
the token embedding's output (`split_after`, [text; video] with `split_after_text_first`), the
first block's input (`split_before`, Wan), rotary tables built from the full latent
(`split_outputs`: they follow the tokens, so every token keeps its 3-D position), and a text
mask that must be all ones (`text_mask`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from suite.parallel.attention import TextLength
from suite.parallel.plans import Plan, find

Local = Callable[[torch.Tensor, int], torch.Tensor]  # (tokens, dim) -> this rank's tokens


def module_at(model: torch.nn.Module, path: str) -> torch.nn.Module:
    """The submodule at `path`; ValueError naming the path when the model lacks it."""
    (found,) = [m for name, m in find(model, path)] or [None]
    if found is None:
        raise ValueError(f"plan names module {path!r}, which {type(model).__name__} lacks")
    return found


def each(local: Local) -> Callable:
    """`local` extended to tuples / lists of tensors (rope tables) and None."""

    def apply(x, dim: int):
        if x is None:
            return None
        if isinstance(x, tuple | list):
            return type(x)(apply(t, dim) for t in x)
        return local(x, dim)

    return apply


def install_splits(
    model: torch.nn.Module, plan: Plan, local: Local, text_length: TextLength | None
) -> None:
    """Hooks that hand the model's blocks only this rank's tokens (`local` picks them)."""
    local = each(local)
    if plan.split_inputs:

        def split_inputs(module, args, kwargs):
            for name, dim in plan.split_inputs.items():
                kwargs[name] = local(kwargs[name], dim)
            return args, kwargs

        model.register_forward_pre_hook(split_inputs, with_kwargs=True)
    if plan.split_after and plan.split_after_text_first:

        def split_after_text(module, args, out):
            t = text_length.value  # [text; image]: the text stays whole
            return torch.cat([out[:, :t], local(out[:, t:], 1)], dim=1)

        module_at(model, plan.split_after).register_forward_hook(split_after_text)
    elif plan.split_after:
        module_at(model, plan.split_after).register_forward_hook(lambda m, a, out: local(out, 1))
    if plan.split_before:

        def split_first_input(module, args, kwargs):
            if args:
                return (local(args[0], 1), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": local(kwargs["hidden_states"], 1)}

        module_at(model, plan.split_before).register_forward_pre_hook(
            split_first_input, with_kwargs=True
        )
    for path, dim in plan.split_outputs.items():
        module_at(model, path).register_forward_hook(lambda m, a, out, dim=dim: local(out, dim))
    install_mask_check(model, plan)


def install_mask_check(model: torch.nn.Module, plan: Plan) -> None:
    """Refuse, once per forward, a text mask with zeros where the plan's processors drop it."""
    if not plan.text_mask:
        return

    def check_mask(module, args, kwargs):
        mask = kwargs.get(plan.text_mask)
        # an analytic world's mask is on meta: no values to check (its shapes are the run's)
        if mask is not None and not mask.is_meta and not bool(mask.all()):
            raise NotImplementedError(
                f"{plan.family}: a padded prompt ({plan.text_mask} with zeros) needs its "
                "joint attention mask split with the tokens, which is not implemented"
            )

    model.register_forward_pre_hook(check_mask, with_kwargs=True)
