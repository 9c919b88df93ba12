"""Per-layer activation ranges read from the ModelOpt quantizers after calibration."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

from pipeline.calibration.records import LayerActivationRange

LAYER_INDEX = re.compile(r"\.layers\.(\d+)\.")


def summarize_layers(per_linear: dict[str, tuple[float, float]]) -> list[LayerActivationRange]:
    """{linear module name: (input amax before smoothing, quantized amax)} -> one summary per layer. Pure."""
    by_layer: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for name, values in per_linear.items():
        match = LAYER_INDEX.search(name)
        if match:
            by_layer[int(match.group(1))].append(values)
    out = []
    for layer in sorted(by_layer):
        raw = [r for r, _ in by_layer[layer]]
        out.append(
            LayerActivationRange(
                layer=layer,
                linears=len(raw),
                input_amax_min=min(raw),
                input_amax_max=max(raw),
                input_amax_mean=sum(raw) / len(raw),
                quantized_amax_max=max(q for _, q in by_layer[layer]),
            )
        )
    return out


def linear_input_ranges(model: Any) -> dict[str, tuple[float, float]]:
    """Each calibrated linear's input amax: before smoothing (SmoothQuant keeps the
    per-channel maxima it smoothed with) and the per-tensor amax INT8 uses."""
    out = {}
    for name, module in model.named_modules():
        quantizer = getattr(module, "input_quantizer", None)
        if quantizer is None or not quantizer.is_enabled or quantizer.amax is None:
            continue
        quantized = float(quantizer.amax.float().max())
        raw = getattr(quantizer, "_amax_for_smoothing", None)
        out[name] = (float(raw.float().max()) if raw is not None else quantized, quantized)
    return out
