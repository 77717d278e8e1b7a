"""One graph, analysed: captured, shape-propagated at two batch sizes, and every node given a role.

This is the common front half of ``cut_points``, ``split`` and ``realign``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.fx as fx

from .capture import Captured, capture
from .rows import Facts, MetaCache, propagate
from .separable import Verdict, roles


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


def analyze(fragment: Any, example: Any = None, name: str = "fragment", cache: MetaCache | None = None) -> Analysis:
    captured = capture(fragment, example, name)
    facts = propagate(captured.gm, captured.inputs, cache or MetaCache(), name)
    return Analysis(captured, facts, roles(captured.gm, facts))
