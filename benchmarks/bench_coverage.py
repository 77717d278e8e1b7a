"""Zoo coverage: does graft_fx capture, cut, realign and share real models, exactly?

Every classification model of ``torchvision.models.list_models(module=torchvision.models)`` and a
sample of timm architectures across families (CNNs, vision transformers, MLP mixers, hybrids;
``TIMM_SIDES``) is built with random weights (``weights=None`` / ``pretrained=False``; nothing can
be downloaded), in eval mode, under ``torch.no_grad()``, and:

1. ``graft_fx.cut_points`` on a batch of 3 random images (the capture);
2. three cuts spread by FLOPs (*cuts at*): for each target fraction 0.1, 0.5 and 0.9 of the
   model's FLOPs run before the cut (``flops_before``), the cut point nearest to it after the
   previous choice, so the three are distinct and in graph order. The raw input may be chosen;
   cuts past ``MAX_FLOPS_BEFORE`` (only pooling and flatten left) are not;
3. ``graft_fx.split`` at each, and each head's activations for the 3 images; each tail applied to
   its head's output must give the model's own output (*split*; ``eager``: with the fused
   attention fast path off, which export does not trace);
4. ``graft_fx.realign(tails)`` with ``verify=True`` (it raises GraftError on a mismatch), timed as
   *realign s* (capture of the tails, analysis, alignment, emission and the verification run);
5. our own check (*exact*): ``rm(x_1, x_2, x_3)`` against each tail run alone, with
   ``torch.testing.assert_close`` at its default tolerances, for the per-fragment batch sizes
   (1, 2, 0), (0, 1, 3) and (2, absent, 1) on the heads' activations. Where that fails the
   result is *close* if it passes ``loose_tolerance`` (the slack ``verify`` allows) and the model
   itself is not batch-invariant (``batch_noise`` > 0: a row's output moves when it runs alone
   rather than in a batch); the table shows both numbers, relative to the output's magnitude;
6. *0 rows*: whether the calls with a 0-row fragment ran; *as eager* where the realigned module
   raised the error that the 0-row fragment's tail raises on its own (``reshape(0, N, h, -1)`` is
   ambiguous) and the call was checked again without that fragment;
7. *shared by 3*: whether some segment serves all three fragments, and *deepest tail shared*: the
   share of the deepest fragment's FLOPs that runs in such segments. Every model here is row-wise
   in eval mode after its deepest cut (no batch statistics, no op across samples), so every one
   is expected to share all of it (100%).

Weights are random but made to matter: ``perturb_constants`` gives every parameter initialised to
one repeated value (zero-initialised heads and last batch norms, layer scales of 1e-6, batch norm
weights and biases) and the batch norm running statistics random values near their init, so that
no branch is multiplied away and an error anywhere reaches the output.

Input sides: CNNs that end in adaptive pooling run at 64x64 (96 where their stem needs more),
torchvision ViTs at a reduced ``image_size`` (8x8 or 4x4 patches), Swin at 112, and models with a
fixed resolution (maxvit_t, the timm transformers and hybrids) at their default; see
``_torchvision_case`` and ``TIMM_SIDES``.

    python benchmarks/bench_coverage.py                       # everything (about 25 min on 2 cores)
    python benchmarks/bench_coverage.py --quick               # the CI sample of tests/test_zoo.py
    python benchmarks/bench_coverage.py --models resnet18,timm/vit_tiny_patch16_224 --markdown
    python benchmarks/bench_coverage.py --report benchmarks/results/coverage.json --markdown

Results go to ``benchmarks/results/coverage.json`` (``--json`` to change), written after every
model. ``tests/test_zoo.py`` imports the model table and the helpers from this file so that both
judge the same cases.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn
from machine import describe
import torchvision

import graft_fx

SEED = 0
IMAGES = 3  # rows of the example batch: the largest per-fragment batch of any call below
TARGETS = (0.1, 0.5, 0.9)  # fractions of the FLOPs run before each of the three cuts
CALLS: tuple[tuple[int | None, ...], ...] = ((1, 2, 0), (0, 1, 3), (2, None, 1))  # rows per fragment; None: absent
MAX_FLOPS_BEFORE = 0.95
"""Past this fraction of its FLOPs a model has only its pooling and flatten left (squeezenet's
last cuts sit at 1.00): the cost rule rightly declines to batch a tail with no FLOPs in it."""
DEFAULT_SIDE = 64
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "coverage.json")


# --- the zoo -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One model: how to build it and the side of its square input."""

    name: str  # torchvision name, or "timm/<name>"
    side: int
    kwargs: dict = field(default_factory=dict)

    @property
    def source(self) -> str:
        return "timm" if self.name.startswith("timm/") else "torchvision"

    @property
    def arch(self) -> str:
        return self.name.split("/", 1)[1] if self.source == "timm" else self.name


