"""Match the taps of two traces: which tensor of B is which tensor of A.

In this order:

1. an explicit ``mapping`` (A name → B name), checked against both traces;
2. normalised names (``layer1.0.conv1`` ≈ ``layer1_0_conv1``) that are unique
   on both sides and whose shapes fit;
   Graph formats name a tensor by its layer's scope (``model/conv1_bn/…/add_1:0``); a
   scope anchors a pair when the values agree too.
3. value fingerprints: a tensor of A that exactly one tensor of B reproduces
   under a layout transform (mutually, with a clear margin over every other
   candidate) is the same tensor whatever the converter called it.
4. execution order + shape compatibility: a monotone alignment (dynamic
   programming, like a diff) between the anchors of 1–3, scoring a pair by
   shape compatibility under a layout transform, op family (Conv2d ≈ Conv2D)
   and how similar the values are on a fixed sample.  Layers present on one
   side only (Flatten, Permute, Dropout, ZeroPadding2D, ...) are skipped
   without losing sync.  What converters do to a graph is scored in: a pair
   across op families scores far below a same-family pair (a shifted
   alignment must not win by one more pair); when B has no BatchNorm, A's
   BatchNorm is of the family of the conv or affine op that computes it; a
   tensor that ends its name scope is the layer's output; an ``Add`` of a
   constant is an affine step, not a merge; a TFLite fused tensor is the op it
   ends with; a TF layer's output before its separate bias add is never paired.
   Errors do not heal: a pair by order whose values are unrelated, right
   before a pair that agrees, is two different tensors and is dropped.
5. model outputs are paired by position.

Every match records *how* it was made, the transform used (chosen by value where
the shapes fit several layouts) and a confidence.  What stays unmatched is kept,
with the reason.

Confidence, from 0 to 1, says how sure the *pairing* is (not whether the values
agree): 1 for the user's mapping; ≥ 0.9 where names or values single the pair out
(a shape that fits several layouts costs 0.1 unless the values agree under the one used);
0.5–0.9 by order and shape; below 0.5 a weak guess (families differ, values
unrelated, the shape fits several candidates).
"""

from __future__ import annotations

import bisect
import fnmatch
import re
from typing import Mapping

import numpy as np

from .errors import AlignmentError, MappingError
from .layout import candidate_transforms
from .ops import MERGE_FAMILIES, ONE_SIDED_OPS, PASS_THROUGH_OPS, normalize_name, op_family, tap_family
from .records import Alignment, Match, Tap, Trace, Transform, Unmatched
from .similarity import rescaled, cached_sample, sample_b, sample_cache, sample_index, samples, similarity
from .unsure import unsure_pairs

__all__ = ["align", "unsure_pairs", "normalize_name", "op_family", "tap_family", "ONE_SIDED_OPS", "PASS_THROUGH_OPS"]

# --- the alignment ------------------------------------------------------------------------


class _Pairing:
    """Caches candidate transforms and scores for pairs of taps.

    ``folded_bn``: model B has fewer BatchNorms of its own than A after its convs (a converter folded them into the
    convolutions, or wrote them as a multiply and an add), so a BatchNorm of A is of the
    family of B's conv or affine op that computes it.  ``scope_ends``: ids of B's tensors that
    are the last of their name scope (``conv_dw_7_bn/batchnorm/add_1``, not ``…/mul_1``), the
    layer's output when a scope holds several ops.  ``owners``: B's tensors whose name scope is
    one layer of A (see :func:`_owners`): such a tensor is never paired by order with another
    layer of A."""

    def __init__(self, folded_bn: bool = False, scope_ends: frozenset[int] = frozenset(),
                 folded_pairs: tuple[frozenset[int], frozenset[int]] = (frozenset(), frozenset()),
                 owners: dict[int, str] | None = None, conv_before: dict[str, str] | None = None) -> None:
        self._transforms: dict[tuple, list[Transform]] = {}
        self._families: dict[int, str] = {}
        self.folded_bn = folded_bn
        self.scope_ends = scope_ends
        self.folded_pairs = folded_pairs
        self.owners = owners or {}
        self.conv_before = conv_before or {}  # A's BatchNorm → the conv right before it

    def owned_elsewhere(self, a: Tap, b: Tap) -> bool:
        """Whether B's name scope says ``b`` was computed inside a layer of A other than ``a``
        (or its parents or children): EfficientFormer's ``mlp.act/Mul`` (the 1.702·x of a
        sigmoid GELU) is not the ``norm1`` before it."""
        owner = self.owners.get(id(b))
        if owner is None:
            return False
        base = a.name.split("#")[0]
        if self.folded_bn and self.conv_before.get(base) == owner:
            return False  # the conv B folded this BatchNorm into: its tensor is the BatchNorm's output
        return not (owner == base or base.startswith(owner + ".") or owner.startswith(base + "."))

    def family(self, t: Tap) -> str:
        f = self._families.get(id(t))
        if f is None:
            f = self._families[id(t)] = tap_family(t)
        return f

    def same_family(self, a: Tap, b: Tap) -> bool:
        fa, fb = self.family(a), self.family(b)
        if fa == "conv" and self.folded_conv(a, b):
            return False
        return fa == fb or (self.folded_bn and fa == "batchnorm" and fb in ("conv", "affine"))

    def folded_conv(self, a: Tap, b: Tap) -> bool:
        """A's conv feeds a BatchNorm that B folds (see :func:`_folded_conv_taps`), and ``b`` is
        not a raw conv B kept before a scale of its own (tf2onnx's depthwise conv before its
        Mul + Add): B holds no tensor of A's conv — not its folded conv, not a tensor of another
        op (SK-ResNet's branch sum)."""
        return id(a) in self.folded_pairs[0] and (tap_family(b) != "conv" or id(b) in self.folded_pairs[1])

    def transforms(self, a: Tap, b: Tap) -> list[Transform]:
        # what candidate_transforms reads of the two taps: shapes, layouts and B's flat_from
        key = (tuple(a.shape), a.layout, tuple(b.shape), b.layout, tuple(b.attrs.get("flat_from") or ()))
        found = self._transforms.get(key)
        if found is None:
            found = self._transforms[key] = candidate_transforms(a, b)
        return found

    def best(self, a: Tap, b: Tap) -> list[Transform]:
        """The candidate transforms, the one under which the values agree best first
        (a 8×8×8 tensor fits several layouts; its values say which)."""
        ts = self.transforms(a, b)
        if len(ts) > 1 and a.value is not None and b.value is not None:
            ts = sorted(ts, key=lambda t: -similarity(a, b, t))
        return ts

    def score(self, a: Tap, b: Tap) -> float:
        ts = self.transforms(a, b)
        if not ts:
            return 0.0
        fa, fb = self.family(a), self.family(b)
        if fa != fb and (fa in MERGE_FAMILIES or fb in MERGE_FAMILIES):
            return 0.0
        if fa == "conv" and self.folded_conv(a, b):
            return 0.0
        if self.owned_elsewhere(a, b):
            return 0.0
        # a pair across op families is possible (a converter's rewrite) but a poor bet: it must not
        # win by making one more pair than a same-family alignment shifted by one
        base = 2.0 if self.same_family(a, b) else 0.3
        end = 0.25 if id(b) in self.scope_ends else 0.0
        return base + end + similarity(a, b, ts[0])


