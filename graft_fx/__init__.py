"""graft_fx: DNN re-alignment for split (hybrid) inference, as torch.fx passes.

    cut_points(model, example_inputs)   where a model can be cut with one tensor crossing
    split(model, at, example_inputs)    the (head, tail) GraphModules of one cut
    realign(fragments)                  one RealignedModule running the fragments' shared layers once
    torch.compile(fn, backend="graft")  realign the fragments one compiled function runs (backend.py)
"""

from .capture import InputSpec
from .cuts import CutPoint, cut_points, split
from .errors import GraftError, TraceError
from .plan import Plan, Segment, Unshared
from .realign import PaddedRealignedModule, RealignedModule, realign
from .backend import register as _register_backend

_register_backend()

__all__ = [
    "CutPoint", "GraftError", "InputSpec", "PaddedRealignedModule", "Plan", "RealignedModule", "Segment", "TraceError", "Unshared",
    "cut_points", "realign", "split",
]
