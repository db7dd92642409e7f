"""ONNX Runtime's transformer fusions (Attention, SkipLayerNormalization, BiasGelu, ...).

ONNX Runtime fuses attention only when the graph matches its patterns, and graphs from
PyTorch's ``torch.export``-based exporter do not (0 of 6 attention blocks of MiniLM fused);
onnxscript's ``optimize_for_ort`` rewrites them into ORT's fused contrib ops (all 6 fused).
"""

from __future__ import annotations

from pathlib import Path

from slimkit._io import atomic_path
from slimkit._optional import require
from slimkit._runtime import log

__all__ = ["transformer_fused"]


def transformer_fused(source: Path, target: Path) -> Path | None:
    """Write ``source`` with ORT's transformer fusions applied to ``target``.

    Returns:
        ``target``, or ``None`` when the model is not a transformer (integer inputs, no
        fusion matched): then there is nothing to gain and nothing is written.
    """
    onnx = require("onnx", "onnx", "ONNX Runtime's transformer fusions")
    ir = require("onnxscript.ir", "onnx", "ONNX Runtime's transformer fusions")
    fusions = require("onnxscript.rewriter.ort_fusions", "onnx", "ONNX Runtime's fusions")
    proto = onnx.load(str(source))
    integer_input = proto.graph.input[0].type.tensor_type.elem_type in (6, 7)  # int32, int64
    if not integer_input:
        return None
    model, counts = fusions.optimize_for_ort(ir.serde.deserialize_model(proto))
    applied = {k: v for k, v in counts.items() if v}
    if not applied:
        return None
    log(f"ONNX Runtime transformer fusions: {applied}")
    with atomic_path(target) as out:
        onnx.save(ir.serde.serialize_model(model), str(out))
    return target