def _resolve_name(
    name: str, table: Mapping[str, Tap], side: str, trace: Trace, partner: Tap | None = None,
    partner_trace: Trace | None = None,
) -> Tap:
    """A mapping entry's tap: the exact name, the name without TF's ``import/`` prefix, a glob
    (``*/conv_dw_1_relu*/Relu6:0``) or a regex (``re:conv_dw_\\d+_relu``) matching exactly one tensor."""
    if name in table:
        return table[name]
    plain = name[len("import/"):] if name.startswith("import/") else name
    if plain in table:
        return table[plain]
    hits: list[str] = []
    if plain.startswith("re:"):
        try:
            pattern = re.compile(plain[3:])
        except re.error as exc:
            raise MappingError(f"mapping pattern {name!r} for model {side} is not a valid regex: {exc}.") from exc
        hits = [n for n in table if pattern.search(n)]
    elif any(c in plain for c in "*?["):
        hits = [n for n in table if fnmatch.fnmatchcase(n, plain)]
    if len(hits) == 1:
        return table[hits[0]]
    where = f"model {side} ({trace.model.name}, {trace.model.framework})"
    if len(hits) > 1:
        raise MappingError(
            f"mapping pattern {name!r} matches {len(hits)} tensors of {where}: {', '.join(hits[:5])}"
            f"{', …' if len(hits) > 5 else ''}. Make it match exactly one."
        )
    hint = _closest_taps_hint(plain, trace, side, partner, partner_trace)
    raise MappingError(
        f"mapping names {name!r} as a layer of {where}, which has no recorded tensor of that name "
        f"(or matching that pattern).{hint} List the model's names with `parity taps MODEL` or parity.capture(model, inputs).names."
    )


def _closest_taps_hint(name: str, trace: Trace, side: str, partner: Tap | None, partner_trace: Trace | None) -> str:
    """The taps of ``trace`` a mistyped mapping entry most likely meant: by spelling, and when
    the entry's other side is known, by its op family and relative position too (a converter
    renames layers, so the tensor meant is often spelled nothing like what was typed)."""
    from difflib import SequenceMatcher

    taps = [t for t in trace.taps if t.role != "input"]
    if not taps:
        return ""
    spelled = {t.name: SequenceMatcher(None, name.lower(), t.name.lower()).ratio() for t in taps}
    if partner is None or partner_trace is None:
        ranked = sorted((t for t in taps if spelled[t.name] >= 0.4), key=lambda t: -spelled[t.name])[:3]
        how = ""
    else:
        others = [t for t in partner_trace.taps if t.role != "input"]
        where = others.index(partner) / max(1, len(others) - 1) if partner in others else 0.5
        family = tap_family(partner)

        def score(i: int, t: Tap) -> float:
            # spelling leads (a near-exact name is what was meant), the op family outweighs a
            # few letters, and the relative position breaks ties between similar names
            position = 1.0 - abs(i / max(1, len(taps) - 1) - where)
            return 5.0 * spelled[t.name] + (tap_family(t) == family) + 0.3 * position

        ranked = [t for _, t in sorted(((-score(i, t), i), t) for i, t in enumerate(taps))[:3]]
        how = f" (by name, op and position: {partner.name!r} is a {partner.op} in model {'B' if side == 'A' else 'A'})"
    if not ranked:
        return ""
    return f" Closest names in model {side}{how}: " + ", ".join(f"{t.name} ({t.op}, #{t.index})" for t in ranked) + "."


def _check_mapping(mapping: Mapping[str, str], ta: Trace, tb: Trace) -> list[tuple[Tap, Tap]]:
    by_a = {t.name: t for t in ta.taps}
    by_b = {t.name: t for t in tb.taps}
    pairs = []
    for a, b in mapping.items():
        try:
            tap_b: Tap | None = _resolve_name(b, by_b, "B", tb)
        except MappingError:
            tap_b = None  # reported after A's name is checked, with A's tap to rank the hints by
        tap_a = _resolve_name(a, by_a, "A", ta, tap_b, tb)
        pairs.append((tap_a, tap_b if tap_b is not None else _resolve_name(b, by_b, "B", tb, tap_a, ta)))
    return pairs


def align(ta: Trace, tb: Trace, mapping: Mapping[str, str] | None = None) -> Alignment:
    """Match the taps of ``tb`` to those of ``ta``; see the module docstring for the order."""
    with sample_cache():
        return _align(ta, tb, mapping)


def _output_pairs(outs_a: list[Tap], outs_b: list[Tap]) -> list[tuple[Tap, Tap]]:
    """The model outputs paired: by name when both sides give the same set of names
    (``output[last_hidden_state]``), else by position."""
    names_a, names_b = [t.name for t in outs_a], [t.name for t in outs_b]
    unique = len(set(names_a)) == len(names_a) and len(set(names_b)) == len(names_b)
    keyed = all("[" in n for n in names_a + names_b)  # dict outputs: output[last_hidden_state]
    if unique and (set(names_a) == set(names_b) or (keyed and set(names_a) & set(names_b))):
        # the names both sides give pair; an output one side alone returns has no counterpart
        by_name = {t.name: t for t in outs_b}
        return [(a, by_name[a.name]) for a in outs_a if a.name in by_name]
    return list(zip(outs_a, outs_b))


