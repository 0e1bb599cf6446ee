"""The cliff sweep's cases and judge (issue 15 item 6), shared by tests/e2e/test_cliff_sweep.py and
benchmarks/cliff_sweep.py.

Three hypothesis strategies draw ONNX models built with onnx.helper:

- `window_cases`: Conv, ConvTranspose, MaxPool and AveragePool, 1-D, 2-D and 3-D, kernels of 1 to 32 per axis
  (stride = kernel patches among them), strides, dilations, pads, groups from 1 to depthwise, 1 to 2048
  channels, odd spatial sizes;
- `row_cases`: Softmax, LogSoftmax, LayerNormalization, an RMS norm (Pow, ReduceMean, Add, Sqrt, Div) and
  ReduceSum / ReduceMean / ReduceMax along the last axis, rows of 1 to 262,144 elements (few rows when they are
  long), and now and then a tensor far larger than the card's DRAM;
- `movement_cases`: chains of Reshape, Transpose, Slice, Concat, Split, Pad, Resize (nearest), DepthToSpace,
  SpaceToDepth and Gather on odd shapes of rank 1 to 5.

`judge` compiles a case with ttc and either runs it on the emulator (the native core) and holds it to the golden
rule against onnxruntime with no host op, or accepts a refusal as too big for the card only when a lower bound
computed here, from the shapes alone and the card's capacities (not from ttc's planner), shows it cannot fit:
the weights plus the input and the output exceed DRAM, or one unit that no plan can split exceeds L1. Anything
else (another error, a golden mismatch, a host op, a refusal of a case that fits by the bound, a compile of a
case that cannot) is a failure. It also reads which of the new paths the compiled module took: the K split of
a convolution window, row chunks of softmax / layer norm and segmented sums of reductions, and the kind of
gather a data movement became (tile, row or element).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field

import ml_dtypes
import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import ttc
from ttc.golden import compare, run_onnxruntime
from ttc.ir.diagnostics import InternalCompilerError, UserError
from ttc.ir.dialects import ttkernel

OPSET = 19

# The e150's capacities, from docs/grayskull.md (soc descriptor): 8 DRAM channels of 1 GiB, 1 MiB of L1 per
# core of which the firmware keeps the bottom 0x2A580 bytes.
DRAM_BYTES = 8 * (1 << 30)
L1_FREE_BYTES = (1 << 20) - 0x2A580
TILE = 32
BF16_BYTES = 2

# Messages of a refusal as too big for the card (DRAM or L1); any other UserError is a failure.
TOO_BIG = re.compile(r"does not fit|is full|has no room|no blocking of|more than the card's")


@dataclass
class Case:
    """One drawn model: what it is (`family`, `text`), the model, its input's shape, how to make its feed."""

    family: str  # "window", "row", "movement"
    text: str
    model: onnx.ModelProto
    shape: tuple[int, ...]
    seed: int
    scale: float = 1.0
    row_means: bool = False  # each row of the feed gets a mean of 1 to 2, either sign (see `row_cases`)
    bf16_input: bool = False  # feed bf16-representable values (movement: the result must then be exact)
    exact: bool = False
    depthwise_planes: int = 0  # 2-D depthwise convolutions the case lowers to (for the K-split count)

    def feeds(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        x = rng.standard_normal(self.shape).astype(np.float32) * self.scale
        if self.row_means:
            rows = self.shape[:-1]
            x += (rng.uniform(1, 2, rows) * rng.choice([-1, 1], rows)).astype(np.float32)[..., None]
        if self.bf16_input:
            x = x.astype(ml_dtypes.bfloat16).astype(np.float32)
        return {"x": x}


@dataclass
class Verdict:
    outcome: str  # "passed", "refused", or "failed"
    paths: Counter = field(default_factory=Counter)
    detail: str = ""


# ---------------------------------------------------------------------------------------------------------------
# The lower bound of a case's need, from shapes and the card's capacities only.


def tiled_bytes(shape: tuple[int, ...] | list[int]) -> int:
    """bf16 bytes of a tensor in tiles (the last two dims padded to 32): how the card holds an activation."""
    dims = [int(d) for d in shape] or [1]
    rows = dims[-2] if len(dims) >= 2 else 1
    return math.prod(dims[:-2]) * math.ceil(rows / TILE) * math.ceil(dims[-1] / TILE) * TILE * TILE * BF16_BYTES


def value_shape(model: onnx.ModelProto, name: str) -> list[int]:
    for info in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        if info.name == name:
            return [d.dim_value for d in info.type.tensor_type.shape.dim]
    raise KeyError(name)


def dram_lower_bound(model: onnx.ModelProto) -> int:
    """The weights (bf16, unpadded) plus the smallest graph input and the smallest graph output (tiled)."""
    weights = sum(math.prod(t.dims) * BF16_BYTES for t in model.graph.initializer if t.data_type == TensorProto.FLOAT)
    inputs = min(tiled_bytes(value_shape(model, i.name)) for i in model.graph.input)
    outputs = min(tiled_bytes(value_shape(model, o.name)) for o in model.graph.output)
    return weights + inputs + outputs


def l1_lower_bound(model: onnx.ModelProto) -> int:
    """The largest unit no plan can split: one tile of each operand and of the result of a node (every op ttc
    runs on the device streams tiles; a row, a window, a reduction goes by tiles or chunks of them)."""
    return max(((len(node.input) + len(node.output)) * TILE * TILE * BF16_BYTES for node in model.graph.node),
               default=0)


def cannot_fit(model: onnx.ModelProto) -> bool:
    return dram_lower_bound(model) > DRAM_BYTES or l1_lower_bound(model) > L1_FREE_BYTES


# ---------------------------------------------------------------------------------------------------------------
# Which new paths the compiled module took.

K_CHUNK = re.compile(r"\.(w|sum)\.k([0-9]+)(\.[0-9]+)?$")


def programs(compiled) -> list:
    return [op for op in compiled.module.walk() if op.name == "ttmetal.enqueue_program"]


# The row ops' operand counts without a row segment (more: the column-blocked plan of a row-major device op).
COLUMN_BLOCKED_OPS = {ttkernel.NOC_WRITE_ROWS.name: 3, ttkernel.NOC_READ_ROWS_INDEXED.name: 3,
                      ttkernel.NOC_READ_PAGES.name: 2}


def path_counts(case: Case, compiled) -> Counter:
    found: Counter = Counter()
    names = list(compiled.module.weights)
    if case.family == "window":
        # Every K chunk past the first has its own weight rows (`.w.k1`, `.sum.k1`, ...); a depthwise split
        # has one diagonal weight per chunk of positions, beyond one per 2-D plane.
        splits = sum(1 for n in names if (m := K_CHUNK.search(n)) and m[2] != "0")
        diagonals = sum(1 for n in names if re.search(r"\.w_diagonal(\.[0-9]+)?$", n))
        splits += max(0, diagonals - case.depthwise_planes) if case.depthwise_planes else 0
        if splits:
            found["k_split"] += 1
            found["k_split_chunks"] += splits
    from ttc.passes.ops.geometry import CB_IN0, CB_STAT

    for program in programs(compiled):
        kind = program.attributes["kind"]
        cbs = {cb.index: cb for cb in program.attributes["cbs"]}
        if kind in ("softmax", "layer_norm") and case.family == "row":
            width = case.shape[-1]
            chunks = math.ceil(width / TILE) // cbs[CB_IN0].pages
            if chunks >= 2:
                found["row_chunked"] += 1
                found["row_chunks"] = max(found["row_chunks"], chunks)
        if kind == "reduce" and CB_STAT in cbs:
            found["segmented_sum"] += 1
        if kind in ("untilize", "embedding", "tilize") and any(
                op.name in COLUMN_BLOCKED_OPS and len(op.operands) > COLUMN_BLOCKED_OPS[op.name] for op in program.walk()):
            found["column_blocked"] += 1  # rows too wide for L1, moved in column blocks
    if case.family == "movement":
        if any(n.endswith(".element_index") for n in names):
            found["gather_element"] += 1
        elif any(n.endswith(".row_index") for n in names):
            found["gather_row"] += 1
        elif any(program.attributes["kind"] == "data_movement" for program in programs(compiled)):
            found["gather_tile"] += 1
        else:
            found["gather_folded"] += 1  # no gather program: a view, or read by the elementwise op
    return found


# ---------------------------------------------------------------------------------------------------------------
# The judge.


def judge(case: Case) -> Verdict:
    """Compile, then run and compare, or check the refusal; never raises for a failure (the verdict says it)."""
    impossible = cannot_fit(case.model)
    try:
        compiled = ttc.compile(case.model)
    except InternalCompilerError as exc:
        return Verdict("failed", detail=f"internal compiler error: {exc}")
    except UserError as exc:
        message = str(exc)
        if not TOO_BIG.search(message):
            return Verdict("failed", detail=f"refused, not as too big: {message}")
        if not impossible:
            return Verdict("failed", detail=f"refused as too big, but the lower bound fits "
                                            f"(DRAM {dram_lower_bound(case.model)} B, L1 unit "
                                            f"{l1_lower_bound(case.model)} B): {message}")
        return Verdict("refused", detail=message.splitlines()[0])
    except Exception as exc:
        return Verdict("failed", detail=f"{type(exc).__name__}: {exc}")
    if impossible:
        return Verdict("failed", detail=f"compiled, but its lower bound is {dram_lower_bound(case.model)} B of DRAM")
    paths = path_counts(case, compiled)
    if compiled.manifest["host_ops"] != 0:
        return Verdict("failed", paths, f"{compiled.manifest['host_ops']} host ops")
    feeds = case.feeds()
    try:
        got = compiled.run(feeds)["y"]
    except Exception as exc:
        return Verdict("failed", paths, f"run: {type(exc).__name__}: {exc}")
    expected = run_onnxruntime(case.model, feeds)["y"]
    result = compare("y", got, expected)
    if not result.passed:
        return Verdict("failed", paths, f"golden: pcc {result.pcc:.5f}, rel L2 {result.rel_l2_err:.4f}, "
                                        f"max abs {result.max_abs_err:.4g}")
    if case.exact and not np.array_equal(got, expected):
        return Verdict("failed", paths, f"a movement changed values: max abs {result.max_abs_err:.4g}")
    return Verdict("passed", paths)


class Tally:
    """Counts of a sweep by outcome and by path, per family."""

    def __init__(self) -> None:
        self.outcomes: Counter = Counter()
        self.paths: Counter = Counter()
        self.failures: list[str] = []

    def add(self, case: Case, verdict: Verdict) -> None:
        self.outcomes[(case.family, verdict.outcome)] += 1
        for path, count in verdict.paths.items():
            self.paths[(case.family, path)] = (max(self.paths[(case.family, path)], count) if path == "row_chunks"
                                               else self.paths[(case.family, path)] + count)
        if verdict.outcome == "failed":
            self.failures.append(f"{case.text}: {verdict.detail}")

    def table(self) -> str:
        lines = [f"{'family':<10} {'outcome':<10} {'cases':>6}"]
        lines += [f"{f:<10} {o:<10} {n:>6}" for (f, o), n in sorted(self.outcomes.items())]
        lines.append(f"{'family':<10} {'path':<16} {'count':>6}  (row_chunks: the most chunks of one row)")
        lines += [f"{f:<10} {p:<16} {n:>6}" for (f, p), n in sorted(self.paths.items())]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Model building.


def model_of(nodes: list[onnx.NodeProto], shape: tuple[int, ...], initializers: list[onnx.TensorProto]
             ) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "sweep", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=9)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def ints(name: str, values: list[int] | np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, np.int64), name)