def _torchvision_case(name: str) -> Case:
    """Each torchvision classifier at the smallest sensible side for its architecture."""
    if name.startswith("vit_"):  # a smaller image_size: 8x8 patches (/16, /14) or 4x4 (/32)
        patch = int(name.rsplit("_", 1)[1])
        side = {16: 128, 32: 128, 14: 112}[patch]
        return Case(name, side, {"image_size": side})
    if name == "maxvit_t":  # each stage's feature map must divide into 7x7 windows: 224 is the smallest
        return Case(name, 224)
    if name.startswith("swin"):  # pads to its 7x7 (8x8 for v2) windows; 112 keeps four stages apart
        return Case(name, 112)
    if name == "inception_v3":  # its stem needs at least 75x75
        return Case(name, 96, {"aux_logits": False, "init_weights": False})
    if name == "googlenet":
        return Case(name, 64, {"aux_logits": False, "init_weights": False})
    return Case(name, DEFAULT_SIDE)


TORCHVISION: dict[str, Case] = {
    n: _torchvision_case(n) for n in torchvision.models.list_models(module=torchvision.models)
}

# timm: name -> input side (None: the model's default_cfg input_size); families in the comments.
TIMM_SIDES: dict[str, int | None] = {
    # CNNs
    "resnet18": 64, "efficientnet_b0": 64, "convnext_atto": 64, "mobilenetv3_small_100": 64,
    "regnety_002": 64, "ghostnet_100": 64, "rexnet_100": 64, "dla34": 64, "hrnet_w18_small": 64,
    "dpn68": 64, "res2net50_14w_8s": 64, "skresnet18": 64, "cspresnet50": 64, "nf_resnet26": 64,
    "mobileone_s0": 64, "repvgg_a0": 64, "hgnetv2_b0": 64, "lcnet_050": 64, "ese_vovnet19b_dw": 64,
    "xception41": 96, "mobilenetv4_conv_small": 64, "inception_next_atto": 64, "mambaout_femto": 64,
    "starnet_s050": 64, "tresnet_m": 64, "densenet121": 64, "resnest14d": 64, "selecsls42b": 64,
    # vision transformers
    "vit_tiny_patch16_224": None, "deit_tiny_distilled_patch16_224": None, "cait_xxs24_224": None,
    "xcit_nano_12_p16_224": None, "pit_ti_224": None, "crossvit_tiny_240": None,
    "eva02_tiny_patch14_224": None, "test_vit_relpos": None, "hiera_tiny_224": None,
    "pvt_v2_b0": None, "twins_svt_small": None, "swin_tiny_patch4_window7_224": None,
    "mvitv2_tiny": None, "davit_tiny": None, "focalnet_tiny_srf": None, "gcvit_xxtiny": None,
    "nest_tiny": None, "tnt_s_patch16_224": None, "volo_d1_224": None, "visformer_tiny": None,
    # MLP mixers
    "mixer_s16_224": None, "resmlp_12_224": None, "gmlp_ti16_224": None, "sequencer2d_s": None,
    # hybrids
    "levit_128s": None, "mobilevit_xxs": None, "mobilevitv2_050": None, "coat_lite_tiny": None,
    "coatnet_nano_rw_224": None, "maxvit_nano_rw_256": None, "efficientformer_l1": None,
    "efficientformerv2_s0": None, "tiny_vit_5m_224": None, "edgenext_xx_small": None,
    "poolformer_s12": None, "caformer_s18": None, "fastvit_t8": None, "repvit_m0_9": None,
    "vit_tiny_r_s16_p8_224": None, "efficientvit_b0": None,
}