def _align(ta: Trace, tb: Trace, mapping: Mapping[str, str] | None) -> Alignment:
    last_in_scope: dict[str, Tap] = {}
    for t in tb.layers:
        first = t.name.split(";")[0]
        if "/" in first.strip("/"):
            last_in_scope[first.rsplit("/", 1)[0]] = t  # taps are in execution order
    # B folds BatchNorms into the convs before them when it keeps fewer BatchNorms than A has
    # after a conv (MobileOne's export keeps only the BN of its identity branch, which follows no conv)
    conv_before = _conv_before_bn(ta)
    folded_bn = sum(op_family(t.op) == "batchnorm" for t in tb.layers) < max(1, len(conv_before))
    pairing = _Pairing(
        folded_bn=folded_bn,
        scope_ends=frozenset(id(t) for t in last_in_scope.values()),
        folded_pairs=_folded_conv_taps(ta, tb) if folded_bn else (frozenset(), frozenset()),
        owners=_owners(ta, tb),
        conv_before=conv_before,
    )
    matches: list[Match] = []
    used_a: set[int] = set()
    used_b: set[int] = set()

    def add(a: Tap, b: Tap, how: str, transforms: list[Transform] | None = None, confidence: float | None = None) -> None:
        ts = transforms if transforms is not None else pairing.best(a, b)
        if confidence is None:
            confidence = _confidence(how, a, b, ts[0], pairing.same_family(a, b))
        matches.append(Match(a=a, b=b, transform=ts[0], how=how, confidence=round(confidence, 3)))
        used_a.add(id(a))
        used_b.add(id(b))

    # 1. the user's mapping
    for a, b in _check_mapping(mapping or {}, ta, tb):
        ts = pairing.transforms(a, b)
        if not ts:
            raise MappingError(
                f"mapping pairs {a.name!r} (model A, shape {a.shape}, {a.layout or 'layout unknown'}) "
                f"with {b.name!r} (model B, shape {b.shape}, {b.layout or 'layout unknown'}), but no "
                "layout transform makes these shapes equal. Map tensors that hold the same values."
            )
        add(a, b, "mapping", pairing.best(a, b), 1.0)

    # 2. model outputs: by name where both sides name them alike (dict outputs), else by position
    outs_a, outs_b = ta.outputs, tb.outputs
    for a, b in _output_pairs(outs_a, outs_b):
        if id(a) in used_a or id(b) in used_b:
            continue
        ts = pairing.transforms(a, b)
        if ts:
            add(a, b, "output")
        elif tuple(a.shape) == tuple(b.shape):
            # the layouts the frameworks declare by convention cannot both hold (no permutation
            # fits the shapes), and the shapes are equal: a model that hands its output back in
            # the other framework's layout (transformers' TF vision models return NCHW)
            add(a, b, "output", [Transform(kind="identity", label="identity (shapes equal; the declared layouts do not fit)")])

    layers_a = [t for t in ta.layers if id(t) not in used_a]
    layers_b = [t for t in tb.layers if id(t) not in used_b]

    # 3. normalised names, unique on both sides
    def unique_by_norm(taps: list[Tap]) -> dict[str, Tap]:
        seen: dict[str, list[Tap]] = {}
        for t in taps:
            seen.setdefault(normalize_name(t.name), []).append(t)
        return {k: v[0] for k, v in seen.items() if len(v) == 1}

    # A name shared across op families (Keras' Dense ``predictions`` before its softmax, and the
    # ONNX graph output ``predictions`` after it) is the same tensor only if the values say so.
    norm_b = unique_by_norm(layers_b)
    for key, a in unique_by_norm(layers_a).items():
        b = norm_b.get(key)
        if b is not None and pairing.transforms(a, b):
            if not pairing.same_family(a, b) and similarity(a, b, pairing.best(a, b)[0]) < _SCOPE_SIMILARITY:
                continue
            add(a, b, "name")

    # 3a. module paths: a converter that stamps model A's module paths into B's tensors
    # (litert-torch) says which tensor ends which module call; only that tensor is the module's
    # output (a hard-sigmoid's CONV_2D+RELU6 before its MUL by 1/6 is not).  Where such names are
    # A's, they are the only evidence B's named tensors are paired on: not order, not values.
    module_scoped = _module_pairs(ta, tb, used_a, used_b, pairing)
    for a, b in module_scoped.pairs:
        add(a, b, "name")

    # 3b. name scopes: graph formats name tensors by the layer that made them
    # (TF ``model_1/conv1_bn_1/batchnorm/add_1:0``, ONNX ``/layer1/layer1.0/conv1/Conv``);
    # the scope's last tensor is the layer's output.  A converter may have folded the layer
    # into another (Conv+BatchNorm), so a scope anchors a pair only when the values agree.
    scoped: dict[str, list[Tap]] = {}
    for b in tb.layers:
        if id(b) not in used_b and not b.attrs.get("partial"):  # a layer before its bias: never its output
            for key in _scope_keys(b.name):
                scoped.setdefault(key, []).append(b)
    for key, a in unique_by_norm([t for t in ta.layers if id(t) not in used_a]).items():
        candidates = [b for b in scoped.get(key, []) if id(b) not in used_b and pairing.transforms(a, b)]
        if candidates:
            b = max(candidates, key=lambda t: t.index)
            if similarity(a, b, pairing.transforms(a, b)[0]) >= _SCOPE_SIMILARITY:
                add(a, b, "scope")

    # 3c. value fingerprints: what exactly one tensor of B reproduces
    for a, b, confidence in _value_matches(
        [t for t in ta.layers if id(t) not in used_a],
        [t for t in tb.layers if id(t) not in used_b and id(t) not in module_scoped.named], pairing
    ):
        add(a, b, "value", confidence=confidence)

    # 4. order + shape between the anchors
    anchors = sorted(
        ((m.a.index, m.b.index) for m in matches if m.how in ("mapping", "name", "scope", "value")),
    )
    chain = _increasing_chain(anchors)
    # (nor is a layer's output before its separate bias add: only the sum is the layer's output)
    free_a = [t for t in ta.layers if id(t) not in used_a and not _passes_through(t) and not t.attrs.get("partial")]
    free_b = [t for t in tb.layers if id(t) not in used_b and not _passes_through(t) and not t.attrs.get("partial")
              and id(t) not in module_scoped.named]
    bounds = [(-1, -1), *chain, (len(ta.taps), len(tb.taps))]
    for (lo_a, lo_b), (hi_a, hi_b) in zip(bounds, bounds[1:]):
        seg_a = [t for t in free_a if lo_a < t.index < hi_a]
        seg_b = [t for t in free_b if lo_b < t.index < hi_b]
        for a, b in _order_alignment(seg_a, seg_b, pairing):
            add(a, b, "order")

    # 4b. errors do not heal: a pair made by order whose values are unrelated (cos < 0.99), when
    # the next pair of A agrees by value, holds two different tensors — a converter's split or
    # fused intermediate (onnx2tf's bias-less convolution half), not a divergence
    # — provided the error does heal: the next few pairs agree too.  The next pair of A may sit on a
    # parallel branch (torchvision's ``downsample`` runs after the ``bn2`` it is added to), so its
    # agreeing alone says nothing; a real error shows again right where the branches merge.
    by_a = sorted(matches, key=lambda m: m.a.index)
    # A pair by order that B's name scope corroborates (B's tensor made inside the module that
    # holds A's layer: MobileOne's ``conv_scale.bn`` ↔ ``/…/conv_scale/conv/Conv``, its BN folded)
    # is not suspect: its parallel branches may agree for more than the window before they merge.
    mispaired = [
        k for k, (m, nxt) in enumerate(zip(by_a, by_a[1:]))
        if m.how == "order" and similarity(m.a, m.b, m.transform) < 1.0 <= _VALUE_SIMILARITY <= similarity(
            nxt.a, nxt.b, nxt.transform
        ) and not _scope_corroborates(m.a, m.b)
    ]
    dropped = set(mispaired)
    unsure: dict[int, str] = {}  # id of a tap whose pair was dropped → why, unless it is accounted for
    partner: dict[int, int] = {}  # B's tap of a dropped pair → A's (B's is unsure only when A's is)
    for k in mispaired:
        later = [m for i, m in enumerate(by_a[k + 1:], start=k + 1) if i not in dropped][:_HEAL_WINDOW]
        if all(similarity(m.a, m.b, m.transform) >= 1.0 for m in later):
            m = by_a[k]
            matches.remove(m)
            used_a.discard(id(m.a))
            used_b.discard(id(m.b))
            why = (f"unsure: paired by order with {{}}, but the values are unrelated while the next "
                   f"{len(later)} pairs agree")
            unsure[id(m.a)] = why.format(m.b.name)
            unsure[id(m.b)] = why.format(f"A's {m.a.name}")
            partner[id(m.b)] = id(m.a)

    # 4c. one projection of A that B computes as several: a fused QKV (GPT-2's ``c_attn``, timm's
    # ``qkv``) against separate query, key and value layers (keras-hub's EinsumDense)
    for a, parts, joined in _split_pairs(ta, tb, matches, used_a, used_b):
        matches.append(Match(a=a, b=joined, transform=Transform(label="joined along the last axis"),
                             how="split", confidence=round(0.8 + 0.1 * min(similarity(a, joined, Transform()), 2.0) / 2, 3)))
        used_a.add(id(a))
        used_b.update(id(p) for p in parts)

    if not matches:
        raise AlignmentError(
            f"nothing in {ta.model.name} ({ta.model.framework}, {len(ta.taps)} tensors) could be "
            f"matched with {tb.model.name} ({tb.model.framework}, {len(tb.taps)} tensors): no two "
            "tensors have compatible shapes, and even the model outputs differ "
            f"({[t.shape for t in outs_a]} vs {[t.shape for t in outs_b]}). Check that the inputs "
            "are right, or give a mapping."
        )

    matches.sort(key=lambda m: m.a.index)
    matched_b = [m.b.name for m in matches]
    # A's layers a converter named as fused into a tensor of B that was compared (litert-torch)
    fused_modules = {p for m in matches for p in m.b.attrs.get("fused_modules", ())}
    folded = _folded(ta, tb, matches, used_a, used_b)
    unmatched = []
    unsure_a: set[int] = set()
    for side, trace, used in (("a", ta, used_a), ("b", tb, used_b)):
        for t in trace.taps:
            if id(t) in used or t.role == "container":
                continue
            reason = "one-sided" if _one_sided(t) or t.attrs.get("partial") else "no-match"
            if reason == "no-match" and t.attrs.get("passthrough"):
                reason = "placeholder"  # an identity at inference (timm's DropPath): nothing to compare
            if reason == "no-match" and side == "a" and (
                id(t) in folded or _fused_into(t.name, matched_b) or t.name in fused_modules
            ):
                reason = "fused"
            if reason == "no-match" and id(t) in unsure and (side == "a" or partner[id(t)] in unsure_a):
                reason = unsure[id(t)]
                if side == "a":
                    unsure_a.add(id(t))
            unmatched.append(Unmatched(tap=t, side=side, reason=reason))
    return Alignment(matches=tuple(matches), unmatched=tuple(unmatched))


