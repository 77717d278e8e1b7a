"""One graph, analysed: captured, its values described, and every node given a role.

This is the common front half of ``cut_points``, ``split`` and ``realign``. Capturing a module
(torch.export) is the expensive step, so the analysis of a module is cached while the module
stays as it was: same example row shapes, same parameter and buffer objects, same train/eval
modes and the same hooks. Changing any of those captures it again.
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass, replace
from typing import Any, Hashable

import torch
import torch.fx as fx

from .capture import Captured, capture, fetch_attr
from .facts import Facts, collect
from .separable import Role, Verdict, draws_random, roles, updates


@dataclass
class Analysis:
    captured: Captured
    facts: dict[fx.Node, Facts]
    verdicts: dict[fx.Node, Verdict]

    @property
    def gm(self) -> fx.GraphModule:
        return self.captured.gm

    @property
    def nodes(self) -> list[fx.Node]:
        """Every node but the output, in graph order."""
        return [n for n in self.gm.graph.nodes if n.op != "output"]

    @functools.cached_property
    def write_only(self) -> set[fx.Node]:
        """Nodes that only compute what a write-back writes: functionalization regenerates the
        base of a view that was written into. They compute no output; alignment leaves them out
        of users signatures, since a fragment that does not write has no counterpart of them."""
        found: set[fx.Node] = set()
        for n in reversed(self.nodes):
            users = list(n.users)
            if users and all(u in found or u.op != "output" and self.verdicts[u].role is Role.WRITE for u in users):
                found.add(n)
        return found

    @property
    def random(self) -> list[fx.Node]:
        """The nodes that draw random numbers (dropout in training mode, ``torch.rand``): a
        fragment with any has outputs that differ from run to run."""
        return [n for n in self.nodes if draws_random(n)]

    @property
    def state(self) -> dict[str, torch.Tensor]:
        """The buffers (and parameters) this fragment updates in place, by attribute name: its
        write-back targets and what ``separable.HIDDEN_UPDATES`` names (a train-mode batch
        norm's running statistics). They are the fragment's own tensors, not copies."""
        written = [w for n in self.nodes for w in updates(n, self.verdicts) if w.op == "get_attr"]
        return {n.target: fetch_attr(self.gm, n.target) for n in written}


_CACHE: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[Hashable, Analysis]]" = weakref.WeakKeyDictionary()


def _state(module: torch.nn.Module, example: Any) -> Hashable:
    """What a capture of ``module`` depends on besides its code (see the module docstring)."""
    examples = example if isinstance(example, (tuple, list)) else (example,)
    shapes = tuple((tuple(t.shape[1:]), t.dtype, t.device) if isinstance(t, torch.Tensor) else repr(t) for t in examples)
    modules = tuple(
        (m.training, tuple(m._forward_hooks), tuple(m._forward_pre_hooks),
         tuple(map(id, m._parameters.values())), tuple(map(id, m._buffers.values())))
        for m in module.modules())
    hooks = tuple(len(h) for h in (torch.nn.modules.module._global_forward_hooks,
                                   torch.nn.modules.module._global_forward_pre_hooks))
    return shapes, modules, hooks, torch.is_autocast_enabled()


def analyze(fragment: Any, example: Any = None, name: str = "fragment") -> Analysis:
    """Capture ``fragment`` and describe every node (see ``capture``, ``facts``, ``separable``)."""
    cacheable = isinstance(fragment, torch.nn.Module) and not (
        isinstance(fragment, fx.GraphModule) and "graft_batch" in fragment.meta)
    key = _state(fragment, example) if cacheable else None
    if cacheable and fragment in _CACHE and _CACHE[fragment][0] == key:
        hit = _CACHE[fragment][1]
        return Analysis(replace(hit.captured, name=name, call=fragment), hit.facts, hit.verdicts)
    captured = capture(fragment, example, name)
    facts = collect(captured.gm, captured.batch)
    analysis = Analysis(captured, facts, roles(captured.gm, facts))
    if cacheable:  # the cached copy must not hold the module, or the weak key never dies
        _CACHE[fragment] = (key, Analysis(replace(captured, call=None), facts, analysis.verdicts))
    return analysis