def _timm_case(name: str, side: int | None) -> Case:
    if side is None:
        import timm

        side = timm.get_pretrained_cfg(name).input_size[-1]
    return Case(f"timm/{name}", side)


def timm_cases() -> dict[str, Case]:
    try:
        import timm  # noqa: F401
    except ImportError:
        return {}
    return {f"timm/{n}": _timm_case(n, s) for n, s in TIMM_SIDES.items()}


def all_cases() -> dict[str, Case]:
    return {**TORCHVISION, **timm_cases()}


# The CI sample of tests/test_zoo.py and of --quick: families covered, about 3 minutes on 2 cores.
CI_SAMPLE = (
    "resnet18", "mobilenet_v3_small", "densenet121", "shufflenet_v2_x0_5", "efficientnet_b0", "vit_b_32", "swin_t",
    "timm/convnext_atto", "timm/vit_tiny_patch16_224", "timm/mixer_s16_224", "timm/levit_128s", "timm/test_vit_relpos",
)


# --- building ----------------------------------------------------------------------------------

def perturb_constants(model: nn.Module, seed: int = SEED) -> None:
    """Random values for every parameter initialised to one repeated value and for batch norm
    running statistics, so that no layer's contribution vanishes from the output (a zero-init
    last batch norm or head, a layer scale of 1e-6) and hides a wrong result."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.is_floating_point() and p.numel() > 0 and bool((p == p.flatten()[0]).all()):
                scale = max(0.1, 0.1 * abs(float(p.flatten()[0])))
                p.add_(torch.randn(p.shape, generator=g) * scale)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) * 1.5 + 0.5)


def build(case: Case) -> nn.Module:
    torch.manual_seed(SEED)
    if case.source == "timm":
        import timm

        model = timm.create_model(case.arch, pretrained=False, **case.kwargs)
    else:
        model = torchvision.models.get_model(case.arch, weights=None, **case.kwargs)
    model.eval()
    perturb_constants(model)
    return model


def images(case: Case) -> torch.Tensor:
    g = torch.Generator().manual_seed(SEED)
    return torch.randn(IMAGES, 3, case.side, case.side, generator=g)


def pick_cuts(cuts: list[graft_fx.CutPoint], targets: tuple[float, ...] = TARGETS) -> list[int]:
    """Indices of the cut points nearest to each target ``flops_before``, each after the previous
    choice (distinct, in graph order), and leaving room for the ones still to pick. Cuts that
    leave the server less than ``1 - MAX_FLOPS_BEFORE`` of the FLOPs are passed over."""
    eligible = [i for i, c in enumerate(cuts) if c.flops_before <= MAX_FLOPS_BEFORE]
    chosen: list[int] = []
    for k, t in enumerate(targets):
        lo = chosen[-1] + 1 if chosen else 0
        room = [i for i in eligible if i >= lo]
        room = room[: max(len(room) - (len(targets) - k - 1), 0)]
        if not room:
            break
        chosen.append(min(room, key=lambda i: (abs(cuts[i].flops_before - t), i)))
    return chosen


def call_inputs(acts: list[torch.Tensor], rows: tuple[int | None, ...]) -> list[torch.Tensor | None]:
    return [None if b is None else a[:b] for a, b in zip(acts, rows)]


def _empty_like_output(tail: nn.Module, x: torch.Tensor) -> Any:
    """The 0-row slice of ``tail``'s output on one row of zeros: what a 0-row fragment returns."""
    one = torch.zeros((1, *x.shape[1:]), dtype=x.dtype, device=x.device)
    return torch.utils._pytree.tree_map_only(torch.Tensor, lambda t: t[:0], tail(one))


