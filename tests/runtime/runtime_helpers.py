"""Build small device programs as IR text for the runtime tests.

`kop("cb_push_back", cb=0, pages=1)` is one ttkernel op line, `kfor("i", 4, [...])` a loop; a kernel is
a list of such lines. `schedule_text` wraps kernels into a whole module: DRAM buffers for the named
inputs and outputs, write_buffer, one enqueue_program, read_buffer, deallocate and func.return.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from ttc.ir import parse_module, verify
from ttc.ir.core import Module
from ttc.ir.dialects.tt import E150, DeviceAttr
from ttc.runtime.executor import Executor
from ttc.runtime.formats import DataFormat
from ttc.runtime.layout import num_pages, page_size

NODE = "node"
GEN = "!ttkernel.addrgen"
_RESULTS = {"get_arg": "index", "constant": "index", "buffer_address": "index", "addi": "index",
            "muli": "index", "mini": "index", "addrgen": GEN}
_OPERANDS = {"addi": ("index", "index"), "muli": ("index", "index"), "mini": ("index", "index"), "addrgen": ("index",),
             "noc_read_tiles": (GEN, "index"), "noc_write_tiles": (GEN, "index"),
             "noc_read_pages": (GEN, "index"), "noc_read_tiles_indexed": (GEN,),
             "noc_read_rows_indexed": (GEN, "index", "index"), "noc_write_rows": (GEN, "index", "index"),
             "mask_tiles": ("index", "index"), "semaphore_set": (), "semaphore_wait": (),
             "semaphore_inc": ("index", "index"), "noc_mcast_cb": ("index",) * 4}
# ops taking an optional operand more: the NoC tile ops' valid_cols (a ragged edge), the inter-core ops' `enabled`
_OPTIONAL = {"noc_read_tiles": "index", "noc_write_tiles": "index", "semaphore_set": "index",
             "semaphore_wait": "index", "semaphore_inc": "index", "noc_mcast_cb": "index"}


def _attr(key: str, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        return text if any(c in text for c in ".en") else text + ".0"
    if isinstance(value, str):
        return value if key == "format" else f'"{value}"'
    return str(value)


# ops taking an optional row segment (offset and size operands)
_SEGMENT = {"noc_read_pages", "noc_read_rows_indexed", "noc_write_rows"}


def kop(name: str, *operands: str, out: str | None = None, **attrs: object) -> str:
    """One `ttkernel.<name>` op line; operands and `out` are value names without the %."""
    types = _OPERANDS.get(name, ())
    if name in _OPTIONAL and len(operands) == len(types) + 1:
        types = (*types, _OPTIONAL[name])
    if name in _SEGMENT and len(operands) == len(types) + 2:
        types = (*types, "index", "index")
    assert len(types) == len(operands), f"{name} takes {len(types)} operands"
    attr_text = " {" + ", ".join(f"{k} = {_attr(k, v)}" for k, v in attrs.items()) + "}" if attrs else ""
    head = f"%{out} = " if out else ""
    result = _RESULTS.get(name, "()")
    args = ", ".join(f"%{v}" for v in operands)
    return f'{head}"ttkernel.{name}"({args}){attr_text} : ({", ".join(types)}) -> {result} loc("{NODE}")'


def kfor(iv: str, upper: int, body: Sequence[str], lower: int = 0, step: int = 1) -> str:
    inner = "\n".join(body)
    return (f'"ttkernel.for"() ({{\n^bb0(%{iv}: index):\n{inner}\n}}) '
            f'{{lower = {lower}, step = {step}, upper = {upper}}} : () -> () loc("{NODE}")')


def addrgen(out: str, operand: int, fmt: str = "bf16", memory: str = "dram", page: int | None = None) -> list[str]:
    """Two lines: the address of buffer operand #operand and an addrgen over its tiles."""
    size = page if page is not None else DataFormat.parse(fmt).tile_bytes
    return [kop("buffer_address", out=f"{out}_base", operand=operand),
            kop("addrgen", f"{out}_base", out=out, page_size=size, memory=memory, format=fmt)]


