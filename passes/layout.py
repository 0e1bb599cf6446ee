"""`layout`: give every device tensor its data format and memory space.

- Data format (the element type): bf16 on the device by default. With `dtype=bfp8_b`, the
  weight constants used only as the second operand of matmuls (`ttir.linear` / `ttir.matmul`) are
  stored as bfp8_b; activations, biases and norm parameters stay bf16. Host tensors keep their
  types; the `ttir.to_layout` ops at the edges convert. With `activations=bfp8_b`, so are the computed
  values read only as matmul operands (`matmul_activations`).
- Undiluted noise (`matmul-fidelity=F`, the published preset): inside the branch of a post-norm residual block
  (`post_norm_branches`), bfp8_b, from `dtype` or `activations`, only for a matmul operand whose bits the
  matmul's math fidelity drops anyway. A bfp8_b value holds 6 mantissa bits after the hidden bit for its
  block's largest value (less for the others, rounded); the multiplier reads 6 of in0 (operand a) at LoFi and
  HiFi2, 4 of in1 (operand b) at LoFi, and all 7 of bf16 otherwise (`FIDELITY_MANTISSA_BITS`,
  docs/numerics.md). So at HiFi2 such a branch's a operands become bfp8_b and its b operands (weights,
  attention's K and V) stay bf16; at LoFi both may be bfp8_b. A matmul with its own fidelity (exact data
  movement pins HiFi4) counts with that one. Outside those branches the residual stream dilutes the noise
  and every operand may be bfp8_b.
- Bounded f16 (`bounded-f16=true`, opt-in: `--f16-where-proven`; a mixed-precision choice): a computed value whose program
  provably stays below F16_SAFE in magnitude at every step (`passes/ranges.py`: its Dst operands, a fused
  body's intermediates, a matmul's partial sums, a softmax's x - max) is Float16, which has 3 more mantissa
  bits than bf16 where most of a network's values lie. Not a norm's or a reduction's result, nor a value a
  reduction reads: their small squares would meet Float16's subnormal range, where it holds fewer bits than
  bf16. Graph inputs and what is computed from them before a normalisation are unbounded and stay bf16. A
  Float16 overflow would still be a device fault, never a silent inf.
- Precise softmax (`precise-softmax=true`, opt-in): a
  softmax whose probabilities go back to the host (a classifier's output) turns absolute errors of its
  logits into relative errors of its probabilities, and in a bf16 Dst a matmul's accumulation adds about
  four times the error of storing its result in bf16. With the option, such a softmax's result and its
  logits (back through data movement to the op computing them, and no further) are Float16 (f16): those
  programs hold Float16 in Dst (10 mantissa bits, range +-65504) and accumulate in it. A data-movement
  program or view copies tiles, so its inputs and result share one format; where one of them cannot be
  f16, none is. A value past 65504 is a device fault naming the op, never a silent inf.
- Memory space: DRAM interleaved by default. With `l1-intermediates=true`, an intermediate (a value a
  device program produces and only device programs read: not a weight, an input or a graph output)
  moves to L1 interleaved when, at every op during its lifetime, that op's smallest circular-buffer
  footprint (`footprint`, over all grids) still fits below the lowest L1 buffer then live, with the
  buffers placed as allocate will place them (`l1_timeline`: top down, first fit, so a freed buffer's
  hole counts against the room). Values are considered in program order, first come
  first served; one whose per-core share exceeds 40 % of the budget (a large convolutional
  activation or im2col matrix) stays in DRAM and is streamed, since the top-down L1 heap would otherwise
  fragment around it. The grid pass later picks blockings within what is left.

The values of a transpose/reshape chain lowered as one gather (`footprint.is_folded`) never exist as
buffers and stay as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ttc.ir import target
from ttc.ir.builder import Builder
from ttc.ir.core import Block, Function, Module, Operation, Region, Value
from ttc.ir.diagnostics import UserError
from ttc.ir.dialects import ttir
from ttc.ir.dialects.tt import DeviceAttr, LayoutAttr
from ttc.ir.dialects.ttmetal import STATE_ATTR
from ttc.ir.types import ScalarType, TensorType
from ttc.passes.grid import min_cb_bytes
from ttc.passes.l1_timeline import L1Timeline
from ttc.passes.liveness import LiveRange, live_ranges, readers, sync_body_placement
from ttc.passes.manager import Pass, register_pass
from ttc.passes.ops.gather import MOVEMENT_OPS, is_folded, is_view, movement_chain
from ttc.passes.ops.geometry import bank_share, is_row_major, layout, module_device, tensor, tile_shape
from ttc.passes.ops.interface import FIDELITY
from ttc.passes.ops.matmul import MATMUL_OPS, matmul_shape
from ttc.passes.ops.registry import op_kind, program_operands
from ttc.passes.ranges import value_ranges
from ttc.passes.schedule import hoist_side_branches

DTYPES = ("bf16", "bfp8_b")
NORMALIZATIONS = frozenset({ttir.SOFTMAX.name, ttir.LAYER_NORM.name})
MAX_L1_SHARE = 0.4  # an intermediate taking more of a core's free L1 stays in DRAM


def is_device_float(t: object) -> bool:
    return isinstance(t, TensorType) and isinstance(t.encoding, LayoutAttr) and t.element_type.is_float


def with_format(value: Value, element_type: ScalarType) -> None:
    if is_device_float(value.type):
        assert isinstance(value.type, TensorType)
        value.type = value.type.with_element_type(element_type)


# The mantissa bits after the hidden bit that the matrix unit reads of a matmul's (in0, in1) = (a, b) operands
# at each math fidelity (docs/numerics.md: in0 splits 1+6 | 1, in1 1+4 | 3; HiFi2 = hi(in0) x in1), and the
# bits a block float holds for its block's largest value.
FIDELITY_MANTISSA_BITS = {"lofi": (6, 4), "hifi2": (6, 7), "hifi3": (7, 7), "hifi4": (7, 7)}
BLOCK_FLOAT_MANTISSA_BITS = {"bfp8_b": 6}

# (matmul, operand index) -> whether the operand may be block float (`matmul-fidelity`); None: any operand
OperandCheck = Callable[[Operation, int], bool] | None


def block_float_operands(func: Function, fmt: str, fidelity: str) -> OperandCheck:
    """The matmul operands `matmul-fidelity` lets be `fmt`: those of which each matmul, at its own fidelity (an
    op's FIDELITY attribute, else `fidelity`), reads no more mantissa bits than `fmt` holds; and the others
    too, outside the branches of post-norm residual blocks (`post_norm_branches`). None when `fidelity` is
    empty (any operand)."""
    if not fidelity:
        return None
    if fidelity not in FIDELITY_MANTISSA_BITS:
        raise UserError(f"layout: unknown matmul fidelity '{fidelity}' "
                        f"(choose from {', '.join(FIDELITY_MANTISSA_BITS)})")
    undiluted = post_norm_branches(func)

    def allowed(user: Operation, index: int) -> bool:
        return user not in undiluted or fidelity_reads_no_more(fmt, str(user.attributes.get(FIDELITY, fidelity)),
                                                               index)

    return allowed


def _through_movement(value: Value) -> Value:
    """The value data movement (reshapes, transposes, ...) copied `value` from."""
    while isinstance(value.owner, Operation) and value.owner.name in MOVEMENT_OPS and value.owner.operands:
        value = value.owner.operands[0]
    return value


def _is_norm_result(value: Value) -> bool:
    producer = _through_movement(value).owner
    return isinstance(producer, Operation) and producer.name == ttir.LAYER_NORM.name


def _residual_sum(total: Operation) -> tuple[Value, list[Value]] | None:
    """(x, branch values) when `total` computes x + f with x a norm's result: an add (or a fused body with one)
    of two computed values, or a linear whose fused residual (`residual = true`, its last operand) is x, the
    linear itself then being part of f."""
    if total.name == ttir.LINEAR.name and total.attributes.get("residual") and len(total.operands) > 2:
        skip = total.operands[-1]
        return (skip, list(total.operands[:-1])) if _is_norm_result(skip) else None
    if not any(inner.name == ttir.ADD.name for inner in total.walk()):
        return None
    inputs = [v for v in total.operands
              if not (isinstance(v.owner, Operation) and v.owner.name == ttir.CONSTANT.name)]
    skips = [v for v in inputs if _is_norm_result(v)]
    if len(inputs) != 2 or not skips:
        return None
    return skips[0], [v for v in inputs if v is not skips[0]]


def post_norm_branches(func: Function) -> set[Operation]:
    """The ops of the branches f of post-norm residual blocks, y = norm(x + f(x)) with x itself a norm's result
    and the sum read by the norm alone (BERT; not pre-norm blocks, x + f(norm(x)), whose sum runs on, nor plain
    residual networks): the ops computing the sum's other operand after x's norm, back to x, other norms, the
    host's inputs and constants (and a linear that adds x in its epilogue). A post-norm block scales skip and
    branch back to one size at every layer, so the branch is as large as the stream and a quantisation noise
    of its matmul operands enters the stream undiluted, layer after layer; a pre-norm or plain residual stream
    grows with the depth and dilutes it (BERT-Large s384: rel L2 0.079 with bfp8_b weights at HiFi2 against
    0.043 with bf16; ViT-base 0.032 against 0.027, ResNet-50 0.025 against 0.023, docs/numerics.md)."""
    ops = list(func.body.ops)
    position = {op: i for i, op in enumerate(ops)}
    found: set[Operation] = set()
    for norm in ops:
        if norm.name != ttir.LAYER_NORM.name or not norm.operands:
            continue
        total = norm.operands[0].owner
        if not isinstance(total, Operation) or total not in position \
                or any(user is not norm for user, _ in total.result.uses):
            continue
        split = _residual_sum(total)
        if split is None:
            continue
        skip, stack = split
        start = position[_through_movement(skip).owner]
        if total.name == ttir.LINEAR.name:
            found.add(total)
        while stack:
            producer = stack.pop().owner
            if not isinstance(producer, Operation) or producer in found or position.get(producer, -1) <= start \
                    or producer.name in (ttir.CONSTANT.name, ttir.LAYER_NORM.name, ttir.TO_LAYOUT.name):
                continue
            found.add(producer)
            stack.extend(producer.operands)
    return found


def fidelity_reads_no_more(fmt: str, fidelity: str, index: int) -> bool:
    """Whether a matmul at `fidelity` reads no more mantissa bits of its operand `index` (0: a, 1: b) than
    `fmt` holds (a format that is not a block float holds them all)."""
    read = FIDELITY_MANTISSA_BITS.get(fidelity, (7, 7))[index]
    return read <= BLOCK_FLOAT_MANTISSA_BITS.get(fmt, 7)


def is_matmul_weight(op: Operation, allowed: OperandCheck = None) -> bool:
    """A weight constant every use of which is the b operand of a matmul (and `allowed`, when given)."""
    if op.name != ttir.CONSTANT.name or not op.result.uses:
        return False
    return all(user.name in MATMUL_OPS and index == 1 and (allowed is None or allowed(user, index))
               for user, index in op.result.uses)


def assign_formats(func: Function, dtype: str, allowed: OperandCheck = None) -> None:
    """bf16 for every device float; `dtype` for matmul weights (those `allowed`, when given). A fused body
    keeps its element types: it states the math (with its f32 host scalars), the kernel's CBs hold the
    formats."""
    bf16, weight_format = ScalarType("bf16"), ScalarType(dtype)
    for op in func.body.ops:
        for result in op.results:
            with_format(result, weight_format if is_matmul_weight(op, allowed) else bf16)


def feeds_only_matmuls(value: Value, allowed: OperandCheck = None) -> bool:
    """Every reader of `value` is a matmul reading it as an operand (a or b; one `allowed`, when given),
    directly or through data movement (transposes, reshapes, slices, concats) whose results feed only such
    matmuls."""
    if not value.uses:
        return False
    for user, index in value.uses:
        if user.name in MATMUL_OPS and index in (0, 1) and (allowed is None or allowed(user, index)):
            continue
        if user.name in MOVEMENT_OPS and feeds_only_matmuls(user.result, allowed):
            continue
        return False
    return True


def matmul_activations(func: Function, allowed: OperandCheck = None) -> set[Value]:
    """The values `activations=bfp8_b` stores as bfp8_b: computed device floats in tiles (`may_be_f16`: not
    weights, not written by the host, not a device state) read only as matmul operands (`feeds_only_matmuls`;
    with `matmul-fidelity`, only as operands whose bits the fidelity drops), less every copy group not wholly
    in them. A value any other op reads (a residual add, a norm, a softmax) or the host reads keeps bf16; so
    do biases, norm parameters and every program's intermediates (`geometry.work_format`)."""
    chosen = {result for op in func.body.ops if STATE_ATTR not in op.attributes for result in op.results
              if may_be_f16(result) and feeds_only_matmuls(result, allowed)}
    return closed_under_copies(func, chosen)


def matmul_copy_gain(value: Value, users: list[Operation], fmt: str, fidelity: str, device: DeviceAttr) -> float:
    """Cycles the cost model saves when `users` read `value` as their a operand in `fmt` instead of bf16, less what
    a copy program of `value` costs, each program taken on the whole compute grid: a matmul saves where the
    unpacker bounds it (fewer operand bytes), down to the time its DRAM-resident b operand takes to read; the copy
    costs a datacopy per tile or its NoC bytes, and a launch. (An estimate before memory spaces and grids are
    chosen: it assumes the copy stays in L1, as an intermediate of a compute-bound block's size does; the grid
    pass then costs the programs as they are.)"""
    cores = device.compute_cores
    gain = 0.0
    for user in users:
        shape = matmul_shape(user)
        b = tensor(user.operands[1])
        key_fidelity = str(user.attributes.get(FIDELITY, fidelity))
        tiles = shape.batches * shape.mt * shape.kt * shape.nt
        dram = 0.0
        if layout(b).memory_space == "dram":
            tb = tile_shape(b.shape)
            b_pages = tb.batches * tb.rt * tb.ct
            dram = b_pages * target.TILE_BYTES[b.element_type.name] / device.achievable_dram_bytes_per_cycle
        per_tile = [target.compute_cycles(device, target.Counts(1, ((
            target.matmul_key(key_fidelity, a, b.element_type.name), 1),))) for a in ("bf16", fmt)]
        gain += max(tiles * per_tile[0] / cores, dram) - max(tiles * per_tile[1] / cores, dram)
    t = tile_shape(tensor(value).shape)
    per_core = t.batches * t.rt * t.ct / cores
    copy = max(per_core * target.tile_op_cycles(device, target.DATACOPY),
               per_core * (target.TILE_BYTES["bf16"] + target.TILE_BYTES[fmt]) / device.noc_bytes_per_cycle)
    return gain - copy - device.launch_cycles - device.launch_cycles_per_core * cores


def matmul_copies(func: Function, fmt: str, fidelity: str, allowed: OperandCheck, device: DeviceAttr) -> list[Value]:
    """Copies in `fmt` of computed values that matmuls read as their a operand (as `allowed`) and other ops read
    too (a post-norm block's norm result: its matmuls and its residual add), where the cost model's unpacker
    saves more than the copy costs (`matmul_copy_gain`): one identity `ttir.eltwise` right before the first such
    matmul, which those matmuls then read; the value itself stays bf16 for its other readers. The copy feeds
    only matmuls, so `matmul_activations` stores it in `fmt`: the preset's rule, applied to a new value."""
    if not fidelity:
        return []
    copies = []
    for op in list(func.body.ops):
        if STATE_ATTR in op.attributes:
            continue
        for value in op.results:
            if not may_be_f16(value) or feeds_only_matmuls(value, allowed):
                continue
            users = [user for user, index in value.uses if user.name in MATMUL_OPS and index == 0
                     and user.parent is func.body and allowed is not None and allowed(user, 0)
                     and all(i == 0 for u, i in value.uses if u is user)]
            users = list(dict.fromkeys(users))
            if not users or matmul_copy_gain(value, users, fmt, fidelity, device) <= 0:
                continue
            first = min(users, key=func.body.index_of)
            block = Block([value.type])
            Builder.at_end(block).create(ttir.YIELD.name, [block.args[0]], loc=first.loc)
            copy = Operation(ttir.ELTWISE.name, [value], [value.type], {}, loc=first.loc)
            copy.add_region(Region([block]))
            func.body.insert_before(first, copy)
            for user in users:
                user.set_operand(0, copy.result)
            copies.append(copy.result)
    return copies


def host_read_copies(value: Value) -> list[Value]:
    """The values through which `value` reaches the host, itself first: `value` when a `ttir.to_layout` reads
    it back (a graph output) or data movement carries it there (a softmax along a non-last axis comes back
    through transposes, or through untilize and row lookups), plus the tile results of that movement (their
    tiles are copies); [] when the host never reads it."""
    found: list[Value] = []
    for user, index in value.uses:
        if user.name == ttir.TO_LAYOUT.name and not is_device_float(user.result.type):
            found.append(value)
            continue
        rows = op_kind(user) == "untilize" or (user.name == ttir.EMBEDDING.name and index == 0)
        if user.name not in MOVEMENT_OPS and not rows:
            continue
        copies = host_read_copies(user.result)
        if copies:
            found += [value] if rows else [value, *copies]
    return list(dict.fromkeys(found))


def is_host_read(value: Value) -> bool:
    return bool(host_read_copies(value))


def may_be_f16(value: Value) -> bool:
    """A computed device float in tile layout (not a weight, not written by the host)."""
    producer = value.owner
    return is_device_float(value.type) and not is_row_major(value) and isinstance(producer, Operation) \
        and producer.name != ttir.CONSTANT.name and op_kind(producer) != "untilize" \
        and not (producer.name == ttir.TO_LAYOUT.name and op_kind(producer) is None)


def softmax_sources(func: Function) -> set[Value]:
    """The results of host-read softmaxes and their logits (the value each softmax reads, followed back through
    data movement to the op that computes it), those that `may_be_f16`. Never further back: the option raises the
    precision of a classifier's last step, not of the network before it."""
    found: set[Value] = set()
    for op in func.body.ops:
        copies = host_read_copies(op.result) if op.name == ttir.SOFTMAX.name else []
        if not copies:
            continue
        found.update(value for value in copies if may_be_f16(value))
        value = op.operands[0]
        while True:
            if may_be_f16(value):
                found.add(value)
            producer = value.owner
            if not isinstance(producer, Operation) or producer.name not in MOVEMENT_OPS or not producer.operands:
                break
            value = producer.operands[0]
    return found


def copy_groups(func: Function) -> list[set[Value]]:
    """Values that must share a format: each data-movement program's or view's inputs, folded chain values
    and result (its tiles are copied, never converted)."""
    groups = []
    for op in func.body.ops:
        if op.name not in MOVEMENT_OPS or is_folded(op):
            continue
        groups.append({*program_operands(op), *(link.result for link in movement_chain(op))})
    return groups


def precise_values(func: Function) -> set[Value]:
    """The values `precise-softmax` makes f16: the softmax sources, less every copy group not wholly in them."""
    return closed_under_copies(func, softmax_sources(func))


# A value is held in Float16 only when every step computing it stays below this in magnitude (Float16's
# largest value is 65504; the ranges already allow for the device's roundings, a relative 2^-8 per step).
F16_SAFE = 60000.0
# Producers whose result stays bf16 even when bounded: a norm's variance and a reduction's sums see tiny
# squares, which Float16's subnormal range (below 6.1e-5) would round coarsely.
KEEP_BF16 = frozenset({ttir.LAYER_NORM.name, ttir.REDUCE_SUM.name, ttir.REDUCE_MEAN.name, ttir.REDUCE_MAX.name})


def bounded_values(func: Function, weights: Mapping[str, Any]) -> set[Value]:
    """The values `bounded-f16` makes f16: computed device floats (`may_be_f16`) whose every computing step is
    proven below F16_SAFE in magnitude (`ranges.value_ranges`), other than norms' and reductions' results and
    the values a reduction reads (squares summed for a variance), less every copy group not wholly in them."""
    ranges, peaks = value_ranges(func, weights)
    chosen = set()
    for op in func.body.ops:
        if op.name in KEEP_BF16 or (op_kind(op) is None and op.name not in MOVEMENT_OPS):
            continue
        for result in op.results:
            if result in ranges and peaks.get(result, math.inf) <= F16_SAFE and may_be_f16(result) \
                    and not any(user.name in KEEP_BF16 for user, _ in result.uses):
                chosen.add(result)
    return closed_under_copies(func, chosen)


def closed_under_copies(func: Function, chosen: set[Value]) -> set[Value]:
    """`chosen` less every copy group (`copy_groups`) not wholly in it: copied tiles keep their format."""
    groups = copy_groups(func)
    changed = True
    while changed:
        changed = False
        for group in groups:
            if group & chosen and not group <= chosen:
                chosen -= group
                changed = True
    return chosen


def is_intermediate(live: LiveRange) -> bool:
    """Produced by a device program and read only by device programs."""
    value = live.value
    producer = value.owner
    if not isinstance(producer, Operation) or op_kind(producer) is None:
        return False
    if STATE_ATTR in producer.attributes:  # a device state (kv-cache) lives in DRAM across runs
        return False
    return all(op_kind(reader) is not None for reader in readers(value))


def cbs_fit(ops: list[Operation], device: DeviceAttr, ranges: list[LiveRange], placed: list[tuple[LiveRange, int]],
            cb_floor: dict[int, int], first: int, last: int) -> bool:
    """Whether, with the `placed` values in L1, every program from op `first` to op `last` still has room for
    its smallest CBs below the lowest live L1 buffer, as allocate will place them (`L1Timeline`; `ranges` are
    the live ranges of `ops`)."""
    timeline = L1Timeline(ops, device, ranges)
    starting: dict[int, list[tuple[LiveRange, int]]] = {}
    for live, share in placed:
        starting.setdefault(live.start, []).append((live, share))
    for i in range(last + 1):
        for live, share in starting.get(i, []):
            if not timeline.create(live.value, share):
                return False
        if i >= first and i in cb_floor:
            room = timeline.room()
            if room is None or room < cb_floor[i]:
                return False
        timeline.finish(i)
    return True


def place_in_l1(func: Function, device: DeviceAttr) -> None:
    """Move intermediates to L1 in program order while every op they live across still has room for its
    CBs below the L1 buffers (checked on the allocator's heap: holes count against it)."""
    ops = list(func.body.ops)
    cb_floor = {i: min_cb_bytes(op, device) for i, op in enumerate(ops)
                if op_kind(op) and not is_folded(op) and not is_view(op)}
    placed: list[tuple[LiveRange, int]] = []
    ranges = live_ranges(ops)
    for live in ranges:
        if not is_intermediate(live):
            continue
        share = bank_share(live.value.type, device.compute_cores)  # type: ignore[arg-type]
        if share > device.l1_free * MAX_L1_SHARE:
            continue  # a large activation streams from DRAM (and cannot fragment L1 for the ops around it)
        # values are placed in program order, so this one changes the heap from its start on only, and
        # after its end only by the hole it leaves, which no placed value created later can fall into
        if cbs_fit(ops, device, ranges, [*placed, (live, share)], cb_floor, live.start, live.end):
            placed.append((live, share))
    for live, _ in placed:
        assert isinstance(live.value.type, TensorType)
        tensor_layout = layout(live.value.type).tensor_layout  # tiles stay tiles, rows stay rows
        live.value.type = live.value.type.with_encoding(LayoutAttr(tensor_layout, "l1", "interleaved"))
    for op in ops:
        if is_view(op):  # the view shares its source's pages
            source = tensor(program_operands(op)[0])
            op.result.type = tensor(op.result).with_encoding(source.encoding)
        sync_body_placement(op)


@register_pass
@dataclass
class Layout(Pass):
    """Choose data formats (bf16, bfp8_b weights, f16 for a classifier softmax's sources) and memory spaces
    (DRAM, L1 intermediates)."""

    name = "layout"
    dtype: str = "bf16"
    activations: str = "bf16"  # bfp8_b: the activations read only as matmul operands (`matmul_activations`)
    # a math fidelity: block floats only for the matmul operands whose bits it drops (`fidelity_drops_bits`)
    matmul_fidelity: str = ""
    l1_intermediates: bool = True
    precise_softmax: bool = False
    bounded_f16: bool = False

    def run(self, module: Module) -> None:
        if self.dtype not in DTYPES:
            raise UserError(f"layout: unknown dtype '{self.dtype}' (choose from {', '.join(DTYPES)})")
        if self.activations not in DTYPES:
            raise UserError(f"layout: unknown activations format '{self.activations}' "
                            f"(choose from {', '.join(DTYPES)})")
        device = module_device(module)
        for func in module.functions:
            assign_formats(func, self.dtype, block_float_operands(func, self.dtype, self.matmul_fidelity))
            if self.activations != "bf16":
                allowed = block_float_operands(func, self.activations, self.matmul_fidelity)
                matmul_copies(func, self.activations, self.matmul_fidelity, allowed, device)
                for value in matmul_activations(func, allowed):
                    with_format(value, ScalarType(self.activations))
            if self.bounded_f16:
                for value in bounded_values(func, module.weights):
                    with_format(value, ScalarType("f16"))
            if self.precise_softmax:
                for value in precise_values(func):
                    with_format(value, ScalarType("f16"))
            if self.l1_intermediates:
                hoist_side_branches(func)  # a shrinking side branch first: its shared input dies sooner
                place_in_l1(func, device)