#: a pair by order with unrelated values is a mispairing when this many pairs after it all agree
_HEAL_WINDOW = 4

#: how alike (−log10(1−cos)/2) a scope-named pair must be to anchor: cos ≥ 0.99
_SCOPE_SIMILARITY = 1.0


class _ModulePairs:
    """What :func:`_module_pairs` found: the pairs, and the ids of B's taps that carry module
    paths of A (paired by those names or not at all)."""

    def __init__(self) -> None:
        self.pairs: list[tuple[Tap, Tap]] = []
        self.named: set[int] = set()


#: of B's tensors that end a module call, the share whose module A recorded, for B's module
#: paths to count as A's
_MODULE_SHARE = 0.3
#: an unsure module pairing is kept only when the values agree to this relative error
_UNSURE_AGREEMENT = 1e-3


def _module_pairs(ta: Trace, tb: Trace, used_a: set[int], used_b: set[int], pairing: "_Pairing") -> _ModulePairs:
    """Pairs of A's module taps with the B tensors that end those module calls (B's
    ``attrs["module_outputs"]``; ``attrs["module_own"]`` for an A tap of a module's own step
    before its children, ``attrs["own_compute"]``).  A module called a different number of times
    on the two sides is left unpaired (which call is which is unknown); a pairing B marks unsure
    (``attrs["module_unsure"]``: the module's last step may have been fused forward) is kept only
    where the values agree."""
    found = _ModulePairs()
    outputs: dict[str, Tap] = {}
    own: dict[str, Tap] = {}
    unsure: set[str] = set()
    for b in tb.layers:
        for key in b.attrs.get("module_outputs", ()):
            outputs[key] = b
        for key in b.attrs.get("module_own", ()):
            own[key] = b
        unsure.update(b.attrs.get("module_unsure", ()))
    if not outputs:
        return found
    a_names = {t.name for t in ta.layers}
    if sum(1 for k in outputs if k in a_names) < _MODULE_SHARE * len(outputs):
        return found  # B's paths are not A's modules (another implementation of the model)
    found.named = {id(b) for b in tb.layers if "module" in b.attrs}

    def calls(names) -> dict[str, int]:
        count: dict[str, int] = {}
        for n in names:
            base = n.split("#")[0]
            count[base] = count.get(base, 0) + 1
        return count

    calls_a = calls(a_names)
    calls_b = calls(set(outputs) | set(own))
    for a in ta.layers:
        if id(a) in used_a:
            continue
        table = own if a.attrs.get("own_compute") else outputs
        b = table.get(a.name)
        base = a.name.split("#")[0]
        if b is None or id(b) in used_b or calls_a.get(base) != calls_b.get(base):
            continue
        ts = pairing.best(a, b)
        if not ts:
            continue
        if a.name in unsure and not _agree(a, b, ts[0]):
            continue
        found.pairs.append((a, b))
        used_b.add(id(b))
    return found


