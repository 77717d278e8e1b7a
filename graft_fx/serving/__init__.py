"""Serving split-inference fragments over real networks: the planning and simulation half of graft_fx.

Phones run the head of a model, upload the cut tensor over a measured network, and a GPU server
batches the tails under a latency SLO. The subpackage is built from `traces` (bandwidth over time,
loaded from public measurement sets, a subset bundled so that it runs offline), `devices` (how
fast phones are), `uploads` (what they send at a cut), `workload` (clients, arrivals and their cut
choices), `profiles` (latency against batch size and share: `measure`d here, loaded, or modelled
by `roofline`, over the `pieces` of a model), `partitions` (the shares a GPU can make), `planner`
(grouping fragment types, sizing their partitions, time sharing), `deployment` (plans packed onto
whole GPUs), `batching` (deadline-aware batch formation), `simulator` (which replays one request
stream through every policy, built from `stream`, `pricing`, `routing`, `replay`, `search` and
`results`), `seeds` and `stats` (figures over seeds, with confidence intervals)
and `report` (its table, JSON and plot). `zoo` and `resolve` turn
names into models, traces and profiles.
"""

from .batching import EXPIRED, HOPELESS, Batch, BatchQueue, Decision, Drop, Outcome, Stats, run_offline, run_shared
from .deployment import Deployment, deploy
from .partitions import Partitioning, for_device
from .planner import Demand, Group, Partition, Plan, Replanner, fluid_bound, plan
from .profiles import Piece, Profile
from .requests import Request
from .seeds import Summary, over_seeds
from .results import PolicyResult
from .simulator import POLICIES, Scenario, simulate
from .stats import Median, median_ci
from .devices import DEVICES, PHONE_SPEEDS, DeviceClass, LogNormalSpeeds
from .uploads import CutTensor, Upload
from .workload import (
    ArrivalProcess, Choice, Client, ClientStats, Gamma, ModelCosts, Origin, Poisson, Workload, choose, generate,
    make_clients, model_costs,
)
from .traces import (
    Trace, bundled, bundled_names, load_ghent, load_gnettrack, load_mahimahi, load_pensieve,
    load_trace,
)

__all__ = [
    "DEVICES", "PHONE_SPEEDS", "DeviceClass", "LogNormalSpeeds", "CutTensor", "Upload",
    "ArrivalProcess", "Choice", "Client", "ClientStats", "Gamma", "ModelCosts",
    "Origin", "Poisson", "Workload", "choose", "generate", "make_clients", "model_costs",
    "Demand", "Group", "Partition", "Plan", "Replanner", "fluid_bound", "plan", "Piece", "Profile",
    "Partitioning", "for_device", "Deployment", "deploy", "Summary", "over_seeds", "Median", "median_ci",
    "POLICIES", "PolicyResult", "Scenario", "simulate",
    "EXPIRED", "HOPELESS", "Batch", "BatchQueue", "Decision", "Drop", "Outcome", "Request", "Stats", "run_offline",
    "run_shared",
    "Trace", "bundled", "bundled_names", "load_ghent", "load_gnettrack", "load_mahimahi",
    "load_pensieve", "load_trace",
]
