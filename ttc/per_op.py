"""Per-op golden checks (`ttc run --golden --per-op`): where does the device first go wrong?

Both sides expose their intermediate values without changing what they compute:

- the device side is a program transformation: after every `ttmetal.enqueue_program` of a copy of the
  compiled schedule, a `ttmetal.read_buffer` of the program's result buffer becomes an extra output of
  @main, so the emulator runs exactly the kernels it always runs, only reading more back;
- the onnxruntime side adds the matching ONNX node outputs to the graph's outputs.

Each device program carries the ONNX nodes it implements in its location (an unnamed node by the
importer's name for it, `OpType_index`). A fused program (matmul + bias
+ GELU, reshape + transpose) is compared at its last ONNX node in graph order, whose value is the
program's result; of several programs ending at the same node (a mean as a sum, then a scale) only the
last is compared, and a program whose last node continues in a later program (a mean's sum whose 1/N scale
is fused into the next node's program) is not comparable. A program computing several nodes' values side by
side (the grid pass's sibling linears: Q, K and V as one product) is compared with those values concatenated
along the last axis in program order. A convolutional activation, channels-last
[N*H*W, C] on the device, is compared in its node's NCHW layout. Values whose element count differs from the node's (a program whose result was
re-shaped by a decomposition) are reported as not comparable rather than guessed at.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ttc.compiler import CompiledModel
from ttc.frontend.importer import node_name
from ttc.golden import compare, run_onnxruntime
from ttc.ir.core import Module, Operation
from ttc.ir.dialects import ttmetal
from ttc.ir.parser import parse_module
from ttc.ir.types import FunctionType, TensorType, f32

PROBE_PREFIX = "ttc.probe."


@dataclass(frozen=True)
class NodeCheck:
    """One device program compared at its last ONNX node."""

    index: int  # program number in schedule order
    node: str  # the ONNX node compared (the last of the program's nodes)
    op_type: str
    fused: tuple[str, ...]  # every ONNX node of the program
    value: str  # the ONNX tensor compared
    pcc: float | None
    rel_l2_err: float | None
    passed: bool | None  # None: not comparable
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"program": self.index, "node": self.node, "op_type": self.op_type, "fused": list(self.fused),
                "value": self.value, "pcc": self.pcc, "rel_l2_err": self.rel_l2_err, "passed": self.passed,
                "note": self.note}


def instrument(compiled: CompiledModel) -> tuple[Module, list[tuple[str, tuple[str, ...]]]]:
    """A copy of the compiled schedule whose @main also returns every program's result, named
    PROBE_PREFIX + number; with the (probe name, ONNX node names) of each."""
    module = parse_module(str(compiled.module))
    main = module.function("main")
    probes: list[tuple[str, tuple[str, ...]]] = []
    values = []
    for op in list(main.body.ops):
        if op.name != ttmetal.ENQUEUE_PROGRAM.name or not op.operands:
            continue
        result = op.operands[-1]  # enqueue_program(inputs..., tables..., result)
        ttype = result.type
        assert isinstance(ttype, TensorType)
        host = TensorType(ttype.shape, ttype.element_type if ttype.element_type.is_integer else f32)
        read = Operation(ttmetal.READ_BUFFER.name, [result], [host], loc=op.loc)
        main.body.insert_after(op, read)
        name = f"{PROBE_PREFIX}{len(probes)}"
        probes.append((name, op.loc.names()))
        values.append((name, read.result))
    _add_results(module, values)
    return module, probes


def _add_results(module: Module, values: Sequence[tuple[str, Any]]) -> None:
    main = module.function("main")
    ret = main.return_op
    res_attrs = [dict(main.res_attrs(i)) for i in range(len(ret.operands))]
    for name, value in values:
        ret._append_operand(value)
        res_attrs.append({"ttir.name": name})
    main.set_type(FunctionType(main.type.inputs, tuple(v.type for v in ret.operands)))
    main.op.attributes["res_attrs"] = tuple(res_attrs)


def check_per_op(compiled: CompiledModel, model_path: str | Path, feeds: Mapping[str, np.ndarray],
                 pcc_threshold: float = 0.99, rel_l2_threshold: float = 0.05) -> list[NodeCheck]:
    """Run both sides with every intermediate exposed and compare program by program."""
    from ttc.runtime.executor import Executor

    instrumented, probes = instrument(compiled)
    device = Executor(instrumented, compiled.device_weights).run(dict(feeds))

    model = onnx.load(str(model_path))
    # by the name the importer gave each node's ops: an unnamed node is `OpType_index`
    nodes = {node_name(node, i): (i, node) for i, node in enumerate(model.graph.node)}
    targets: list[tuple[str, onnx.NodeProto | None, tuple[str, ...]]] = []
    for name, fused in probes:
        known = [nodes[n] for n in fused if n in nodes]
        last = max(known, key=lambda item: item[0])[1] if known else None
        targets.append((name, last, fused))
    existing = {o.name for o in model.graph.output}
    side = {name: sinks([nodes[n][1] for n in fused if n in nodes]) for name, _, fused in targets}
    wanted = sorted({node.output[0] for _, node, _ in targets if node is not None}
                    | {node.output[0] for group in side.values() for node in group} - existing)
    del model.graph.value_info[:]
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in wanted)
    reference = run_onnxruntime(model, feeds, [*wanted, *sorted(existing & ({n.output[0] for _, n, _ in targets
                                                                                if n is not None}
                                                                               | {n.output[0] for group in side.values()
                                                                                  for n in group}))])
    final = {id(node): index for index, (_, node, _) in enumerate(targets) if node is not None}
    spatial = any(n.op_type in SPATIAL_OPS for n in model.graph.node)  # channels-last values may occur
    names = {id(node): name for name, (_, node) in nodes.items()}

    def label(node: onnx.NodeProto) -> str:
        return names[id(node)]

    # The last program holding each node: a node whose tail (a mean's 1/N scale) is fused into a later
    # program that ends at another node is not complete at the programs before it.
    holder: dict[str, int] = {}
    for index, (_, _, fused) in enumerate(targets):
        for n in fused:
            holder[n] = index

    checks = []
    for index, (name, node, fused) in enumerate(targets):
        if node is None:
            checks.append(NodeCheck(index, fused[-1] if fused else "?", "?", fused, "", None, None, None,
                                    "no ONNX node of this program is in the model"))
            continue
        if final[id(node)] != index:  # e.g. the sum of a mean, scaled by a later program of the same node
            checks.append(NodeCheck(index, label(node), node.op_type, fused, node.output[0], None, None, None,
                                    "an intermediate program of this node: its last program is compared"))
            continue
        if holder.get(label(node), index) > index:
            checks.append(NodeCheck(index, label(node), node.op_type, fused, node.output[0], None, None, None,
                                    f"the rest of this node is fused into program {holder[label(node)]} (which "
                                    f"ends at a later node): not comparable here"))
            continue
        ref = reference[node.output[0]]
        got = device[name]
        group = side[name]
        if got.size != ref.size and len(group) > 1:  # several nodes' values side by side (sibling linears)
            parts = [reference[n.output[0]] for n in group]
            if all(p.shape[:-1] == ref.shape[:-1] for p in parts) and sum(p.shape[-1] for p in parts) * ref.size \
                    == got.size * ref.shape[-1]:
                ref = np.concatenate(parts, axis=-1)
        if got.size != ref.size and got.ndim == 2 and len(ref.shape) >= 2:
            channels = ref.shape[1] if spatial and len(ref.shape) >= 3 else ref.shape[-1]
            if channels < got.shape[1] <= -(-channels // 32) * 32 and got.shape[0] * channels == ref.size:
                got = got[:, :channels]  # widened to whole tiles of channels (fuse's WidenedLinear): zeros after
        if got.size != ref.size:
            checks.append(NodeCheck(index, label(node), node.op_type, fused, node.output[0], None, None, None,
                                    f"device value {list(got.shape)} vs ONNX {list(ref.shape)}: not comparable"))
            continue
        result = compare(node.output[0], in_onnx_layout(got, ref.shape, spatial).astype(ref.dtype, copy=False), ref,
                         pcc_threshold=pcc_threshold, rel_l2_threshold=rel_l2_threshold)
        checks.append(NodeCheck(index, label(node), node.op_type, fused, node.output[0],
                                _finite(result.pcc), _finite(result.rel_l2_err), result.passed))
    return checks


def sinks(fused: Sequence[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """The nodes of a program whose values no other node of it reads, in program order: one for a chain, several
    for products computed side by side (the grid pass's sibling linears write their values as one tensor's column
    blocks, in this order)."""
    read = {name for node in fused for name in node.input}
    return [node for node in fused if node.output[0] not in read]


SPATIAL_OPS = frozenset({"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool",
                         "GlobalMaxPool", "GlobalLpPool", "ConvInteger", "QLinearConv"})


def in_onnx_layout(value: np.ndarray, shape: tuple[int, ...], spatial: bool = True) -> np.ndarray:
    """A device value in the node's ONNX shape. Convolutional activations live channels-last on the device:
    in a model with convolutions or pools (`spatial`), a [N*H*W, C] value of an [N, C, H, W] node (any number of
    spatial dims) is moved back to NCHW; any other value is reshaped (a transformer's [S, N] product of a
    [1, S, N] node with S == N too)."""
    if spatial and len(shape) >= 3 and value.ndim == 2 and \
            value.shape == (shape[0] * int(np.prod(shape[2:])), shape[1]):
        channels_last = value.reshape(shape[0], *shape[2:], shape[1])
        return np.moveaxis(channels_last, -1, 1)
    return value.reshape(shape)


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def first_failure(checks: Sequence[NodeCheck]) -> NodeCheck | None:
    return next((c for c in checks if c.passed is False), None)


def format_per_op(checks: Sequence[NodeCheck]) -> str:
    rows = [("#", "node", "op", "fused", "pcc", "rel_l2", "result")]
    for c in checks:
        result = "n/a" if c.passed is None else ("PASS" if c.passed else "FAIL")
        rows.append((str(c.index), c.node, c.op_type, str(len(c.fused)),
                     "-" if c.pcc is None else f"{c.pcc:.6f}",
                     "-" if c.rel_l2_err is None else f"{c.rel_l2_err:.3e}", result))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    failed = first_failure(checks)
    lines.append(f"first node below the threshold: {failed.node} ({failed.op_type}, program {failed.index})"
                 if failed else f"all {sum(c.passed is True for c in checks)} compared programs pass")
    return "\n".join(lines)