def _agree(a: Tap, b: Tap, t: Transform) -> bool:
    """Whether ``b`` (brought into A's layout by ``t``) equals ``a`` to :data:`_UNSURE_AGREEMENT`
    on the fixed sample (norms included: a tensor 6× another is not the same tensor)."""
    if a.value is None or b.value is None:
        return False
    va = cached_sample(("a", id(a.value)), a.value, lambda v: v.reshape(-1)[sample_index(a.shape)])
    vb = cached_sample(
        ("b", id(b.value), t.kind, t.perm, t.flat_from, a.shape), b.value,
        lambda v: sample_b(v, t, a.shape, sample_index(a.shape)),
    )
    with np.errstate(all="ignore"):
        na = float(np.sqrt(np.dot(va, va)))
        err = float(np.sqrt(np.dot(va - vb, va - vb)))
    return bool(np.isfinite(err) and err <= _UNSURE_AGREEMENT * max(na, 1e-12))


#: how many tensors of B one tensor of A may be split into (query, key, value)
_SPLIT_PARTS = (3, 2)


def _split_pairs(ta: Trace, tb: Trace, matches: list[Match], used_a: set[int], used_b: set[int]):
    """``(a, parts, joined)``: an unmatched dense layer of A whose output is, along its last axis, the
    concatenation of ``parts`` — 2 or 3 consecutive unmatched dense layers of B of one shape,
    between the tensors of B paired with A's layers right before and after it — to cos ≥ 0.99
    (values, not names, justify it: q, k, v in another order do not agree)."""
    ordered = sorted(matches, key=lambda m: m.a.index)
    a_index = [m.a.index for m in ordered]
    free_b = [t for t in tb.layers if id(t) not in used_b and not t.attrs.get("partial") and t.value is not None
              and _projects(t)]
    for a in ta.layers:
        if id(a) in used_a or a.value is None or not _projects(a) or a.attrs.get("partial") or a.value.ndim < 2:
            continue
        k = bisect.bisect_left(a_index, a.index)
        lo = ordered[k - 1].b.index if k > 0 else -1
        hi = ordered[k].b.index if k < len(ordered) else len(tb.taps)
        window = [t for t in free_b if lo < t.index < hi and id(t) not in used_b]
        found = _first_split(a, window)
        if found is not None:
            yield a, *found
            used_b.update(id(p) for p in found[0])


def _first_split(a: Tap, window: list[Tap]) -> tuple[list[Tap], Tap] | None:
    """The first run of 3 (else 2) taps of ``window`` that, joined, agree with ``a``: the parts
    and the joined tap."""
    for n in _SPLIT_PARTS:
        for i in range(len(window) - n + 1):
            parts = window[i:i + n]
            if len({p.shape for p in parts}) == 1 and all(_part_of(a, p, n) for p in parts):
                joined = _joined_tap(a, parts)
                if similarity(a, joined, Transform()) >= 1.0:
                    return parts, joined
    return None


def _projects(t: Tap) -> bool:
    """A dense projection: a dense layer, or one that computes on the last axis while named a
    convolution (transformers' ``Conv1D``, GPT-2's Linear, features last)."""
    family = tap_family(t)
    return family == "dense" or (family == "conv" and bool(t.layout) and str(t.layout).endswith("C"))


def _part_of(a: Tap, b: Tap, n: int) -> bool:
    """Whether ``b`` is shaped as one of ``n`` equal slices of ``a``'s last axis (its trailing axes
    may split that slice: keras-hub's (B, T, heads, head_dim))."""
    lead = a.shape[:-1]
    return (a.shape[-1] % n == 0 and tuple(b.shape[:len(lead)]) == tuple(lead)
            and int(np.prod(b.shape[len(lead):], dtype=np.int64)) * n == a.shape[-1])


def _joined_tap(a: Tap, parts: list[Tap]) -> Tap:
    """One tap of B: ``parts`` reshaped to A's leading axes and joined along the last axis."""
    lead = a.shape[:-1]
    value = np.concatenate([np.asarray(p.value).reshape(*lead, -1) for p in parts], axis=-1)
    return Tap(name=" + ".join(p.name for p in parts), op=parts[0].op, index=parts[-1].index, shape=tuple(value.shape),
               dtype=parts[0].dtype, layout=a.layout, value=value, role="layer",
               attrs={"split_of": tuple(p.name for p in parts)})


def _scope_corroborates(a: Tap, b: Tap) -> bool:
    """Whether B's tensor is named inside the module that holds A's layer (A's dotted parent
    path, two levels deep or more, among B's name scopes)."""
    parent = a.name.split("#")[0].rpartition(".")[0]
    return parent.count(".") >= 1 and normalize_name(parent) in _scope_keys(b.name)


