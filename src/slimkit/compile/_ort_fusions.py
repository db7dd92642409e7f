"""ONNX Runtime's transformer fusions (Attention, SkipLayerNormalization, BiasGelu, ...).

ONNX Runtime fuses attention only when the graph matches its patterns, and graphs from
PyTorch's ``torch.export``-based exporter do not (0 of 6 attention blocks of MiniLM fused);
onnxscript's ``optimize_for_ort`` rewrites them into ORT's fused contrib ops (all 6 fused).

Its ``Attention`` nodes take the padding mask as an additive bias (input 5) built by a chain of
ops from the token ids. ONNX Runtime's int8 ``QAttention`` has no such input, so the quantizer
leaves those nodes (a quarter of the weights: the Q, K and V projections) in float. Where the bias
is a key padding mask, :func:`transformer_fused` feeds the mask itself as ``mask_index`` (1 =
attend) instead, and keeps that rewrite only when the model's outputs are unchanged on a padded
batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from slimkit._io import atomic_path
from slimkit._optional import require
from slimkit._runtime import log

__all__ = ["transformer_fused"]

_MS = "com.microsoft"
_BIAS, _MASK_INDEX, _PAST = 5, 3, 4  # input positions of com.microsoft Attention
_MASK_NAME = "slimkit_key_padding_mask"


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
    fused = ir.serde.serialize_model(model)
    fused = _with_mask_index(fused) or fused
    with atomic_path(target) as out:
        onnx.save(fused, str(out))
    return target


def _with_mask_index(model: Any) -> Any | None:
    """A copy of ``model`` whose Attention nodes take the key padding mask as ``mask_index``.

    ``None`` when there is nothing to rewrite, no single ``Not(Equal(ids, pad))`` mask in the
    graph, or the rewritten model's outputs differ from the original's on a padded batch.
    """
    onnx = require("onnx", "onnx", "ONNX Runtime's transformer fusions")
    attention = [n for n in model.graph.node if n.op_type == "Attention" and n.domain == _MS]
    biased = [n for n in attention if _input(n, _BIAS) and not _input(n, _MASK_INDEX)]
    if not biased or any(_input(n, _PAST) for n in biased):
        return None
    found = _padding_mask(model)
    if found is None:
        return None
    not_node, ids_name, pad = found
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    nodes = list(rewritten.graph.node)
    cast = onnx.helper.make_node("Cast", [not_node.output[0]], [_MASK_NAME],
                                 to=onnx.TensorProto.INT32, name=_MASK_NAME)  # fmt: skip
    position = next(i for i, n in enumerate(nodes) if n.output == not_node.output)
    nodes.insert(position + 1, cast)
    targets = {tuple(n.output) for n in biased}  # the copies of exactly the nodes checked above
    for node in nodes:
        if tuple(node.output) in targets:
            inputs = [*list(node.input)[:3], _MASK_NAME]
            del node.input[:]
            node.input.extend(inputs)
            _drop_equal_qkv_sizes(node)
    del rewritten.graph.node[:]
    rewritten.graph.node.extend(_live(nodes, {o.name for o in rewritten.graph.output}))
    used = {i for n in rewritten.graph.node for i in n.input}
    constants = [c for c in rewritten.graph.initializer if c.name in used]
    del rewritten.graph.initializer[:]
    rewritten.graph.initializer.extend(constants)
    if not _same_outputs(model, rewritten, ids_name, pad):
        log("attention mask as mask_index changed the outputs; kept the additive mask")
        return None
    log(f"attention: key padding mask fed as mask_index to {len(biased)} node(s)")
    return rewritten


def _input(node: Any, index: int) -> str:
    return node.input[index] if len(node.input) > index else ""


def _padding_mask(model: Any) -> tuple[Any, str, int] | None:
    """The one ``Not(Equal(ids, pad))`` node on an integer graph input, its input and pad id."""
    onnx = require("onnx", "onnx", "ONNX Runtime's transformer fusions")
    ids = {i.name for i in model.graph.input if i.type.tensor_type.elem_type in (6, 7)}
    constants = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    found = []
    for node in model.graph.node:
        equal = producer.get(node.input[0]) if node.op_type == "Not" else None
        if equal is None or equal.op_type != "Equal":
            continue
        names = [n for n in equal.input if n in ids]
        values = [constants[n] for n in equal.input if n in constants]
        if len(names) == 1 and len(values) == 1:
            value = onnx.numpy_helper.to_array(values[0])
            if value.size == 1:
                found.append((node, names[0], int(value.reshape(()))))
    return found[0] if len(found) == 1 else None


def _drop_equal_qkv_sizes(node: Any) -> None:
    """Remove ``qkv_hidden_sizes`` when it states the default (equal sizes, or none).

    ONNX Runtime's quantizer leaves any Attention carrying it in float.
    """
    keep = [a for a in node.attribute
            if a.name != "qkv_hidden_sizes" or len(set(a.ints)) > 1]  # fmt: skip
    del node.attribute[:]
    node.attribute.extend(keep)


def _live(nodes: list[Any], outputs: set[str]) -> list[Any]:
    """``nodes`` without those whose outputs nothing uses (the additive mask's chain)."""
    while True:
        used = outputs | {i for n in nodes for i in n.input}
        kept = [n for n in nodes if any(o in used for o in n.output)]
        if len(kept) == len(nodes):
            return kept
        nodes = kept


def _same_outputs(original: Any, rewritten: Any, ids_name: str, pad: int) -> bool:
    """Whether both models agree (1e-4) on two short sequences, the second one padded."""
    ort = require("onnxruntime", "onnx", "checking a rewritten ONNX model")
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 100, size=(2, 12))
    ids[ids == pad] = pad + 1
    ids[1, 7:] = pad
    elem = next(i for i in original.graph.input if i.name == ids_name).type.tensor_type.elem_type
    feed = {ids_name: ids.astype(np.int32 if elem == 6 else np.int64)}
    outs = []
    for model in (original, rewritten):
        blob = model.SerializeToString()
        outs.append(ort.InferenceSession(blob, providers=["CPUExecutionProvider"]).run(None, feed))
    return all(
        a.shape == b.shape and np.allclose(a, b, atol=1e-4, rtol=1e-4)
        for a, b in zip(*outs, strict=True)
    )