def log_int(low: int, high: int) -> st.SearchStrategy[int]:
    """An integer in [low, high], about uniform in its logarithm (so that 1..2048 reaches both ends)."""
    if high <= low:
        return st.just(low)
    return st.floats(math.log(low), math.log(high + 1) - 1e-9).map(lambda v: min(high, max(low, int(math.exp(v)))))


@dataclass(frozen=True)
class Budget:
    """Sizes a sweep may draw (the default run keeps the emulator's work small)."""

    weights: int  # elements of a convolution weight
    window_work: int  # output pixels x kernel positions x input channels (the im2col operand)
    window_macs: int  # that times the output channels per group
    pixels: int  # elements of a window op's input
    row_elements: int  # elements of a row op's input (a 262,144 row is always allowed, alone)
    movement_elements: int
    huge_every: int  # one row case in about this many is drawn far larger than DRAM (compiled only)


DEFAULT = Budget(weights=600_000, window_work=600_000, window_macs=60_000_000, pixels=200_000,
                 row_elements=300_000, movement_elements=12_000, huge_every=8)
LONG = Budget(weights=4_000_000, window_work=4_000_000, window_macs=600_000_000, pixels=1_500_000,
              row_elements=1_100_000, movement_elements=200_000, huge_every=16)


# ---------------------------------------------------------------------------------------------------------------
# (a) convolution windows