LOOSE_SLACK = 8
"""The looser tolerance, for models whose own output moves with the batch size (see
``batch_noise``): ``assert_close``'s default rtol, and its default atol plus ``LOOSE_SLACK``
default rtols of the output's largest magnitude (for float32: 1e-5 + 1.04e-5 x max|y|). This is
the slack ``realign(verify=True)`` allows (graft_fx/verify.py). A wrong row, a wrong weight or
batch statistics miss it by orders of magnitude; float reassociation in kernels that block by
batch size does not."""
FLOAT32_RTOL, FLOAT32_ATOL = 1.3e-6, 1e-5


def loose_tolerance(expected: torch.Tensor) -> dict[str, float]:
    """``assert_close`` keyword arguments for the looser tolerance around ``expected`` (float32)."""
    scale = expected.abs().max().item() if expected.numel() else 0.0
    return {"rtol": FLOAT32_RTOL, "atol": FLOAT32_ATOL + LOOSE_SLACK * FLOAT32_RTOL * scale}


@dataclass
class Checked:
    """What ``check_call`` saw: the largest difference relative to the largest output magnitude,
    and the error the realigned module raised for a 0-row fragment whose tail alone raises the same."""

    deviation: float
    as_eager: str = ""


def check_call(rm: graft_fx.RealignedModule, tails: list[nn.Module], inputs: list[torch.Tensor | None],
               loose: bool = False) -> Checked:
    """``rm(*inputs)`` against each tail alone; AssertionError naming the fragment on a mismatch
    (default tolerances, or ``loose_tolerance`` when ``loose``).

    A fragment with 0 rows whose tail alone raises (``reshape(0, N, h, -1)`` is ambiguous) may make
    ``rm`` raise the same kind of error, as eager would: then the call is checked again without it.
    If ``rm`` returns instead, that fragment's output must be the empty slice of its output shape.
    """
    eager: dict[int, BaseException] = {}
    for f, (tail, x) in enumerate(zip(tails, inputs)):
        if x is not None and x.shape[0] == 0:
            try:
                tail(x)
            except Exception as e:  # noqa: BLE001 - the model's own behaviour at batch 0
                eager[f] = e
    try:
        outputs = rm(*inputs)
    except Exception as e:
        if not any(type(e) is type(err) for err in eager.values()):
            raise
        rest = [None if f in eager else x for f, x in enumerate(inputs)]
        return Checked(check_call(rm, tails, rest, loose).deviation, f"{type(e).__name__}: {_first_line(e)}")
    assert len(outputs) == len(tails)
    worst = 0.0
    for f, (tail, x, out) in enumerate(zip(tails, inputs, outputs)):
        if x is None:
            assert out is None, f"fragment {f} is absent but got an output"
            continue
        expected = _empty_like_output(tail, x) if f in eager else tail(x)
        scale = expected.abs().max().item() if expected.numel() else 0.0
        assert x.shape[0] == 0 or scale > 0, f"fragment {f}: an all-zero output proves nothing"
        if out is not None and out.shape == expected.shape and expected.numel():
            worst = max(worst, (out - expected).abs().max().item() / scale)
        tolerance = loose_tolerance(expected) if loose else {}
        torch.testing.assert_close(out, expected, **tolerance,
                                   msg=lambda m, f=f, b=x.shape[0]: f"fragment {f} ({b} rows): {m}")
    return Checked(worst)