def cb(index: int, pages: int, fmt: str = "bf16", address: int | None = None, page: int | None = None) -> dict:
    return {"index": index, "pages": pages, "format": fmt, "address": address,
            "page_size": page if page is not None else DataFormat.parse(fmt).tile_bytes}


def _cb_text(config: dict, l1_base: int) -> tuple[str, int]:
    """A #ttmetal.cb attribute; CBs without an explicit address are packed from l1_base upwards."""
    address = config["address"]
    auto = address is None
    if auto:
        address = l1_base
    parts = [str(config["index"]), f"page_size = {config['page_size']}", f"pages = {config['pages']}",
             f"format = {config['format']}"]
    if address != "none":
        parts.append(f"address = {address}")
    size = config["page_size"] * config["pages"]
    return f"#ttmetal.cb<{', '.join(parts)}>", (l1_base + -(-size // 32) * 32 if auto else l1_base)


def _rename(lines: Sequence[str], prefix: str) -> str:
    return "\n".join(re.sub(r"%([A-Za-z_]\w*)", rf"%{prefix}\1", line) for line in lines)


@dataclass
class Tensor:
    """A named host tensor and its DRAM buffer (format and layout)."""

    name: str
    shape: tuple[int, ...]
    fmt: str = "bf16"
    layout: str = "tile"
    host: str = "f32"
    address: int | None = None
    memory: str = "dram"

    def host_type(self) -> str:
        return f"tensor<{''.join(f'{d}x' for d in self.shape)}{self.host}>"

    def device_type(self) -> str:
        return (f"tensor<{''.join(f'{d}x' for d in self.shape)}{self.fmt}, "
                f"#tt.layout<{self.layout}, {self.memory}, interleaved>>")

    def bytes_per_bank(self) -> int:
        pages = num_pages(self.shape, self.layout)
        return -(-pages // 8) * page_size(self.shape, self.fmt, self.layout)


@dataclass
class ProgramSpec:
    reader: Sequence[str]
    compute: Sequence[str]
    writer: Sequence[str]
    cbs: Sequence[dict]
    grid: tuple[int, int] = (1, 1)
    runtime_args: Sequence[Sequence[Sequence[int]]] | None = None  # [kernel][core][i]
    kind: str = "test"
    node: str = NODE
    l1_base: int = E150.l1_reserved
    buffers: Sequence[str] = field(default_factory=list)  # operand names; default inputs then outputs

    def text(self, operands: Sequence[Tensor], prefix: str = "") -> str:
        cores = self.grid[0] * self.grid[1]
        args = self.runtime_args or [[[] for _ in range(cores)] for _ in range(3)]
        base, cb_texts = self.l1_base, []
        for config in self.cbs:
            text, base = _cb_text(config, base)
            cb_texts.append(text)
        runtime = "[" + ", ".join("[" + ", ".join(f"[{', '.join(map(str, c))}]" for c in k) + "]"
                                  for k in args) + "]"
        names = ", ".join(f"%buf_{t.name}" for t in operands)
        types = ", ".join(t.device_type() for t in operands)
        regions = ", ".join("{\n" + _rename(kernel, f"{prefix}{tag}_") + "\n}"
                            for tag, kernel in zip("rcw", (self.reader, self.compute, self.writer), strict=True))
        attrs = (f'cbs = [{", ".join(cb_texts)}], grid = #tt.grid<{self.grid[0]}x{self.grid[1]}>, '
                 f'kind = "{self.kind}", runtime_args = {runtime}')
        return f'"ttmetal.enqueue_program"({names}) ({regions}) {{{attrs}}} : ({types}) -> () loc("{self.node}")'


def schedule_text(inputs: Sequence[Tensor], outputs: Sequence[Tensor], programs: Sequence[ProgramSpec],
                  device: DeviceAttr = E150) -> str:
    """A module whose @main writes the inputs, runs the programs and reads the outputs back."""
    tensors = [*inputs, *outputs]
    addresses, address = {}, 0
    for t in tensors:  # DRAM addresses bottom-up unless a tensor fixes its own
        addresses[t.name] = t.address if t.address is not None else address
        address += -(-t.bytes_per_bank() // 64) * 64 if t.address is None else 0
    loc = f'loc("{NODE}")'
    lines = []
    for t in tensors:
        lines.append(f'%buf_{t.name} = "ttmetal.create_buffer"() {{address = {addresses[t.name]}}} : () -> '
                     f'{t.device_type()} {loc}')
    for t in inputs:
        lines.append(f'"ttmetal.write_buffer"(%in_{t.name}, %buf_{t.name}) : ({t.host_type()}, {t.device_type()}) -> () {loc}')
    by_name = {t.name: t for t in tensors}
    for i, program in enumerate(programs):
        operands = [by_name[n] for n in program.buffers] if program.buffers else tensors
        lines.append(program.text(operands, prefix=f"p{i}"))
    for t in outputs:
        lines.append(f'%out_{t.name} = "ttmetal.read_buffer"(%buf_{t.name}) : ({t.device_type()}) -> {t.host_type()} {loc}')
    for t in tensors:
        lines.append(f'"ttmetal.deallocate"(%buf_{t.name}) : ({t.device_type()}) -> () {loc}')
    results = ", ".join(f"%out_{t.name}" for t in outputs)
    result_types = ", ".join(t.host_type() for t in outputs)
    lines.append(f"func.return {results} : {result_types} {loc}")
    args = ", ".join(f'%in_{t.name}: {t.host_type()} {{ttir.name = "{t.name}"}}' for t in inputs)
    res = ", ".join(f'{t.host_type()} {{ttir.name = "{t.name}"}}' for t in outputs)
    body = "\n".join("    " + line for line in "\n".join(lines).split("\n"))
    return (f"module attributes {{tt.device = {device}}} {{\n  func.func @main({args}) -> ({res}) {{\n"
            f"{body}\n  }}\n}}\n")


def build(inputs: Sequence[Tensor], outputs: Sequence[Tensor], programs: Sequence[ProgramSpec]) -> Module:
    module = parse_module(schedule_text(inputs, outputs, programs))
    verify(module)
    return module


def run(inputs: dict[str, tuple[Tensor, np.ndarray]], outputs: Sequence[Tensor], *programs: ProgramSpec,
        step_budget: int | None = None) -> tuple[dict[str, np.ndarray], Executor]:
    """Build, verify and execute; returns the outputs and the executor (for its profile)."""
    module = build([t for t, _ in inputs.values()], outputs, programs)
    kwargs = {"step_budget": step_budget} if step_budget is not None else {}
    executor = Executor(module, {}, **kwargs)
    return executor.run({name: array for name, (_, array) in inputs.items()}), executor


def core_args(grid: tuple[int, int], fn) -> list[list[int]]:
    """Per-core argument tuples, cores row-major: fn(x, y) -> list of ints."""
    return [list(fn(c % grid[0], c // grid[0])) for c in range(grid[0] * grid[1])]


def matmul_program(m: int, k: int, n: int, grid: tuple[int, int], per_core_m: int, per_core_n: int,
                   block_k: int, subblock: tuple[int, int] | None = None, fidelity: str = "hifi4",
                   node: str = "matmul") -> ProgramSpec:
    """C[m x n tiles] = A[m x k] @ B[k x n] (operands a, b, c), per core a per_core_m x per_core_n block.

    Either the whole core block fits in half of Dst and partial sums stay in Dst across the K blocks
    of `block_k` tiles, or all of K is one block and the core block is computed in `subblock`s.
    """
    h, w = subblock or (per_core_m, per_core_n)
    blocks = k // block_k
    assert blocks == 1 or (h, w) == (per_core_m, per_core_n), "K blocking keeps the whole block in Dst"
    assert h * w <= 8 and per_core_m % h == 0 and per_core_n % w == 0
    a_tiles, b_tiles = per_core_m * block_k, block_k * per_core_n
    reader = [kop("get_arg", out="a0", index=0), kop("get_arg", out="b0", index=1),
              *addrgen("a", 0), *addrgen("b", 1), kop("constant", out="nt", value=n),
              kfor("kt", k, [
                  kop("addi", "a0", "kt", out="ai"),
                  kop("muli", "kt", "nt", out="bk"), kop("addi", "b0", "bk", out="bi"),
                  kop("cb_reserve_back", cb=0, pages=a_tiles),
                  kop("noc_read_tiles", "a", "ai", cb=0, rows=per_core_m, cols=block_k, row_stride=k),
                  kop("cb_reserve_back", cb=1, pages=b_tiles),
                  kop("noc_read_tiles", "b", "bi", cb=1, rows=block_k, cols=per_core_n, row_stride=n),
                  kop("noc_read_barrier"),
                  kop("cb_push_back", cb=0, pages=a_tiles), kop("cb_push_back", cb=1, pages=b_tiles)],
                  step=block_k)]
    compute: list[str] = []
    writer = [kop("get_arg", out="c0", index=0), *addrgen("c", 2)]
    wait_inputs = [kop("cb_wait_front", cb=0, pages=a_tiles), kop("cb_wait_front", cb=1, pages=b_tiles)]
    pop_inputs = [kop("cb_pop_front", cb=0, pages=a_tiles), kop("cb_pop_front", cb=1, pages=b_tiles)]
    pack = [kop("tile_regs_commit"), kop("tile_regs_wait"), kop("cb_reserve_back", cb=16, pages=h * w),
            kop("pack_tiles", count=h * w, cb=16), kop("cb_push_back", cb=16, pages=h * w), kop("tile_regs_release")]
    matmul = {"inner": block_k, "rows": h, "cols": w, "a_row_stride": block_k, "b_row_stride": per_core_n,
              "fidelity": fidelity}
    if blocks > 1:
        compute += [kop("tile_regs_acquire"), kop("fill_tiles", count=h * w, value=0.0),
                    kfor("kb", blocks, [*wait_inputs, kop("matmul_tiles", cb_a=0, cb_b=1, **matmul), *pop_inputs]),
                    *pack]
    else:
        compute += wait_inputs
    for sh in range(per_core_m // h if blocks == 1 else 1):
        for sw in range(per_core_n // w if blocks == 1 else 1):
            if blocks == 1:
                compute += [kop("tile_regs_acquire"), kop("fill_tiles", count=h * w, value=0.0),
                            kop("matmul_tiles", cb_a=0, a_offset=sh * h * block_k, cb_b=1, b_offset=sw * w,
                                **matmul), *pack]
            writer += [kop("constant", out=f"o{sh}_{sw}", value=sh * h * n + sw * w),
                       kop("addi", "c0", f"o{sh}_{sw}", out=f"c{sh}_{sw}"),
                       kop("cb_wait_front", cb=16, pages=h * w),
                       kop("noc_write_tiles", "c", f"c{sh}_{sw}", cb=16, rows=h, cols=w, row_stride=n),
                       kop("noc_write_barrier"), kop("cb_pop_front", cb=16, pages=h * w)]
    if blocks == 1:
        compute += pop_inputs
    gx, gy = grid
    assert gy * per_core_m == m and gx * per_core_n == n
    reader_args = core_args(grid, lambda x, y: [y * per_core_m * k, x * per_core_n])
    writer_args = core_args(grid, lambda x, y: [y * per_core_m * n + x * per_core_n])
    cbs = [cb(0, a_tiles * min(blocks, 2)), cb(1, b_tiles * min(blocks, 2)), cb(16, 2 * h * w)]
    return ProgramSpec(reader, compute, writer, cbs, grid, [reader_args, [[]] * (gx * gy), writer_args],
                       kind="matmul", node=node)


def eltwise_program(grid: tuple[int, int], per_core: int = 1, op: str = "add", starts: Sequence[int] | None = None,
                    write_starts: Sequence[int] | None = None, pages: int = 2, node: str = "add_1",
                    fmt: str = "bf16") -> ProgramSpec:
    """c = a `op` b over tiles, each core a run of `per_core` tiles from its start (runtime arg 0).

    Kernels are lists of lines, so a test can delete or change one op to see what the device does.
    """
    cores = grid[0] * grid[1]
    starts = list(starts) if starts is not None else [c * per_core for c in range(cores)]
    write_starts = list(write_starts) if write_starts is not None else starts
    reader = [kop("get_arg", out="t0", index=0), *addrgen("a", 0, fmt), *addrgen("b", 1, fmt),
              kfor("i", per_core, [
                  kop("addi", "t0", "i", out="t"),
                  kop("cb_reserve_back", cb=0, pages=1), kop("noc_read_tiles", "a", "t", cb=0, rows=1, cols=1),
                  kop("cb_reserve_back", cb=1, pages=1), kop("noc_read_tiles", "b", "t", cb=1, rows=1, cols=1),
                  kop("noc_read_barrier"), kop("cb_push_back", cb=0, pages=1), kop("cb_push_back", cb=1, pages=1)])]
    compute = [kfor("i", per_core, [
        kop("cb_wait_front", cb=0, pages=1), kop("cb_wait_front", cb=1, pages=1),
        kop("tile_regs_acquire"), kop("binary_tiles", op=op, cb_a=0, cb_b=1, rows=1, cols=1),
        kop("tile_regs_commit"), kop("tile_regs_wait"),
        kop("cb_reserve_back", cb=16, pages=1), kop("pack_tiles", count=1, cb=16), kop("cb_push_back", cb=16, pages=1),
        kop("tile_regs_release"), kop("cb_pop_front", cb=0, pages=1), kop("cb_pop_front", cb=1, pages=1)])]
    writer = [kop("get_arg", out="t0", index=0), *addrgen("c", 2, fmt),
              kfor("i", per_core, [
                  kop("addi", "t0", "i", out="t"), kop("cb_wait_front", cb=16, pages=1),
                  kop("noc_write_tiles", "c", "t", cb=16, rows=1, cols=1), kop("noc_write_barrier"),
                  kop("cb_pop_front", cb=16, pages=1)])]
    args = [[[s] for s in starts], [[] for _ in range(cores)], [[s] for s in write_starts]]
    return ProgramSpec(reader, compute, writer, [cb(0, pages, fmt), cb(1, pages, fmt), cb(16, pages, fmt)],
                       grid, args, kind="eltwise", node=node)


def without(kernel: Sequence[str], fragment: str, count: int = 1) -> list[str]:
    """The kernel with the first `count` lines containing `fragment` deleted (also inside loops)."""
    lines = "\n".join(kernel).split("\n")
    hits = [i for i, line in enumerate(lines) if fragment in line][:count]
    assert len(hits) == count, f"{fragment!r} found {len(hits)} times"
    return [line for i, line in enumerate(lines) if i not in hits]


def replace(kernel: Sequence[str], old: str, new: str) -> list[str]:
    text = "\n".join(kernel)
    assert old in text, f"{old!r} not in the kernel"
    return text.replace(old, new, 1).split("\n")


# ----------------------------------------------------------------------------------------------
# Float16 overflow: the Python numerics raise it, the native primitives set a per-thread flag


@contextmanager
def unchecked_f16() -> Iterator[None]:
    """The numerics without their Float16 overflow checks: the plain roundings' results (inf where a finite
    value overflows), which are the native primitives' results too."""
    from ttc.runtime import numerics

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(numerics, "_check_f16", lambda before, after: after)
        patch.setattr(numerics, "_check_marks", lambda marks: None)
        yield


def python_and_overflow(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, bool]:
    """(fn's result without the overflow checks, whether fn raises numerics.Float16Overflow with them)."""
    from ttc.runtime import numerics

    with np.errstate(all="ignore"):
        try:
            fn(*args, **kwargs)
            raised = False
        except numerics.Float16Overflow:
            raised = True
        with unchecked_f16():
            return fn(*args, **kwargs), raised


def native_and_overflow(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, bool]:
    """(a native primitive's result, whether it set the calling thread's Float16 overflow flag)."""
    from ttc.runtime.native_core import native

    native.take_f16_overflow()
    result = fn(*args, **kwargs)
    return result, native.take_f16_overflow()
