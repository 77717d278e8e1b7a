"""Serving split-inference fragments over real networks: the simulator half of graft_fx.

Phones run the head of a model, upload the cut tensor over a measured network, and a GPU server
batches the tails under a latency SLO. The subpackage is built from `traces` (bandwidth over time,
loaded from public measurement sets, a subset bundled so that it runs offline), `workload`
(clients, devices and arrivals), `profiles` (latency against batch size and share), `planner`
(grouping fragment types and sizing their shares), `batching` (deadline-aware batch formation)
and `simulator` (which drives them all). So far `traces`, `requests`, `batching` and `workload` exist.
"""

from .batching import EXPIRED, HOPELESS, Batch, BatchQueue, Decision, Drop, Outcome, Stats, run_offline
from .requests import Request
from .workload import (
    DEVICES, ArrivalProcess, Choice, Client, ClientStats, DeviceClass, Gamma, ModelCosts, Origin,
    Poisson, Workload, choose, generate, make_clients, model_costs,
)
from .traces import (
    Trace, bundled, bundled_names, load_ghent, load_gnettrack, load_mahimahi, load_pensieve,
    load_trace,
)

__all__ = [
    "DEVICES", "ArrivalProcess", "Choice", "Client", "ClientStats", "DeviceClass", "Gamma", "ModelCosts",
    "Origin", "Poisson", "Workload", "choose", "generate", "make_clients", "model_costs",
    "EXPIRED", "HOPELESS", "Batch", "BatchQueue", "Decision", "Drop", "Outcome", "Request", "Stats", "run_offline",
    "Trace", "bundled", "bundled_names", "load_ghent", "load_gnettrack", "load_mahimahi",
    "load_pensieve", "load_trace",
]
