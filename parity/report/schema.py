"""The JSON Schema of a saved report, derived from the record dataclasses.

The published file is ``parity/schemas/report.schema.json``; regenerate it
after changing a record with::

    python -m parity.report.schema > parity/schemas/report.schema.json

(a test fails while the file is out of date).  Field descriptions come from
:data:`DESCRIPTIONS`; every field of every record must have one.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import json
import sys
import types
import typing
from typing import Any, Union

from ..records import REPORT_RECORDS, SCHEMA_VERSION, Report

__all__ = ["build_schema", "DESCRIPTIONS", "SCHEMA_ID"]

SCHEMA_ID = "https://parity.dev/schemas/report.schema.json"


DESCRIPTIONS: dict[str, str] = {
    "Report": "The answer to 'do these two models compute the same thing?'.",
    "Report.a": "Model A, the reference (its layer names and layout are the report's).",
    "Report.b": "Model B, the model checked against A.",
    "Report.layers": "Every compared layer, in model A's execution order.",
    "Report.unmatched": "Layers of either model that were not compared, with the reason.",
    "Report.inputs": "The inputs both models ran on.",
    "Report.rtol": "The global relative tolerance given by the user; null when per-dtype defaults applied.",
    "Report.atol": "The global absolute tolerance given by the user; null when per-dtype defaults applied.",
    "Report.notes": "Things the reader must know (a model was in training mode, layers ran without output, ...).",
    "Report.diagnoses": "Causes found from the numbers, each naming model A's layer.",
    "Report.environment": "Versions of what computed the report (parity, python, numpy, the frameworks).",
    "Report.params": "Parameters of aligned layers compared under the pair's layout transforms (weight parity).",
    "Report.reference": "The float64 reference that judged the layers (reference='float64'); null when the per-dtype tolerance table judged every layer.",
    "Report.suggestion": "The tightest tolerance the pair passes at: a global rtol (with atol) and, under a float64 reference, the noise factor.",
    "Report.command": "The parity diff arguments that rerun this comparison (files as absolute paths, never --trust): what parity repro runs; empty when the models were live objects.",
    "Report.conflicts": "Layers of A and B with the same name (or the models' outputs in order) whose shapes no layout transform reconciles; one on a model output fails the report.",
    "ShapeConflict": "A layer where the two models compute differently shaped tensors.",
    "ShapeConflict.a_name": "Model A's layer.",
    "ShapeConflict.b_name": "Model B's layer.",
    "ShapeConflict.a_op": "Model A's op type.",
    "ShapeConflict.b_op": "Model B's op type.",
    "ShapeConflict.a_shape": "Model A's shape.",
    "ShapeConflict.b_shape": "Model B's shape, its axes in A's layout where both layouts are known.",
    "ShapeConflict.b_layout": "The layout b_shape is in.",
    "ShapeConflict.output": "True for a model output: the report fails.",
    "ShapeConflict.code": "'pool_ceil_mode' (one side's pooling rounds its size up) or 'shape_mismatch'.",
    "ShapeConflict.message": "What differs, and where the numbers show it, the cause and the fix.",
    "Reference": "A float64 twin's run that judged the float32 layers: each may be factor × its noise floor plus floor from the float64 tensor.",
    "Reference.kind": "'float64' (a twin ran), or 'dtype' when float64 was asked for and no twin ran (note says why).",
    "Reference.side": "'a' or 'b': whose float64 twin ran (the other side is judged against it); empty when none ran.",
    "Reference.factor": "k: a layer's error against float64 may be k times its noise floor ...",
    "Reference.floor": "... plus this relative error (for layers float32 computes exactly).",
    "Reference.judged": "How many layers the float64 reference judged (the others: the dtype table).",
    "Reference.note": "Why some or all layers were judged by the dtype table instead; null when none were.",
    "Suggestion": "The tightest tolerance the pair passes at (the minimum required tolerance).",
    "Suggestion.rtol": "The global rtol (at atol) every layer the dtype table judges passes at, rounded up to two significant digits; null when none.",
    "Suggestion.atol": "The atol that rtol goes with.",
    "Suggestion.rtol_layer": "The layer that sets rtol (the tightest one).",
    "Suggestion.factor": "The noise factor every layer the float64 reference judges passes at, rounded up to two significant digits; null without a reference.",
    "Suggestion.factor_layer": "The layer that sets factor.",
    "Suggestion.unfixable": "Flagged layers no tolerance makes pass (an argmax or NaN/Inf pattern that differs).",
    "ParamDiff": "One parameter of an aligned layer pair.",
    "ParamDiff.a_layer": "Model A's layer.",
    "ParamDiff.b_layer": "Model B's layer.",
    "ParamDiff.a_param": "The parameter's name in A ('weight', 'running_var', ...).",
    "ParamDiff.b_param": "The parameter's name in B ('kernel', 'moving_variance', ...).",
    "ParamDiff.status": "'ok', 'differs', 'transposed', 'swapped', 'missing' or 'shape'.",
    "ParamDiff.rel_err": "‖b−a‖/‖a‖ of the parameter under the expected transform, when comparable.",
    "ParamDiff.message": "What differs and how, in words.",
    "ModelInfo": "What is known of one model.",
    "ModelInfo.framework": "'torch', 'keras', ...",
    "ModelInfo.framework_version": "The framework's version string.",
    "ModelInfo.name": "The model's class or given name.",
    "ModelInfo.kind": "What the model is: 'nn.Module', 'keras functional', 'keras Sequential', ...",
    "ModelInfo.param_count": "Number of parameters, when known.",
    "ModelInfo.input_spec": "The inputs the model declares, when it declares them.",
    "ModelInfo.was_training": "True when the model was in training mode when handed in (it was compared in inference mode).",
    "InputSpec": "One declared input.",
    "InputSpec.name": "Input name.",
    "InputSpec.shape": "Shape; null for a free dimension.",
    "InputSpec.dtype": "Element type.",
    "InputSpec.layout": "'NCHW', 'NHWC' or null.",
    "InputSpec.source": "Where the spec came from ('declared', 'traced', ...).",
    "InputSpec.required": "Whether the model needs this input (false: it may be left out, like an attention mask).",
    "InputsSummary": "The inputs of the run, as each model received them.",
    "InputsSummary.shapes_a": "Input shapes given to model A.",
    "InputsSummary.shapes_b": "Input shapes given to model B (after layout conversion).",
    "InputsSummary.dtypes": "Input element types.",
    "InputsSummary.conversions": "Conversions applied to B's inputs, e.g. 'NCHW→NHWC'.",
    "InputsSummary.source": "'given' or how parity made them (a seeded random batch).",
    "InputsSummary.digest": "Hash of the inputs' bytes, to tell whether two reports ran on the same data.",
    "InputsSummary.bindings": "How each of A's inputs was bound to one of B's: 'input_ids → token_ids (by evidence: ...)'.",
    "LayerDiff": "The comparison of one matched pair of layers, in model A's terms.",
    "LayerDiff.index": "Position in model A's execution order (0-based, over compared layers).",
    "LayerDiff.a_name": "Model A's layer or tensor name.",
    "LayerDiff.b_name": "Model B's layer or tensor name.",
    "LayerDiff.op": "Model A's op type (Conv2d, BatchNorm2d, ...).",
    "LayerDiff.b_op": "Model B's op type (Conv2D, BatchNormalization, ...).",
    "LayerDiff.shape": "Shape of A's tensor.",
    "LayerDiff.b_shape": "Shape of B's tensor, before it was brought into A's layout.",
    "LayerDiff.dtype": "Element type ('float32', or 'a/b' when they differ).",
    "LayerDiff.transform": "How B's tensor was brought into A's layout, e.g. 'NHWC→NCHW'.",
    "LayerDiff.ambiguous": "True when another permutation fits the shapes as well.",
    "LayerDiff.how": "How the pair was matched: 'mapping', 'output', 'name', 'scope', 'value' or 'order'.",
    "LayerDiff.noise": "Under a float64 reference: ‖x32−x64‖/‖x64‖ of the reference side's own float32 tensor (its noise floor); null otherwise.",
    "LayerDiff.ref_err": "Under a float64 reference: the judged side's relative error against the float64 tensor; the layer passes while ref_err <= rtol (= factor·noise + floor, atol 0).",
    "LayerDiff.confidence": "How sure the pairing is, 0-1: 1 for a user's mapping, >= 0.9 where names or values single the pair out, 0.5-0.9 by order and shape, below 0.5 a weak guess.",
    "LayerDiff.metrics": "The numbers of the comparison.",
    "LayerDiff.rtol": "Relative tolerance applied to this layer.",
    "LayerDiff.atol": "Absolute tolerance applied to this layer.",
    "LayerDiff.ok": "True when the layer is within tolerance.",
    "LayerDiff.reasons": "Why the verdict is a failure, one sentence each.",
    "LayerDiff.role": "'layer', or 'output' for a model output.",
    "LayerDiff.diagnoses": "Diagnoses about this layer.",
    "LayerDiff.detail": "Heat map and histograms; present for the first flagged layers only.",
    "LayerDiff.own_err": "The layer's own relative error: B's layer fed A's recorded input (replay), or the error growth over its input's error.",
    "LayerDiff.own_method": "'replay' or 'growth': how own_err was found; null when not computed.",
    "LayerDiff.baseline_err": "This layer's relative error in the baseline pair (untrained or reference), when a baseline was given.",
    "LayerDiff.drift": "rel_err / baseline_err: how much this layer's error grew over the baseline's.",
    "Metrics": "Error figures of one pair, computed in float64 on B's tensor in A's layout.",
    "Metrics.numel": "Number of elements compared.",
    "Metrics.rel_err": "‖b−a‖₂/‖a‖₂ over finite elements (inf when ‖a‖ is 0 and b differs).",
    "Metrics.err_norm": "‖b−a‖₂.",
    "Metrics.max_abs": "Greatest |b−a|.",
    "Metrics.max_abs_index": "Index of the greatest |b−a|, in A's layout.",
    "Metrics.mean_abs": "Mean |b−a|.",
    "Metrics.cosine": "Cosine similarity of a and b.",
    "Metrics.mismatched": "Elements outside |b−a| ≤ atol + rtol·|a|.",
    "Metrics.norm_a": "‖a‖₂.",
    "Metrics.norm_b": "‖b‖₂.",
    "Metrics.rms_a": "Root mean square of a.",
    "Metrics.nan_a": "NaN elements in a.",
    "Metrics.nan_b": "NaN elements in b.",
    "Metrics.inf_a": "Infinite elements in a.",
    "Metrics.inf_b": "Infinite elements in b.",
    "Metrics.nonfinite_mismatch": "Positions where a and b disagree on being NaN/inf.",
    "Metrics.argmax_agreement": "Share of rows whose argmax agrees (outputs only), else null.",
    "LayerDetail": "What the HTML report draws for a flagged layer.",
    "LayerDetail.histogram": "Both tensors' values in shared bins.",
    "LayerDetail.error_map": "Mean |b−a| per spatial position; null for tensors without spatial axes.",
    "ErrorMap": "Mean |b−a| over batch and channels per (row, column), block-averaged to at most 64×64.",
    "ErrorMap.rows": "The tensor's height.",
    "ErrorMap.cols": "The tensor's width.",
    "ErrorMap.values": "The grid, row by row.",
    "ErrorMap.border": "Mean |b−a| of first_row, last_row, first_col, last_col and the interior.",
    "Histogram": "Counts of both tensors in the same bins, spanning their 0.1–99.9 percentiles.",
    "Histogram.edges": "Bin edges (one more than bins).",
    "Histogram.counts_a": "Counts of A's values per bin.",
    "Histogram.counts_b": "Counts of B's values per bin.",
    "Histogram.outside_a": "A's values outside the edges (or not finite).",
    "Histogram.outside_b": "B's values outside the edges (or not finite).",
    "Diagnosis": "A cause found from the numbers.",
    "Diagnosis.code": "Machine-readable cause: 'bn_epsilon', ...",
    "Diagnosis.layer": "Model A's layer the diagnosis is about.",
    "Diagnosis.message": "The cause and what to do, in words.",
    "Diagnosis.evidence": "The numbers that support it (fitted values, counts, ratios).",
    "LayerDiff.quant": "A quantized layer of B judged in steps of its output scale (its verdict is ok's); null for a float layer.",
    "Report.quant": "A quantized B's layers judged in steps of their scale, and the deny-list for its converter; null when B has no quantized layer.",
    "QuantVerdict": "A quantized tensor of B against A's float one, in steps of its quantization scale (RMSE / scale; rounding alone gives 1/√12 ≈ 0.29).",
    "QuantVerdict.scale": "The output scale (the mean of a per-channel scale).",
    "QuantVerdict.zero_point": "The zero point (the first of a per-channel one).",
    "QuantVerdict.dtype": "The integer type: 'int8', 'uint8', ...",
    "QuantVerdict.axis": "The axis of a per-channel scale in B's layout; null for one scale per tensor.",
    "QuantVerdict.via": "Where the parameters were read: 'tensor' (TFLite), 'DEQUANTIZE', 'DequantizeLinear', 'QuantizeLinear' (the value is rounded next).",
    "QuantVerdict.cumulative": "B's dequantized output against A's, in steps: every earlier layer's rounding included.",
    "QuantVerdict.local": "The layer alone in steps: A's float layer fed B's dequantized input of it, against B's output; null when not measurable.",
    "QuantVerdict.local_note": "How local was measured, or why it could not be.",
    "QuantVerdict.steps": "The figure judged: local where measured, else cumulative.",
    "QuantVerdict.limit": "The limit in steps the layer is held to.",
    "QuantVerdict.ok": "True when steps is within the limit.",
    "QuantVerdict.clipped": "Share of elements where B sits at its integer range's limit while A is past it by more than a step.",
    "QuantVerdict.exclude": "The names to give the converter's selective quantization to keep this layer float (a TFLite tensor; ONNX nodes).",
    "QuantVerdict.input_steps": "The cumulative steps of B's input of this layer, where that input is a quantized pair too.",
    "QuantVerdict.weight_per_channel": "Whether B's layer quantizes its weights with a scale per output channel (false: one per tensor); null without int weights.",
    "QuantVerdict.weight_levels": "The largest |q − zero point| each output channel's weights reach (127 of int8: the whole range).",
    "QuantSummary": "A quantized B's layers judged in steps, and the deny-list for its converter.",
    "QuantSummary.converter": "'tflite' or 'onnxruntime'.",
    "QuantSummary.layers": "How many layers were judged in steps.",
    "QuantSummary.limit": "The limit in steps.",
    "QuantSummary.exclude": "The names to keep in float, worst first: the flagged layers whose error is born there.",
    "QuantSummary.option": "The converter's selective-quantization option with those names, ready to paste; empty when none.",
    "UnmatchedLayer": "A layer that was not compared.",
    "UnmatchedLayer.side": "'a' or 'b'.",
    "UnmatchedLayer.name": "The layer's name.",
    "UnmatchedLayer.op": "The layer's op type.",
    "UnmatchedLayer.shape": "Its output shape.",
    "UnmatchedLayer.reason": (
        "'one-sided' (exists on one side by design), 'placeholder' (an identity at inference), 'fused' (folded "
        "by the converter into a compared tensor of B), 'inside' (a tensor of B computed inside one layer of A, "
        "which records nothing there), 'unsure: …' (a pairing the values contradict: not compared) or "
        "'no-match' (not covered)."
    ),
}

_FLOAT = {"anyOf": [{"type": "number"}, {"enum": ["inf", "-inf", "nan"]}]}


def _type(hint: Any) -> dict:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        options = [_type(a) for a in args]
        return {"anyOf": options}
    if hint is type(None):
        return {"type": "null"}
    if hint is bool:
        return {"type": "boolean"}
    if hint is int:
        return {"type": "integer"}
    if hint is float:
        return dict(_FLOAT)
    if hint is str:
        return {"type": "string"}
    if hint is Any:
        return {}
    if dataclasses.is_dataclass(hint):
        return {"$ref": f"#/$defs/{hint.__name__}"}
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": _type(args[0])}
        return {"type": "array", "prefixItems": [_type(a) for a in args], "minItems": len(args), "maxItems": len(args)}
    if origin in (dict, collections.abc.Mapping):
        return {"type": "object", "additionalProperties": _type(args[1]) if args else {}}
    raise TypeError(f"no JSON Schema type for {hint!r}")


def _definition(cls: type) -> dict:
    hints = typing.get_type_hints(cls)
    properties = {}
    required = []
    for f in dataclasses.fields(cls):
        if f.name == "schema_version":
            continue
        key = f"{cls.__name__}.{f.name}"
        if key not in DESCRIPTIONS:
            raise KeyError(f"describe {key} in parity.report.schema.DESCRIPTIONS")
        properties[f.name] = {**_type(hints[f.name]), "description": DESCRIPTIONS[key]}
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(f.name)
    return {
        "type": "object",
        "description": DESCRIPTIONS[cls.__name__],
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def build_schema() -> dict:
    """The JSON Schema (draft 2020-12) that ``report.to_json()`` output satisfies."""
    root = _definition(Report)
    root["properties"] = {
        "schema": {"const": "parity.report", "description": "Always 'parity.report'."},
        "version": {"type": "integer", "minimum": 1, "maximum": SCHEMA_VERSION,
                    "description": "Schema version (2 added the quantized layers' verdicts in steps; a version 1 "
                                   "report is read as it is); readers refuse newer versions."},
        **root["properties"],
    }
    root["required"] = ["schema", "version", *root["required"]]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": f"parity report, version {SCHEMA_VERSION}",
        **root,
        "$defs": {cls.__name__: _definition(cls) for cls in REPORT_RECORDS if cls is not Report},
    }


def schema_text() -> str:
    return json.dumps(build_schema(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(schema_text())