def _scope_keys(name: str) -> set[str]:
    """Normalised runs of the scope segments of a graph tensor name (empty for plain names).

    A Keras layer path (``bert/encoder/layer_._3/attention/output/dense``: no ``:N`` output
    index, no ONNX leading ``/``) ends with a layer, not an op: its last segment counts too.
    Keras' uniquifying suffixes go (``conv1_bn_1`` → ``conv1_bn``), transformers' block
    indices stay (``layer_._3``)."""
    first = re.sub(r":\d+$", "", name.split(";")[0])
    if "/" not in first:
        return set()
    segments = [re.sub(r"(?<=[0-9A-Za-z])_\d+$", "", s) for s in first.strip("/").split("/")]
    if first != name or name.startswith("/"):
        segments = segments[:-1]  # a graph tensor: the last segment is the op
    keys = set()
    for i in range(len(segments)):
        for j in range(i + 1, len(segments) + 1):
            keys.add(normalize_name("_".join(segments[i:j])))
    keys.add(normalize_name(_scope_path(segments)))
    keys.discard("")
    return keys


def _scope_path(segments: list[str]) -> str:
    """torch's TorchScript exporter scopes a container's child by its path within the container
    (``/stages/stages.2/blocks/blocks.2/mlp/act``): without the repeats it is the module path
    ``stages.2.blocks.2.mlp.act``."""
    return ".".join(seg for k, seg in enumerate(segments)
                    if not (k + 1 < len(segments) and segments[k + 1].startswith(seg + ".")))


def _owners(ta: Trace, tb: Trace) -> dict[int, str]:
    """B's graph tensors whose name scope is the module path of a layer of A: ``{id(b): A's
    layer}`` (ONNX ``/stages/…/mlp/act/Mul`` was computed inside A's ``stages.….mlp.act``)."""
    a_names = {normalize_name(t.name.split("#")[0]): t.name.split("#")[0] for t in ta.layers}
    out: dict[int, str] = {}
    for b in tb.layers:
        if not b.name.startswith("/"):
            continue  # only ONNX's scoped node names say which module computed a tensor
        segments = b.name.strip("/").split("/")[:-1]
        owner = a_names.get(normalize_name(_scope_path(segments))) if segments else None
        if owner is not None:
            out[id(b)] = owner
    return out


def _conv_before_bn(trace: Trace) -> dict[str, str]:
    """``{BatchNorm: the conv right before it}`` for each conv a BatchNorm of the same size follows."""
    layers = [t for t in trace.layers if t.role != "container" and t.op not in PASS_THROUGH_OPS]
    return {n.name.split("#")[0]: t.name.split("#")[0] for t, n in zip(layers, layers[1:])
            if op_family(t.op) == "conv" and op_family(n.op) == "batchnorm" and n.numel == t.numel}



def _folded_conv_taps(ta: Trace, tb: Trace) -> tuple[frozenset[int], frozenset[int]]:
    """Where B has no BatchNorm: A's convolutions whose next layer is a BatchNorm of the same
    size, and B's convolutions whose next layer is not a multiply by a constant (or a BatchNorm)
    of the same size.  A converter that folds a BatchNorm into the conv before it (the torch ONNX
    exporters; tf2onnx folds its scale and keeps the shift as an ``Add``) leaves such a conv of B
    holding the BatchNorm's output, or its output before the shift, so A's conv has no tensor of
    its own there: pairing the two would compare a raw convolution with a normalised one (a
    divergence that is not one), and on a wrong BatchNorm it would point at the conv.  (A
    depthwise conv's BatchNorm stays ``Mul`` + ``Add`` in tf2onnx: that conv is A's conv.)"""

    def marked(layers: list[Tap], nxt_ok) -> frozenset[int]:
        out = set()
        for t, nxt in zip(layers, layers[1:] + [None]):
            if op_family(t.op) == "conv" and nxt_ok(t, nxt):
                out.add(id(t))
        return frozenset(out)

    def feeds_bn(t: Tap, nxt: Tap | None) -> bool:
        return nxt is not None and op_family(nxt.op) == "batchnorm" and nxt.numel == t.numel

    def bare(t: Tap, nxt: Tap | None) -> bool:  # no multiply by a constant after it: the scale is inside
        if nxt is None or nxt.numel != t.numel:
            return True
        scales = op_family(nxt.op) in ("mul", "multiply") and bool(nxt.attrs.get("constant_operand"))
        return not (scales or op_family(nxt.op) == "batchnorm")

    def computing(trace: Trace) -> list[Tap]:  # layout plumbing (B's Transpose to NHWC and back) skipped
        return [t for t in trace.layers if t.role != "container" and not _one_sided(t)
                and t.op not in PASS_THROUGH_OPS]

    layers_a, layers_b = computing(ta), computing(tb)
    folded_b = set(marked(layers_b, bare))
    plain = [t for t in tb.layers if t.role != "container"]
    for t, nxt in zip(plain, plain[1:]):  # and the Transpose/Reshape copies of such a conv's tensor
        if id(t) in folded_b and nxt.op in ONE_SIDED_OPS and nxt.numel == t.numel:
            folded_b.add(id(nxt))
    return marked(layers_a, feeds_bn), frozenset(folded_b)


def _fused_into(name: str, b_names: list[str]) -> bool:
    """Whether a converter folded model A's layer ``name`` into a tensor of B that was
    compared: B's tensor names it as a scope (ONNX ``/layer1/layer1.0/conv1/Conv``,
    TFLite ``model/relu_1/Relu6;model/bn_1/batchnorm/add_1;model/conv_1/convolution``)."""
    key = normalize_name(name)
    for b_name in b_names:
        for part in b_name.split(";"):
            if key in _scope_keys(part):
                return True
    return False



#: value matching: the pair must agree to 1 − cos ≤ 1e-4 …
_VALUE_SIMILARITY = 2.0
#: … and beat every other candidate of either tensor by this much (a factor of 10 in 1 − cos)
_VALUE_MARGIN = 0.5


#: a pair whose similarity the matrix pass puts below this is no candidate nor rival (see below)
_NEAR = 1.4
#: rows of A's unit vectors per block of the matrix pass (bounds its memory to this × |B|)
_ROWS = 256


