"""timm architectures for the corpus: tiny configs, random trained-like weights, injected bugs.

Every route that starts from a timm model (``torch.onnx.export``, onnx2tf, litert-torch) uses
this module, so all of them see the same model A and the same bugs:

- :data:`FAMILIES` — one :class:`Family` per architecture family (the smallest variant, a small
  input where the model allows it);
- :func:`build` — the model, made with a fixed seed, ``pretrained=False``, every BatchNorm given
  trained-like affine parameters and running statistics (measured on a few random batches, then
  perturbed), layer scales set away from their near-zero init, in eval mode;
- :func:`inputs` — the seeded input batch (NCHW float32);
- :func:`bugs` — the bugs that apply to a family, each naming the layer of A where parity must
  flag it and the neighbours it may be flagged at instead (the BN a conv is folded into);
- :func:`inject` — a deep copy of A with one bug in it (what the converter is then fed).

Nothing is downloaded: ``pretrained=False`` everywhere.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tests.corpus._torchvision import make_importable
from tests.corpus.cases import Bug

SEED = 0
BATCH = 2


@dataclass(frozen=True)
class Family:
    name: str  # the family, e.g. "resnet"
    arch: str  # the timm model name
    size: int = 64  # input height = width
    kwargs: dict = field(default_factory=dict)  # config overrides that make it tiny
    sample: bool = False  # in the deterministic subset the test suite runs

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (BATCH, 3, self.size, self.size)


def _vit(**kw):
    return dict(img_size=64, depth=4, **kw)


#: the corpus' timm families (families that fail to build or convert are reported, not dropped)
FAMILIES: tuple[Family, ...] = (
    Family("resnet", "resnet18", sample=True),
    Family("resnext", "resnext26ts"),
    Family("seresnet", "seresnet18"),
    Family("skresnet", "skresnet18"),
    Family("regnetx", "regnetx_002"),
    Family("regnety", "regnety_002", sample=True),
    Family("regnetz", "regnetz_005"),
    Family("efficientnet", "efficientnet_b0", sample=True),
    Family("efficientnetv2", "efficientnetv2_rw_t"),
    Family("tinynet", "tinynet_e"),
    Family("mixnet", "mixnet_s"),
    Family("mobilenetv1", "mobilenetv1_100"),
    Family("mobilenetv2", "mobilenetv2_050"),
    Family("mobilenetv3", "mobilenetv3_small_050", sample=True),
    Family("mobilenetv4", "mobilenetv4_conv_small"),
    Family("mnasnet", "mnasnet_small"),
    Family("semnasnet", "semnasnet_050"),
    Family("fbnet", "fbnetc_100"),
    Family("hardcorenas", "hardcorenas_a"),
    Family("lcnet", "lcnet_050"),
    Family("ghostnet", "ghostnet_050"),
    Family("repghost", "repghostnet_050"),
    Family("rexnet", "rexnet_100"),
    Family("densenet", "densenet121"),
    Family("dla", "dla46_c"),
    Family("dpn", "dpn48b"),
    Family("hrnet", "hrnet_w18_small"),
    Family("cspnet", "cs3darknet_focus_s"),
    Family("darknet", "darknet17"),
    Family("vovnet", "ese_vovnet19b_dw"),
    Family("hgnet", "hgnetv2_b0"),
    Family("gernet", "gernet_s"),
    Family("selecsls", "selecsls42b"),
    Family("repvgg", "repvgg_a0"),
    Family("mobileone", "mobileone_s0"),
    Family("nfnet", "nf_regnet_b0"),
    Family("inception", "inception_v3", size=80),
    Family("convnext", "convnext_atto", sample=True),
    Family("convnextv2", "convnextv2_atto"),
    Family("inception_next", "inception_next_atto"),
    Family("poolformer", "poolformer_s12"),
    Family("edgenext", "edgenext_xx_small"),
    Family("efficientformer", "efficientformer_l1", size=224),  # its attention is built for 7×7 at stride 32
    Family("efficientvit", "efficientvit_b0"),
    Family("fastvit", "fastvit_t8"),
    Family("mobilevit", "mobilevit_xxs"),
    Family("levit", "levit_128s", size=64, kwargs=dict(img_size=64)),
    Family("vit", "vit_tiny_patch16_224", kwargs=_vit(), sample=True),
    Family("deit", "deit_tiny_distilled_patch16_224", kwargs=_vit()),
    Family("cait", "cait_xxs24_224", kwargs=dict(img_size=64, depth=4)),
    Family("pit", "pit_ti_224", kwargs=dict(img_size=64)),
    Family("swin", "swin_tiny_patch4_window7_224",
           kwargs=dict(img_size=64, window_size=4, embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8))),
    Family("pvt_v2", "pvt_v2_b0"),
    # (the MLP-Mixer entry points fix their depth themselves: passing it again is a TypeError)
    Family("mixer", "mixer_s16_224", kwargs=dict(img_size=64)),
    Family("resmlp", "resmlp_12_224", kwargs=dict(img_size=64)),
    Family("gmlp", "gmlp_ti16_224", kwargs=dict(img_size=64)),
    Family("starnet", "starnet_s050"),
    Family("mambaout", "mambaout_femto"),
)

BY_NAME = {f.name: f for f in FAMILIES}


def recipe_key(fam: Family, *extra: str) -> str:
    """The content key of an artifact made from ``fam``'s model A (and ``extra``: route, bug,
    converter versions): this module's code — but not the other families' entries, so adding or
    changing one family re-converts that family alone — and ``fam``'s own recipe."""
    from tests.artifacts import content_key

    source = Path(__file__).read_text()
    start, end = source.index("FAMILIES: tuple[Family, ...] = ("), source.index("\nBY_NAME = ")
    code = source[:start] + source[end:]
    return content_key(code.encode(), repr((fam.arch, sorted(fam.kwargs.items()), fam.size, SEED)), *extra)