@st.composite
def window_cases(draw, budget: Budget = DEFAULT) -> Case:
    op = draw(st.sampled_from(["Conv", "Conv", "Conv", "ConvTranspose", "MaxPool", "AveragePool"]))
    dims = draw(st.sampled_from([1, 2, 2, 2, 3]))
    style = draw(st.sampled_from(["patch", "wide", "small"]))
    kernel, strides, dilations = [], [], []
    for axis in range(dims):
        top = 32 if dims < 3 or axis > 0 else 4  # a 3-D kernel: few depth taps
        k = draw(st.integers(1, min(top, 7))) if style == "small" else draw(st.integers(1, top))
        if style == "patch":
            s, d = k, 1
        else:
            s = draw(st.integers(1, max(1, min(k, 4))))
            d = draw(st.sampled_from([1, 1, 1, 2, 3])) if op in ("Conv", "MaxPool", "ConvTranspose") else 1
        kernel.append(k)
        strides.append(s)
        dilations.append(d)
    pads = [0] * (2 * dims)
    if style != "patch" and draw(st.booleans()):
        for axis in range(dims):
            limit = kernel[axis] - 1 if op in ("MaxPool", "AveragePool") else (kernel[axis] - 1) * dilations[axis]
            pads[axis] = draw(st.integers(0, limit))
            pads[axis + dims] = draw(st.integers(0, limit))
    if op == "ConvTranspose":
        # the zero-stuffed input grows with the stride: sizes stay small
        sizes = [draw(st.integers(0, 10)) * 2 + 1 for _ in range(dims)]
    else:
        sizes = []
        for axis in range(dims):
            span = (kernel[axis] - 1) * dilations[axis] + 1 - pads[axis] - pads[axis + dims]
            low = max(1, span)
            top = {1: 301, 2: 61, 3: 13}[dims]
            size = draw(st.integers(low, max(low, top)))
            sizes.append(size | 1)  # odd
    sizes = [max(s, 1) for s in sizes]
    batch = draw(st.sampled_from([1, 1, 1, 2]))

    if op == "ConvTranspose":
        out = [(sizes[a] - 1) * strides[a] - pads[a] - pads[a + dims] + dilations[a] * (kernel[a] - 1) + 1
               for a in range(dims)]
    else:
        out = [(sizes[a] + pads[a] + pads[a + dims] - dilations[a] * (kernel[a] - 1) - 1) // strides[a] + 1
               for a in range(dims)]
    if min(out) < 1:
        pads = [0] * (2 * dims)
        return draw(window_cases(budget))  # redraw: an empty output (a rare corner of the draw)
    positions = math.prod(kernel)
    out_pixels = batch * math.prod(out)
    if op == "ConvTranspose" and positions * out_pixels > budget.window_work:
        return draw(window_cases(budget))  # the zero-stuffed lookup is slow to build: keep it in budget
    in_pixels = batch * math.prod(sizes)

    # channels within the budget: the im2col operand is out_pixels x positions x C
    c_top = max(1, min(2048, budget.window_work // max(1, out_pixels * positions), budget.pixels // in_pixels))
    c = draw(log_int(1, c_top))
    group_kind = draw(st.sampled_from(["one", "one", "depthwise", "some"])) if op in ("Conv", "ConvTranspose") \
        else "one"
    groups = 1
    if group_kind == "depthwise":
        groups = c
    elif group_kind == "some":
        groups = draw(st.sampled_from([g for g in range(1, c + 1) if c % g == 0]))
    per_group_in = c // groups
    oc_top = max(1, min(2048 // groups, budget.weights // max(1, per_group_in * positions),
                        budget.window_macs // max(1, out_pixels * positions * per_group_in)))
    oc_per_group = draw(log_int(1, oc_top)) if group_kind != "depthwise" else draw(st.sampled_from([1, 1, 2]))
    oc = oc_per_group * groups
    shape = (batch, c, *sizes)
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed + 1)
    attrs: dict = {"kernel_shape": kernel, "strides": strides, "pads": pads}
    inits = []
    text = (f"{op} {dims}-D x{list(shape)} kernel {kernel} strides {strides} dilations {dilations} pads {pads}")
    planes = 0
    if op in ("Conv", "ConvTranspose"):
        attrs.update(dilations=dilations, group=groups)
        fan_in = per_group_in * positions
        if op == "Conv":
            w_shape = (oc, per_group_in, *kernel)
        else:
            w_shape = (c, oc_per_group, *kernel)
            # below the stride (onnxruntime's rule; the ONNX text allows up to max(stride, dilation) - 1)
            attrs["output_padding"] = [draw(st.integers(0, s - 1)) for s in strides]
        w = (rng.standard_normal(w_shape) / math.sqrt(fan_in)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, "w"))
        inputs = ["x", "w"]
        if draw(st.booleans()):
            inits.append(numpy_helper.from_array((0.1 * rng.standard_normal(oc)).astype(np.float32), "b"))
            inputs.append("b")
        text += f" group {groups} channels {c}->{oc}"
        if groups == c == oc and c > 32:
            planes = kernel[0] if dims == 3 else 1
            if op == "ConvTranspose" and dims == 3:
                planes = kernel[0]
        nodes = [helper.make_node(op, inputs, ["y"], **attrs)]
    else:
        if op == "MaxPool":
            attrs["dilations"] = dilations
        else:
            attrs["count_include_pad"] = draw(st.sampled_from([0, 1]))
        if style != "patch" and draw(st.booleans()):
            attrs["ceil_mode"] = 1
        nodes = [helper.make_node(op, ["x"], ["y"], **attrs)]
        text += f" {attrs}"
    model = model_of(nodes, shape, inits)
    return Case("window", text, model, shape, seed, depthwise_planes=planes)


# ---------------------------------------------------------------------------------------------------------------
# (b) row ops


ROW_OPS = ("Softmax", "LogSoftmax", "LayerNormalization", "RMSNorm", "ReduceSum", "ReduceMean", "ReduceMax")


def row_nodes(op: str, width: int, keepdims: int, rng: np.random.Generator
              ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    if op in ("Softmax", "LogSoftmax"):
        return [helper.make_node(op, ["x"], ["y"], axis=-1)], []
    if op == "LayerNormalization":
        gamma = numpy_helper.from_array((1 + 0.1 * rng.standard_normal(width)).astype(np.float32), "g")
        beta = numpy_helper.from_array((0.1 * rng.standard_normal(width)).astype(np.float32), "b")
        return [helper.make_node(op, ["x", "g", "b"], ["y"], axis=-1, epsilon=1e-5)], [gamma, beta]
    if op == "RMSNorm":
        consts = [numpy_helper.from_array(np.array(2.0, np.float32), "two"), ints("axes", [-1]),
                  numpy_helper.from_array(np.array(1e-6, np.float32), "eps")]
        nodes = [helper.make_node("Pow", ["x", "two"], ["sq"]),
                 helper.make_node("ReduceMean", ["sq", "axes"], ["ms"], keepdims=1),
                 helper.make_node("Add", ["ms", "eps"], ["e"]), helper.make_node("Sqrt", ["e"], ["r"]),
                 helper.make_node("Div", ["x", "r"], ["y"])]
        return nodes, consts
    return [helper.make_node(op, ["x", "axes"], ["y"], keepdims=keepdims)], [ints("axes", [-1])]


@st.composite
def row_cases(draw, budget: Budget = DEFAULT) -> Case:
    op = draw(st.sampled_from(ROW_OPS))
    width = draw(st.one_of(log_int(1, 262144), st.sampled_from([262144, 131071, 65537, 6625, 32769])))
    huge = draw(st.integers(0, budget.huge_every - 1)) == 0
    lead_rank = draw(st.integers(0, 2))
    if huge:
        # far past DRAM: input and output alone are more than 1.25 x 8 GiB; compiled, never run
        rows = math.ceil(1.25 * DRAM_BYTES / BF16_BYTES / (math.ceil(width / TILE) * TILE) / TILE) * TILE
        rows = max(rows, 1)
    else:
        rows_top = max(1, budget.row_elements // width)
        rows = draw(log_int(1, min(rows_top, 300)))
    lead = [rows] if lead_rank <= 1 else _split_rows(rows, draw(st.integers(1, 7)))
    shape = (*lead, width) if lead_rank else (width,) if rows == 1 else (rows, width)
    keepdims = draw(st.sampled_from([0, 1]))
    seed = draw(st.integers(0, 2**16))
    nodes, consts = row_nodes(op, width, keepdims, np.random.default_rng(seed + 1))
    text = f"{op} over {list(shape)}" + (f" keepdims {keepdims}" if op.startswith("Reduce") else "") + \
        (" (huge)" if huge else "")
    # Sums (ReduceSum, ReduceMean) are fed rows of different means, 1 to 2 of either sign: the golden rule
    # judges a sum of zero-mean terms that cancels to nearly nothing (one mean of 65,537 normal values, 0.006)
    # by the cancellation, not by the device (bf16 holds partial sums to 2^-9 of their size in any order),
    # and sums of one common mean (rows alike but for noise) by a PCC of noise.
    sums = op in ("ReduceSum", "ReduceMean")
    return Case("row", text, model_of(nodes, tuple(shape), consts), tuple(shape), seed, scale=3.0,
                row_means=sums)


def _split_rows(rows: int, first: int) -> list[int]:
    """rows as two leading dims [a, rows / a] with a the largest divisor of rows not above `first`."""
    a = max(d for d in range(1, first + 1) if rows % d == 0)
    return [a, rows // a]


# ---------------------------------------------------------------------------------------------------------------
# (c) data movement


class Chain:
    """A Relu (so that the movement reads a device tensor) and the movement nodes after it."""

    def __init__(self, shape: list[int]) -> None:
        self.input_shape = tuple(shape)
        self.shape = list(shape)
        self.nodes = [helper.make_node("Relu", ["x"], ["v0"])]
        self.initializers: list[onnx.TensorProto] = []
        self.value = "v0"
        self.steps: list[str] = []

    def const(self, values, dtype=np.int64) -> str:
        name = f"c{len(self.initializers)}"
        self.initializers.append(numpy_helper.from_array(np.asarray(values, dtype), name))
        return name

    def add(self, op: str, inputs: list[str], shape: list[int], outputs: int = 1, pick: int = 0,
            **attrs) -> None:
        result = f"v{len(self.nodes)}"
        names = [f"{result}_{i}" for i in range(outputs)] if outputs > 1 else [result]
        self.nodes.append(helper.make_node(op, [self.value, *inputs], names, **attrs))
        self.value, self.shape = names[pick], shape
        self.steps.append(f"{op}{attrs or ''}->{shape}")


MOVES = ("Reshape", "Transpose", "Slice", "Concat", "Split", "Pad", "Resize", "DepthToSpace", "SpaceToDepth",
         "Gather")


def divisors_of(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def move(draw, chain: Chain, kind: str, budget: Budget) -> None:
    """Append one movement of `kind` when it applies to the current shape (and keeps within the budget)."""
    shape, rank = chain.shape, len(chain.shape)
    size = math.prod(shape)
    if kind == "Transpose" and rank >= 2:
        perm = draw(st.permutations(list(range(rank))))
        chain.add("Transpose", [], [shape[p] for p in perm], perm=list(perm))
    elif kind == "Reshape":
        new_rank = draw(st.integers(1, 5))
        new, left = [], size
        for _ in range(new_rank - 1):
            d = draw(st.sampled_from(divisors_of(left)))
            new.append(d)
            left //= d
        new.append(left)
        new = draw(st.permutations(new))
        target = list(new)
        if draw(st.booleans()):
            target[draw(st.integers(0, len(new) - 1))] = -1
        chain.add("Reshape", [chain.const(target)], list(new))
    elif kind == "Slice":
        axis = draw(st.integers(0, rank - 1))
        n = shape[axis]
        step = draw(st.sampled_from([1, 1, 1, 2, 3, -1]))
        if step > 0:
            begin = draw(st.integers(0, n - 1))
            end = draw(st.integers(begin + 1, n))
            length = len(range(begin, end, step))
        else:
            begin = draw(st.integers(0, n - 1))
            end = draw(st.integers(-1, begin - 1)) if begin > 0 else -1
            length = len(range(begin, end if end >= 0 else -1, step))
            end = end if end >= 0 else -n - 1  # ONNX: an end before the start of the axis
        new = list(shape)
        new[axis] = length
        chain.add("Slice", [chain.const([begin]), chain.const([end]), chain.const([axis]), chain.const([step])], new)
    elif kind == "Split" and max(shape) >= 2:
        axis = draw(st.sampled_from([a for a in range(rank) if shape[a] >= 2]))
        cut = draw(st.integers(1, shape[axis] - 1))
        pick = draw(st.integers(0, 1))
        new = list(shape)
        new[axis] = cut if pick == 0 else shape[axis] - cut
        chain.add("Split", [chain.const([cut, shape[axis] - cut])], new, outputs=2, pick=pick, axis=axis)
    elif kind == "Pad":
        mode = draw(st.sampled_from(["constant", "constant", "edge", "reflect"]))
        pads = []
        for _half in range(2):
            for d in range(rank):
                top = 3 if mode != "reflect" else min(3, shape[d] - 1)
                pads.append(draw(st.integers(0, max(0, top))) if draw(st.booleans()) else 0)
        new = [n + pads[d] + pads[d + rank] for d, n in enumerate(shape)]
        if math.prod(new) <= budget.movement_elements:
            chain.add("Pad", [chain.const(pads)], new, mode=mode)
    elif kind == "Resize" and rank >= 3:
        scales = [1.0, 1.0] + [float(draw(st.sampled_from([1, 2, 3]))) for _ in range(rank - 2)]
        new = [int(n * s) for n, s in zip(shape, scales, strict=True)]
        if math.prod(new) <= budget.movement_elements:
            chain.add("Resize", ["", chain.const(scales, np.float32)], new, mode="nearest")
    elif kind == "DepthToSpace" and rank == 4:
        block = draw(st.sampled_from([b for b in (2, 3) if shape[1] % (b * b) == 0] or [0]))
        if block:
            mode = draw(st.sampled_from(["DCR", "CRD"]))
            chain.add("DepthToSpace", [], [shape[0], shape[1] // block**2, block * shape[2], block * shape[3]],
                      blocksize=block, mode=mode)
    elif kind == "SpaceToDepth" and rank == 4:
        block = draw(st.sampled_from([b for b in (2, 3) if shape[2] % b == 0 and shape[3] % b == 0] or [0]))
        if block:
            chain.add("SpaceToDepth", [], [shape[0], shape[1] * block**2, shape[2] // block, shape[3] // block],
                      blocksize=block)
    elif kind == "Gather":
        axis = draw(st.integers(0, rank - 1))
        n = shape[axis]
        count = draw(st.integers(1, 6))
        indices = draw(st.lists(st.integers(-n, n - 1), min_size=count, max_size=count))
        scalar = count == 1 and rank >= 2 and draw(st.booleans())
        new = list(shape)
        if scalar:
            del new[axis]
            chain.add("Gather", [chain.const(indices[0])], new, axis=axis)
        else:
            new[axis] = count
            chain.add("Gather", [chain.const(indices)], new, axis=axis)
    elif kind == "Concat":
        axis = draw(st.integers(0, rank - 1))
        new = list(shape)
        new[axis] *= 2
        if math.prod(new) <= budget.movement_elements:
            chain.add("Concat", [chain.value], new, axis=axis)


@st.composite
def movement_cases(draw, budget: Budget = DEFAULT) -> Case:
    rank = draw(st.integers(1, 5))
    shape: list[int] = []
    for _ in range(rank):
        top = max(1, min(67, budget.movement_elements // max(1, math.prod(shape))))
        shape.append(draw(st.integers(1, top)) | 1 if top > 1 else 1)
    chain = Chain(shape)
    for _ in range(draw(st.integers(1, 4))):
        move(draw, chain, draw(st.sampled_from(MOVES)), budget)
    if not chain.steps:
        move(draw, chain, "Reshape", budget)
    nodes = [*chain.nodes, helper.make_node("Identity", [chain.value], ["y"])]
    seed = draw(st.integers(0, 2**16))
    model = model_of(nodes, tuple(shape), chain.initializers)
    text = f"movement from {shape}: " + ", ".join(chain.steps)
    return Case("movement", text, model, tuple(shape), seed, bf16_input=True, exact=True)


# ---------------------------------------------------------------------------------------------------------------
# The sweep driver (tests/e2e/test_cliff_sweep.py and benchmarks/cliff_sweep.py)

SETTINGS = {"derandomize": True, "database": None, "deadline": None, "print_blob": True,
            "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]}

# Examples per family in the default suite (about 20 s each on the 2-core machine) and in the long sweep.
DEFAULT_EXAMPLES = {"window": 100, "row": 200, "movement": 150}
LONG_EXAMPLES = {"window": 300, "row": 200, "movement": 400}

STRATEGIES = {"window": window_cases, "row": row_cases, "movement": movement_cases}


def sweep(family: str, examples: int, budget: Budget, tally: Tally, fail_fast: bool = True) -> None:
    """Run `examples` drawn cases of `family`, each judged once (hypothesis may draw the same model twice);
    with `fail_fast` a failure fails the hypothesis example (and is shrunk to a small one), else the tally
    collects every failure."""
    seen: set[str] = set()

    @settings(max_examples=examples, **SETTINGS)
    @given(case=STRATEGIES[family](budget))
    def check(case: Case) -> None:
        if case.text in seen:
            return
        seen.add(case.text)
        verdict = judge(case)
        tally.add(case, verdict)
        assert not fail_fast or verdict.outcome != "failed", f"{case.text}: {verdict.detail}"

    check()


def run_family(family: str, examples: int, budget: Budget, fail_fast: bool = True) -> Tally:
    tally = Tally()
    sweep(family, examples, budget, tally, fail_fast)
    print(f"\n{family} sweep, {examples} examples\n{tally.table()}")
    return tally