def _unit(v: np.ndarray) -> np.ndarray | None:
    v = rescaled(v)
    with np.errstate(all="ignore"):
        n = float(np.sqrt(np.dot(v, v)))
    return v / n if np.isfinite(n) and n > 0 else None


def _near_pairs(group_a: list[Tap], group_b: list[Tap], ts: list[Transform]) -> list[tuple[int, int]]:
    """The (i, j) whose similarity under some transform of ``ts`` may reach :data:`_NEAR`, from one
    matrix product of unit sample vectors per transform (BLAS, not a Python call per pair)."""
    near: set[tuple[int, int]] = set()
    for t in ts:
        rows_a, rows_b = [], []
        for i, a in enumerate(group_a):
            u = _unit(samples(a, group_b[0], t)[0])
            if u is not None:
                rows_a.append((i, u))
        for j, b in enumerate(group_b):
            u = _unit(samples(group_a[0], b, t)[1])
            if u is not None:
                rows_b.append((j, u))
        if not rows_a or not rows_b:
            continue
        ub = np.stack([u for _, u in rows_b])
        idx_b = np.array([j for j, _ in rows_b])
        # 1 − cos ≤ 10^(−2·_NEAR), with slack for the rounding of 1 − u·v
        cut = 1.0 - 10 ** (-2 * _NEAR) * 1.5
        for lo in range(0, len(rows_a), _ROWS):
            block = rows_a[lo:lo + _ROWS]
            cos = np.stack([u for _, u in block]) @ ub.T
            for r, c in zip(*np.nonzero(cos >= cut)):
                near.add((block[r][0], int(idx_b[c])))
    return sorted(near)


def _value_matches(free_a: list[Tap], free_b: list[Tap], pairing: _Pairing) -> list[tuple[Tap, Tap, float]]:
    """Pairs whose values agree under a layout transform and that no other tensor rivals.

    Only tensors that carry values, are not all zero, and are real layers (not
    pass-through or plumbing ops, whose values repeat a neighbour's) take part.  A
    pair is accepted when each is the other's best candidate, they agree to
    ``1 − cos ≤ 1e-4`` on the fixed sample, and the runner-up of either side is at
    least :data:`_VALUE_MARGIN` worse.

    Near-linear in depth: tensors are grouped by shape and layout (the candidate transforms
    are the same for a whole group pair), and one matrix product of unit sample vectors per
    group pair finds the pairs whose similarity can reach :data:`_NEAR`; only those are scored
    one by one.  A pair below it can neither be accepted (that needs ≥ ``_VALUE_SIMILARITY``)
    nor change an acceptance as a runner-up (a rival under ``_VALUE_SIMILARITY −
    _VALUE_MARGIN`` leaves every gap at least the margin), so the result is the all-pairs one."""

    def eligible(t: Tap) -> bool:
        return (
            t.value is not None and t.numel > 1 and not _passes_through(t) and not _one_sided(t)
            and not t.attrs.get("partial")
            and bool(np.any(cached_sample(("a", id(t.value)), t.value, lambda v: v.reshape(-1)[sample_index(t.shape)])))
        )

    cand_a = [t for t in free_a if eligible(t)]
    groups_a: dict[tuple, list[Tap]] = {}
    for t in cand_a:
        groups_a.setdefault((tuple(t.shape), t.layout), []).append(t)
    groups_b: dict[int, dict[tuple, list[Tap]]] = {}
    for t in free_b:
        if eligible(t):
            key = (tuple(t.shape), t.layout, tuple(t.attrs.get("flat_from") or ()))
            groups_b.setdefault(t.numel, {}).setdefault(key, []).append(t)
    best_a: dict[int, list[tuple[float, Tap]]] = {}
    best_b: dict[int, list[float]] = {}
    for group_a in groups_a.values():
        for group_b in groups_b.get(group_a[0].numel, {}).values():
            ts = pairing.transforms(group_a[0], group_b[0])
            if not ts:
                continue
            for i, j in _near_pairs(group_a, group_b, ts):
                a, b = group_a[i], group_b[j]
                sim = similarity(a, b, pairing.best(a, b)[0])
                best_a.setdefault(id(a), []).append((sim, b))
                best_b.setdefault(id(b), []).append(sim)
    out = []
    for a in cand_a:
        ranked = sorted(best_a.get(id(a), []), key=lambda x: -x[0])
        if not ranked or ranked[0][0] < _VALUE_SIMILARITY:
            continue
        sim, b = ranked[0]
        runner_a = ranked[1][0] if len(ranked) > 1 else 0.0
        others_b = sorted(best_b[id(b)], reverse=True)
        runner_b = others_b[1] if len(others_b) > 1 else 0.0
        if others_b[0] > sim:  # b agrees better with another tensor of A
            continue
        gap = sim - max(runner_a, runner_b)
        if gap < _VALUE_MARGIN:
            continue
        out.append((a, b, min(1.0, 0.9 + 0.1 * min(gap, 1.0))))
    return out


def _one_sided(t: Tap) -> bool:
    """An op that exists on one side only (a Keras ``Add`` merge, a Reshape) — but not the bias
    add that completes an exporter's MatMul or Conv, which is a layer's output."""
    return t.op in ONE_SIDED_OPS and not t.attrs.get("bias_of")


def _passes_through(t: Tap) -> bool:
    """An op whose output is its input at inference (Identity, eval-mode Dropout, a module the
    capture saw return its input): it would steal the match of the real layer before it."""
    return t.op in PASS_THROUGH_OPS or bool(t.attrs.get("passthrough"))


def _confidence(how: str, a: Tap, b: Tap, t: Transform, same_family: bool) -> float:
    """How sure a pairing made by ``how`` is (see the module docstring)."""
    sim = similarity(a, b, t)
    if how in ("name", "scope", "output"):
        base = 0.95 if sim >= 1.0 or how == "scope" else 0.9  # names agree; values may not (a divergence)
    elif how == "order":
        base = 0.5 + 0.15 * same_family + 0.1 * min(sim, 2.0)
        if not same_family and sim < 1.0:
            base = 0.4
    else:
        base = 0.9
    if t.ambiguous and sim < 1.0:  # values that agree under the transform used settle the layout
        base -= 0.1
    return float(min(max(base, 0.0), 1.0))