def versions() -> str:
    """The torch and timm versions that build model A here."""
    import torch

    timm = _timm()
    return f"torch={torch.__version__} timm={timm.__version__}"


def cached_bugs(fam: Family) -> tuple[Bug, ...]:
    """:func:`bugs`, remembered on disk (finding a family's layers builds and runs it)."""
    import json

    from tests.artifacts import cached_dir

    def build(tmp: Path) -> None:
        found = bugs(fam.name)
        (tmp / "bugs.json").write_text(json.dumps([[b.name, b.layer, list(b.also), b.diagnosis, b.invisible]
                                                   for b in found]))

    out = cached_dir("timm-bugs", recipe_key(fam, versions(), "bugs"), build)
    return tuple(Bug(n, layer, tuple(also), diag, invisible)
                 for n, layer, also, diag, invisible in json.loads((out / "bugs.json").read_text()))


def state_digest(model: Any) -> str:
    """A hash of a model's parameters and buffers, by name: part of every artifact's key, so a
    conversion is never reused for an A whose numbers differ from those it was made from (and
    the litert venv's A is checked to be this venv's)."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def family(name: str) -> Family:
    return BY_NAME[name]


def _timm():
    make_importable()
    import timm

    return timm


def _is_bn(m: Any) -> bool:
    import torch

    return isinstance(m, torch.nn.modules.batchnorm._BatchNorm)


def build(fam: Family) -> Any:
    """Model A: seeded weights, trained-like BatchNorm parameters and statistics, eval mode."""
    import torch

    timm = _timm()
    torch.manual_seed(SEED)
    model = timm.create_model(fam.arch, pretrained=False, **fam.kwargs)
    model.eval()
    gen = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            # layer scales start at 1e-5/1e-6: a block would contribute nothing, and a bug in it
            # would vanish by the next layer — as after training, make them matter
            if leaf in ("gamma", "gamma_1", "gamma_2", "layer_scale", "scale") or "ls" in name.split(".")[-2:-1]:
                if p.ndim <= 1 and float(p.abs().max()) < 1e-2:
                    p.copy_(torch.empty_like(p).uniform_(0.2, 0.6, generator=gen))
        bns = [m for m in model.modules() if _is_bn(m)]
        for bn in bns:
            if bn.affine:
                bn.weight.copy_(torch.empty_like(bn.weight).uniform_(0.5, 1.5, generator=gen))
                bn.bias.copy_(torch.empty_like(bn.bias).normal_(0.0, 0.1, generator=gen))
        if bns:
            _calibrate(model, bns, fam, gen)
    model.eval()
    return model


def _calibrate(model: Any, bns: list, fam: Family, gen: Any) -> None:
    """Running statistics measured on random batches (so activations stay in range through a
    deep net), then perturbed per channel the way trained statistics differ from any batch's.

    The measuring forward runs on one thread: a convolution's float32 sums round differently
    with another thread count, so statistics measured with 2 threads differ in their last bits
    from those measured with 1 — and an export cached by one run would not be the A of the next
    (an ill-conditioned Inception-v3 turns that into a 4e-4 "divergence")."""
    import torch

    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batches
        bn.train()
    x = torch.from_numpy(np.random.default_rng(SEED + 2).standard_normal((4, *fam.input_shape[1:]), dtype=np.float32))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model(x)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    for bn in bns:
        bn.momentum = 0.1
        if bn.track_running_stats and bn.running_var is not None:
            c = bn.running_var.shape[0]
            std = bn.running_var.clamp_min(1e-6).sqrt()
            bn.running_mean.add_(torch.randn(c, generator=gen) * 0.1 * std)
            bn.running_var.mul_(torch.empty(c).uniform_(0.7, 1.4, generator=gen))


def inputs(fam: Family) -> np.ndarray:
    """The input batch, NCHW float32, seeded (unit-range noise around 0, like normalised images)."""
    return np.random.default_rng(SEED + 3).standard_normal(fam.input_shape, dtype=np.float32)


# ---------------------------------------------------------------------------------------------- bugs

_ACTIVATIONS = {"ReLU", "ReLU6", "SiLU", "Swish", "GELU", "Hardswish", "HardSwish", "GELUTanh"}
_COMPUTE = ("Conv", "Linear")


def _execution(model: Any, fam: Family) -> list[tuple[str, Any, Any]]:
    """(name, module, output) of every module in the order its forward finished, once each
    (a module called twice is left out: a bug in it would show at two places)."""
    import torch

    order: list[tuple[str, Any, Any]] = []
    calls: dict[str, int] = {}
    handles = []
    for name, m in model.named_modules():
        if not name:
            continue

        def hook(mod, args, out, name=name):
            calls[name] = calls.get(name, 0) + 1
            order.append((name, mod, out.detach().clone() if isinstance(out, torch.Tensor) else None))

        handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(torch.from_numpy(inputs(fam)))
    finally:
        for h in handles:
            h.remove()
    return [(n, m, o) for n, m, o in order if calls[n] == 1]


def _neighbours(order: list, i: int) -> tuple[str, ...]:
    """The modules finishing after ``order[i]`` up to the next conv/linear: where a converter
    folds the target (a conv into its BN) or where its output is re-emitted (the BN+act module
    whose output is its activation's)."""
    target = order[i][0]
    out = [name for name, _, _ in order[:i] if name.startswith(target + ".")]  # its own children
    for name, m, _ in order[i + 1:i + 8]:
        if type(m).__name__.startswith(_COMPUTE) and not name.startswith(target + "."):
            break
        out.append(name)
    return tuple(out)


def _middle(cands: list[int]) -> int | None:
    return cands[len(cands) // 2] if cands else None


@functools.lru_cache(maxsize=None)
def bugs(name: str) -> tuple[Bug, ...]:
    """The injectable bugs of a family, each with the layer of A where parity must flag it."""
    fam = BY_NAME[name]
    model = build(fam)
    order = _execution(model, fam)
    found: list[Bug] = []
    n = len(order)
    middle_third = range(n // 3, max(n // 3 + 1, 2 * n // 3))

    convs = [i for i in middle_third if type(order[i][1]).__name__.startswith(_COMPUTE)
             and getattr(order[i][1], "weight", None) is not None]
    i = _middle(convs)
    if i is not None:
        found.append(Bug("scaled-kernel", order[i][0], _neighbours(order, i)))

    bns = [i for i in middle_third if _is_bn(order[i][1]) and order[i][1].running_var is not None]
    if bns:
        # the BN where an epsilon of 1e-3 shows most: the smallest running variance
        i = min(bns, key=lambda j: float(order[j][1].running_var.median()))
        found.append(Bug("bn-eps", order[i][0], _neighbours(order, i), diagnosis="bn_epsilon"))

    acts = [i for i in middle_third if type(order[i][1]).__name__ in _ACTIVATIONS and order[i][2] is not None]
    i = _middle(acts)
    if i is not None:
        kind = type(order[i][1]).__name__
        diagnosis = "activation_clamp" if kind.startswith("ReLU") else "activation_approximation"
        found.append(Bug("swapped-activation", order[i][0], _neighbours(order, i), diagnosis=diagnosis))
    return tuple(_visible(model, fam, order, bug) for bug in found)


#: a bug whose effect on its own layer (measured in torch, A against A with the bug) stays under
#: this, and on the output under the float32 tolerance, changes nothing a comparison can see
VISIBLE = 1e-4


def _visible(model: Any, fam: Family, order: list, bug: Bug) -> Bug:
    """``bug``, marked ``invisible`` (with the numbers) when it changes nothing beyond rounding."""
    import dataclasses

    def rel(a, b) -> float:
        a, b = a.double(), b.double()
        return float((b - a).norm() / max(float(a.norm()), 1e-30))

    clean = {n: o for n, _, o in order}
    with_bug = {n: o for n, _, o in _execution(inject(model, fam, bug), fam)}
    if bug.layer not in with_bug or clean.get(bug.layer) is None:
        return bug
    at_layer = rel(clean[bug.layer], with_bug[bug.layer])
    last = order[-1][0]
    at_output = rel(clean[last], with_bug[last]) if last in with_bug else float("inf")
    if at_layer >= VISIBLE or at_output >= 1e-3:
        return bug
    return dataclasses.replace(bug, invisible=(
        f"it moves {bug.layer} by {at_layer:.1e} and the output by {at_output:.1e} in torch itself "
        f"(under {VISIBLE:g} and float32's tolerance 1e-3): nothing a comparison can flag"))


def _clamp_bound(model: Any, fam: Family, layer: str) -> float:
    """A ReLU6-style bound the inputs exceed at ``layer``: the 90th percentile of its positive outputs."""
    for name, _, out in _execution(model, fam):
        if name == layer:
            pos = out[out > 0]
            return float(pos.quantile(0.9)) if pos.numel() else 1.0
    raise KeyError(layer)


def _replacement(kind: str, bound: float) -> Any:
    import torch

    class QuickGELU(torch.nn.Module):  # CLIP's x·σ(1.702x) where the model has the exact GELU
        def forward(self, x):
            return x * torch.sigmoid(1.702 * x)

    if kind.startswith("ReLU"):
        return torch.nn.Hardtanh(0.0, bound)
    if kind in ("SiLU", "Swish"):
        return torch.nn.Hardswish()
    if kind in ("Hardswish", "HardSwish"):
        return torch.nn.SiLU()
    return QuickGELU()  # GELU, GELUTanh


def inject(model: Any, fam: Family, bug: Bug) -> Any:
    """A deep copy of ``model`` with ``bug`` in it (the original is left alone)."""
    import torch

    b = copy.deepcopy(model)
    target = b.get_submodule(bug.layer)
    with torch.no_grad():
        if bug.name == "scaled-kernel":
            target.weight.mul_(1.05)
        elif bug.name == "bn-eps":
            target.eps = 1e-3
        elif bug.name == "swapped-activation":
            parent_name, _, leaf = bug.layer.rpartition(".")
            parent = b.get_submodule(parent_name) if parent_name else b
            new = _replacement(type(target).__name__, _clamp_bound(model, fam, bug.layer))
            parent._modules[leaf] = new
        else:
            raise ValueError(f"unknown bug {bug.name!r}")
    b.eval()
    return b
