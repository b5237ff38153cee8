"""Which module reads which module's output: found by running one forward and matching tensor objects.

A consumer reads a producer's output *directly* when the very tensor object the producer returned is
the consumer's first input (identity ops such as ``nn.Identity`` and eval-mode dropout return their
input unchanged, so they do not break the chain; a reshape, a window partition or an add does).
This finds LayerNorm -> Linear and GELU -> Linear edges by the model's data flow, whatever the
family's attribute names are.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn


def trace_consumers(root: nn.Module, run: Callable[[], object], producer: Callable[[nn.Module], bool],
                    consumer: Callable[[nn.Module], bool]) -> dict[str, list[str]]:
    """``{producer name: [consumer names]}`` (names relative to ``root``) observed while ``run()`` executes.

    Producers whose output reaches no consumer directly are left out.
    """
    produced: dict[int, str] = {}
    alive: list = []  # keeps every producer output alive, so ids stay unique during the run
    found: dict[str, list[str]] = {}
    handles = []

    def on_output(name):
        def hook(_m, _args, out):
            alive.append(out)
            produced[id(out)] = name
        return hook

    def on_input(name):
        def hook(_m, args):
            if args and id(args[0]) in produced:
                users = found.setdefault(produced[id(args[0])], [])
                if name not in users:
                    users.append(name)
        return hook

    try:
        for name, m in root.named_modules():
            if producer(m):
                handles.append(m.register_forward_hook(on_output(name)))
            if consumer(m):
                handles.append(m.register_forward_pre_hook(on_input(name)))
        run()
    finally:
        for h in handles:
            h.remove()
    return found


def gelu_types() -> tuple[type[nn.Module], ...]:
    """GELU activation module classes of torch, timm and transformers (those installed)."""
    types: list[type[nn.Module]] = [nn.GELU]
    try:
        from timm.layers import activations as ta

        types += [ta.GELU, ta.GELUTanh, ta.QuickGELU]
    except ImportError:
        pass
    try:
        from transformers import activations as ha

        types += [getattr(ha, n) for n in ("GELUActivation", "NewGELUActivation", "FastGELUActivation",
                                           "QuickGELUActivation", "GELUTanh", "PytorchGELUTanh",
                                           "AccurateGELUActivation") if hasattr(ha, n)]
    except ImportError:
        pass
    return tuple(types)