def _folded(ta: Trace, tb: Trace, matches: list[Match], used_a: set[int], used_b: set[int]) -> set[int]:
    """A's layers a converter folded into the next compared tensor of B.

    A run of unmatched layers of A right before a pair is "fused" when one of them is of
    the family of an op that made B's tensor of that pair: B's op itself when it is of another
    family than A's (torch Conv → BatchNorm → ReLU against TFLite's one ``CONV_2D`` with a
    fused ReLU), or an unmatched op of B right before it (onnx2tf's bias-less convolution
    before the ``Add`` that matched torch's BatchNorm)."""
    ordered = sorted(matches, key=lambda m: m.a.index)
    a_free = [t for t in ta.layers if id(t) not in used_a and t.role != "container"]
    a_index = [t.index for t in a_free]
    b_free = [t for t in tb.layers if id(t) not in used_b and t.role != "container"]
    b_index = [t.index for t in b_free]
    out: set[int] = set()
    prev_a, prev_b = -1, -1
    for m in ordered:  # each run is a slice of the unmatched taps, both lists in index order
        run = a_free[bisect.bisect_right(a_index, prev_a):bisect.bisect_left(a_index, m.a.index)]
        if run:
            before_b = b_free[bisect.bisect_right(b_index, prev_b):bisect.bisect_left(b_index, m.b.index)]
            made_by = {op_family(b.op) for b in before_b}
            if op_family(m.b.op) != tap_family(m.a):
                made_by.add(op_family(m.b.op))
            if any(op_family(r.op) in made_by for r in run):
                out.update(id(r) for r in run)
        prev_a = m.a.index
        prev_b = max(prev_b, m.b.index)
    return out


def _increasing_chain(pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The longest chain of anchors increasing in both indices (they bound the DP segments).

    ``pairs`` are sorted by A's index; of the longest chains, the one whose every link is the
    earliest possible.  O(P log P): a Fenwick tree over B's ranks holds, for each prefix of
    them, the longest chain ending there and its earliest end."""
    if not pairs:
        return []
    ranks = {b: r for r, b in enumerate(sorted({b for _, b in pairs}), start=1)}
    size = len(ranks)
    tree: list[tuple[int, int]] = [(0, 0)] * (size + 1)  # (chain length, −position of its end)
    best: list[int] = [1] * len(pairs)
    prev: list[int] = [-1] * len(pairs)
    start = 0
    for i, (ai, bi) in enumerate(pairs):
        if i and pairs[i - 1][0] != ai:
            start = i
        # an anchor can only follow one with a smaller A index: a run of equal A indices is
        # entered into the tree once all of it is queried
        k, found = ranks[bi] - 1, (0, 0)
        while k > 0:
            found = max(found, tree[k])
            k -= k & -k
        if found[0]:
            best[i], prev[i] = found[0] + 1, -found[1]
        if i + 1 == len(pairs) or pairs[i + 1][0] != ai:
            for j in range(start, i + 1):
                k = ranks[pairs[j][1]]
                while k <= size:
                    if (best[j], -j) > tree[k]:
                        tree[k] = (best[j], -j)
                    k += k & -k
    i = max(range(len(pairs)), key=lambda k: (best[k], -k))
    chain = []
    while i != -1:
        chain.append(pairs[i])
        i = prev[i]
    return chain[::-1]


#: a segment of at most this many cells (A's taps × B's) is aligned by the full DP
_FULL_DP = 1 << 16
#: half-width of the band around the scaled diagonal that a larger segment's DP searches
_BAND = 48


def _band(n: int, m: int) -> list[tuple[int, int]]:
    """For each row i in 0..n, the columns [lo, hi] of the DP that are searched: all of them
    for a small segment, else a band around the diagonal from (0, 0) to (n, m), wide enough
    that rows overlap (every monotone path inside it is connected)."""
    if n * m <= _FULL_DP:
        return [(0, m)] * (n + 1)
    width = _BAND + 2 * (m // max(n, 1) + 1)
    return [(max(0, (i * m) // n - width), min(m, -(-(i * m) // n) + width)) for i in range(n + 1)]


def _order_alignment(seg_a: list[Tap], seg_b: list[Tap], pairing: _Pairing) -> list[tuple[Tap, Tap]]:
    """A monotone matching maximising the summed pair scores (skips cost nothing).

    Near-linear in depth: a segment larger than :data:`_FULL_DP` cells is searched in a band of
    :data:`_BAND` taps around its diagonal (a converted model keeps its layers in order; what it
    adds or drops shifts the pairing by a few taps, not hundreds), so the pairs scored grow
    with n + m, not n · m."""
    n, m = len(seg_a), len(seg_b)
    if n == 0 or m == 0:
        return []
    band = _band(n, m)
    neg = float("-inf")
    score: list[list[float]] = [[0.0] * (band[0][1] - band[0][0] + 1)]  # row 0: nothing of A taken
    move: list[list[int]] = [[1] * (band[0][1] - band[0][0] + 1)]  # 0: skip a, 1: skip b, 2: match

    def at(i: int, j: int) -> float:
        lo, hi = band[i]
        if j == 0:
            return 0.0  # nothing of B taken: every row starts at 0
        return score[i][j - lo] if lo <= j <= hi else neg

    for i in range(1, n + 1):
        a = seg_a[i - 1]
        lo, hi = band[i]
        row = [0.0] * (hi - lo + 1)
        moves = [0] * (hi - lo + 1)
        score.append(row)
        move.append(moves)
        for j in range(lo, hi + 1):
            if j == 0:
                continue
            best, how = at(i - 1, j), 0
            left = row[j - 1 - lo] if j - 1 >= lo else at(i, j - 1)
            if left > best:
                best, how = left, 1
            diag = at(i - 1, j - 1)
            if diag > neg:
                s = pairing.score(a, seg_b[j - 1])
                if s > 0 and diag + s > best:
                    best, how = diag + s, 2
            row[j - lo], moves[j - lo] = best, how
    out = []
    i, j = n, m
    while i > 0 and j > 0:
        lo, _ = band[i]
        how = move[i][j - lo] if j >= lo else 0
        if how == 2:
            out.append((seg_a[i - 1], seg_b[j - 1]))
            i, j = i - 1, j - 1
        elif how == 0:
            i -= 1
        else:
            j -= 1
    return out[::-1]