def eager(model: nn.Module, x: torch.Tensor) -> Any:
    """``model(x)`` with nn.MultiheadAttention's fused inference fast path off: torch.export
    traces the unfused path, so that is what a captured model computes (torchvision's ViTs differ
    from the fused path by up to 1e-6 of their output's magnitude; vit_h_14 exceeds the default
    tolerance)."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        return model(x)
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def verify_rows(rm: graft_fx.RealignedModule) -> list[torch.Tensor]:
    """The random inputs ``realign(verify=True)`` checks with (rows 1, 2, 3, ...; seed 0)."""
    from graft_fx.verify import random_rows

    g = torch.Generator().manual_seed(0)
    return [random_rows(specs[0], 1 + f % 3, g) for f, specs in enumerate(rm.input_specs)]


def batch_noise(model: nn.Module, x: torch.Tensor, reference: torch.Tensor) -> float:
    """How much the model's own output for a row moves when the row runs alone rather than in
    the batch ``x``: the largest difference relative to the largest output magnitude. Kernels
    pick their blocking by batch size, so this is rarely 0 for deep CNNs on CPU."""
    alone = torch.cat([eager(model, x[i:i + 1]) for i in range(x.shape[0])])
    return (alone - reference).abs().max().item() / reference.abs().max().item()


def shares_all(rm: graft_fx.RealignedModule) -> bool:
    n = rm.num_fragments
    return any(len(s.fragments) == n for s in rm.plan.segments)


def root_causes(rm: graft_fx.RealignedModule, limit: int = 10) -> list[str]:
    """The distinct reasons nodes stayed private, without the ones that only inherit privacy from
    an input ("... is private and not proven to carry the batch rows")."""
    reasons = sorted({f"{u.node}: {u.reason}" for u in rm.plan.unshared if "not proven to carry" not in u.reason})
    return reasons[:limit]


def deepest_shared(rm: graft_fx.RealignedModule) -> float:
    """The share of the deepest fragment's FLOPs (its tail: the layers after the deepest cut) that
    runs in segments serving every fragment: 1.0 when all of it is shared, as it should be."""
    n = rm.num_fragments
    deepest = [s for s in rm.plan.segments if n - 1 in s.fragments]
    total = sum(s.flops_per_row for s in deepest)
    return sum(s.flops_per_row for s in deepest if len(s.fragments) == n) / total if total else 0.0


# --- one model ---------------------------------------------------------------------------------

@dataclass
class Record:
    model: str
    source: str
    side: int
    captured: bool = False
    cut_points: int = 0
    cuts: list[str] = field(default_factory=list)
    flops_before: list[float] = field(default_factory=list)
    split_exact: bool | None = None  # each tail after its head gives the model's output
    split_close: bool | None = None  # ... at the LOOSE tolerance
    split_deviation: float | None = None  # largest difference / largest output magnitude
    verified: bool | None = None  # realign(verify=True) passed
    exact: bool | None = None  # verified and our own checks passed at default tolerances
    close: bool | None = None  # when not exact: our own checks pass at the LOOSE tolerance
    deviation: float | None = None  # largest realigned-vs-alone difference / largest output magnitude
    batch_noise: float | None = None  # when not exact: the same measure for the model alone, batch vs row
    empty_ok: bool | None = None  # calls with a 0-row fragment ran (they are checked without it if not)
    empty_as_eager: bool = False  # ... or raised as the 0-row fragment's tail alone raises
    empty_error: str = ""
    shared: bool | None = None  # some segment serves all three fragments
    deepest_shared: float | None = None  # share of the deepest tail's FLOPs run for all three
    batched_flops_fraction: float | None = None
    segments: int | None = None
    unshared: int | None = None
    realign_s: float | None = None
    total_s: float = 0.0
    stage: str = ""  # where it stopped: "" (done), build, capture, split, realign, check
    error_type: str = ""
    error: str = ""
    mismatch: str = ""  # our own check's first mismatch, if any
    private_reasons: list[str] = field(default_factory=list)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def run_case(case: Case, verbose: bool = False) -> Record:
    r = Record(case.name, case.source, case.side)
    start = time.perf_counter()
    stage = "build"
    try:
        with torch.no_grad():
            model = build(case)
            x = images(case)
            stage = "capture"
            cuts = graft_fx.cut_points(model, x)
            r.captured, r.cut_points = True, len(cuts)
            picked = [cuts[i] for i in pick_cuts(cuts)]
            if len(picked) < len(TARGETS):
                raise graft_fx.GraftError(f"only {len(cuts)} cut point(s): {', '.join(c.layer or c.name for c in cuts)}")
            r.cuts = [c.layer or c.name for c in picked]
            r.flops_before = [round(c.flops_before, 4) for c in picked]
            stage = "split"
            heads, tails = zip(*(graft_fx.split(model, c, x) for c in picked))
            acts = [h(x) for h in heads]
            reference = eager(model, x)
            r.split_exact, r.split_close = True, True
            scale = reference.abs().max().item()
            for t, a in zip(tails, acts):
                out = t(a)
                r.split_deviation = max(r.split_deviation or 0.0, (out - reference).abs().max().item() / scale)
                try:
                    torch.testing.assert_close(out, reference)
                except AssertionError as e:
                    r.split_exact = False
                    r.mismatch = r.mismatch or "split: " + _first_line(e)
                    try:
                        torch.testing.assert_close(out, reference, **loose_tolerance(reference))
                    except AssertionError:
                        r.split_close = False
            stage = "realign"
            t0 = time.perf_counter()
            try:
                rm = graft_fx.realign(list(tails))
                r.verified = True
            except graft_fx.GraftError as e:
                if isinstance(e, graft_fx.TraceError) or "differs from running it alone" not in str(e):
                    raise
                r.verified = False
                r.error_type, r.error = type(e).__name__, _first_line(e)
                rm = graft_fx.realign(list(tails), verify=False)  # to run our own checks and read the plan
            r.realign_s = round(time.perf_counter() - t0, 3)
            r.shared = shares_all(rm)
            r.deepest_shared = round(deepest_shared(rm), 4)
            r.batched_flops_fraction = round(rm.plan.batched_flops_fraction, 4)
            r.segments = len(rm.plan.segments)
            r.unshared = len(rm.plan.unshared)
            r.private_reasons = root_causes(rm)
            stage = "check"
            failures = []
            for rows in CALLS:
                try:
                    checked = check_call(rm, list(tails), call_inputs(acts, rows))
                    r.deviation = max(r.deviation or 0.0, checked.deviation)
                    if 0 in rows:
                        r.empty_ok = r.empty_ok is not False
                        if checked.as_eager:
                            r.empty_as_eager = True
                            r.empty_error = r.empty_error or f"{rows}: raises as the tail alone does: {checked.as_eager}"
                except AssertionError as e:
                    failures.append((rows, e))
                    if 0 in rows:
                        r.empty_ok = r.empty_ok is not False
                except Exception as e:  # rm raised where the tails alone do not
                    if 0 not in rows:
                        raise
                    r.empty_ok = False
                    r.empty_error = r.empty_error or f"{rows}: {type(e).__name__}: {_first_line(e)}"
                    rows = tuple(None if b == 0 else b for b in rows)
                    try:
                        r.deviation = max(r.deviation or 0.0, check_call(rm, list(tails), call_inputs(acts, rows)).deviation)
                    except AssertionError as e2:
                        failures.append((rows, e2))
            r.mismatch = "; ".join([r.mismatch] * bool(r.mismatch) + [f"{rows}: {_first_line(e)}" for rows, e in failures])
            r.exact = bool(not failures and r.verified)
            if not r.exact:
                r.close = True  # at the looser tolerance?
                for rows in CALLS:
                    rows = tuple(None if b == 0 and not r.empty_ok else b for b in rows)
                    try:
                        r.deviation = max(r.deviation or 0.0,
                                          check_call(rm, list(tails), call_inputs(acts, rows), loose=True).deviation)
                    except AssertionError:
                        r.close = False
                if not r.verified:  # the rows verify() drew, at the looser tolerance
                    try:
                        r.deviation = max(r.deviation, check_call(rm, list(tails), verify_rows(rm), loose=True).deviation)
                    except AssertionError:
                        r.close = False
                r.batch_noise = batch_noise(model, x, reference)
                r.close = r.close and r.batch_noise > 0  # only a model that is not batch-invariant itself
            stage = ""
    except Exception as e:  # noqa: BLE001 - every failure is a result here
        r.error_type, r.error = type(e).__name__, _first_line(e)
        if verbose:
            traceback.print_exc()
    r.stage = stage
    r.total_s = round(time.perf_counter() - start, 2)
    return r


def forget_analyses() -> None:
    """Drop graft_fx's cache of model analyses and collect, between models. Before graft_fx
    f324c68 each cached Analysis held its module (``Captured.call``), the key of the
    WeakKeyDictionary, so no entry died and the whole zoo in one process ran out of 24 GiB; now
    the cache lets go by itself and this only keeps memory flat sooner."""
    analysis = sys.modules.get("graft_fx.analysis")
    cache = getattr(analysis, "_CACHE", None)
    if cache is not None:
        cache.clear()
    gc.collect()


# --- reporting ---------------------------------------------------------------------------------

COLUMNS = ("model", "side", "captured", "cut points", "cuts at", "split", "exact", "0 rows", "shared by 3",
           "deepest tail shared", "batched FLOPs", "realign s", "error")


def _yn(v: bool | None) -> str:
    return "-" if v is None else "yes" if v else "**NO**"


def _split(r: Record) -> str:
    if r.split_exact or r.split_exact is None:
        return _yn(r.split_exact)
    return f"close ({r.split_deviation:.0e})" if r.split_close else "**NO**"


def _exact(r: Record) -> str:
    if r.exact or r.exact is None:
        return _yn(r.exact)
    if r.close:
        return f"close ({r.deviation:.0e} vs noise {r.batch_noise:.0e})"
    return "**NO**"


def cells(r: Record) -> tuple[str, ...]:
    err = f"{r.error_type}: {r.error}" if r.error else ""
    for more in (r.mismatch, r.empty_error):
        if more:
            err = (err + "; " if err else "") + more
    err = err.replace("|", "\\|")
    if len(err) > 160:
        err = err[:157] + "..."
    return (r.model, str(r.side), "yes" if r.captured else "**NO**", str(r.cut_points) if r.captured else "-",
            "/".join(f"{v:.2f}" for v in r.flops_before) or "-",
            _split(r), _exact(r), "as eager" if r.empty_as_eager else _yn(r.empty_ok), _yn(r.shared),
            "-" if r.deepest_shared is None else f"{100 * r.deepest_shared:.1f}%",
            "-" if r.batched_flops_fraction is None else f"{100 * r.batched_flops_fraction:.1f}%",
            "-" if r.realign_s is None else f"{r.realign_s:.2f}", err)


def text_table(records: list[Record]) -> str:
    body = [COLUMNS] + [cells(r) for r in records]
    widths = [max(len(line[i]) for line in body) for i in range(len(COLUMNS) - 1)]

    def fmt(line: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(line, widths)) + "  " + line[-1]

    return "\n".join([fmt(body[0])] + [fmt(line) for line in body[1:]])


def markdown_table(records: list[Record]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |",
             "|---|---:|---|---:|---|---|---|---|---|---:|---:|---:|---|"]
    return "\n".join(lines + ["| " + " | ".join(cells(r)) + " |" for r in records])


def summary(records: list[Record]) -> dict[str, int]:
    return {
        "tried": len(records),
        "captured": sum(r.captured for r in records),
        "realigned": sum(r.realign_s is not None for r in records),
        "exact": sum(bool(r.exact) for r in records),
        "close (batch-size numerics only)": sum(r.exact is False and bool(r.close) for r in records),
        "not exact": sum(r.exact is False and not r.close for r in records),
        "split close, not exact": sum(r.split_exact is False and bool(r.split_close) for r in records),
        "split not exact": sum(r.split_close is False for r in records),
        "0-row fragment raises as its tail alone does": sum(r.empty_as_eager for r in records),
        "0-row fragment fails": sum(r.empty_ok is False for r in records),
        "shared by all three": sum(bool(r.shared) for r in records),
        "deepest tail all shared": sum(r.deepest_shared is not None and r.deepest_shared > 0.999 for r in records),
        "fewer than 3 cut points": sum(r.error.startswith("only ") for r in records),
        "refused with TraceError/GraftError": sum(r.error_type in ("TraceError", "GraftError") and r.verified is None
                                                  and not r.error.startswith("only ") for r in records),
        "other errors": sum(bool(r.error_type) and r.error_type not in ("TraceError", "GraftError") for r in records),
    }


# --- main --------------------------------------------------------------------------------------

def parse_args(cases: dict[str, Case]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", help="comma-separated names (torchvision names, timm/<name> for timm); default: all")
    p.add_argument("--quick", action="store_true", help=f"the CI sample only: {', '.join(CI_SAMPLE)}")
    p.add_argument("--markdown", action="store_true", help="also print the table as markdown")
    p.add_argument("--json", metavar="PATH", default=RESULTS, help=f"where to write the records (default: {RESULTS})")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: leave as is)")
    p.add_argument("--verbose", action="store_true", help="print the traceback of every failure")
    p.add_argument("--report", metavar="JSON", help="print the tables of a saved run instead of running")
    p.add_argument("--resume", action="store_true",
                   help="keep the records already in --json and run only the models missing there")
    args = p.parse_args()
    args.models = args.models.split(",") if args.models else list(CI_SAMPLE) if args.quick else list(cases)
    unknown = [m for m in args.models if m not in cases]
    if unknown:
        p.error(f"unknown model(s) {unknown}; torchvision classification names or timm/<name> from TIMM_SIDES")
    return args


def save(path: str, machine: dict[str, Any], records: list[Record], started: float) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"machine": machine, "targets": TARGETS, "calls": CALLS, "summary": summary(records),
                   "elapsed_s": round(time.perf_counter() - started, 1),
                   "records": [asdict(r) for r in records]}, f, indent=2)


def report(path: str, markdown: bool) -> None:
    with open(path) as f:
        saved = json.load(f)
    records = [Record(**r) for r in saved["records"]]
    print(" | ".join(f"{k}: {v}" for k, v in saved["machine"].items()))
    print(text_table(records))
    if markdown:
        print("\n" + markdown_table(records))
    print("\n" + ", ".join(f"{k}: {v}" for k, v in summary(records).items()))


def main() -> None:
    cases = all_cases()
    args = parse_args(cases)
    if args.report:
        return report(args.report, args.markdown)
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = describe()
    print(" | ".join(f"{k}: {v}" for k, v in machine.items()), flush=True)
    records: list[Record] = []
    done: dict[str, Record] = {}
    if args.resume and os.path.exists(args.json):
        with open(args.json) as f:
            done = {r["model"]: Record(**r) for r in json.load(f)["records"]}
    started = time.perf_counter()
    for i, name in enumerate(args.models):
        if name in done:
            records.append(done[name])
            continue
        r = run_case(cases[name], args.verbose)
        records.append(r)
        print(f"[{i + 1}/{len(args.models)}] {name} ({r.total_s:.1f} s): " + " | ".join(cells(r)[2:]), flush=True)
        forget_analyses()
        save(args.json, machine, records + [done[n] for n in args.models[i + 1:] if n in done], started)
    save(args.json, machine, records, started)
    print(f"\n{len(records)} models in {time.perf_counter() - started:.0f} s\n")
    print(text_table(records))
    if args.markdown:
        print("\n" + markdown_table(records))
    print("\n" + ", ".join(f"{k}: {v}" for k, v in summary(records).items()))


if __name__ == "__main__":
    sys.exit(main())
