"""Build contract-form ttir (after decompose, canonicalize, tilize, fuse) as text, compile it with the
backend passes and run it on the emulator.

    g = Graph()
    x = g.input("x", (50, 70))
    w = g.weight("w", rng.standard_normal((70, 17)))
    y = g.op("ttir.linear", [x, w], (50, 17), 'activation = "none", transpose_b = false', loc="mm")
    g.output(y, "y")
    module = compile_graph(g)
    outputs = run(module, {"x": ...})
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence

import numpy as np

import ttc.backend
import ttc.passes.allocate
import ttc.passes.grid
import ttc.passes.layout  # noqa: F401
from ttc.ir import Module, parse_module
from ttc.ir.dialects.tt import E150, DeviceAttr
from ttc.ir.types import TensorType
from ttc.passes import PassManager
from ttc.runtime.executor import Executor
from ttc.runtime.layout import tensor_to_pages

BACKEND = "layout,grid,lower-to-kernels,allocate"


def dims(shape: Sequence[int]) -> str:
    return "".join(f"{d}x" for d in shape)


def host(shape: Sequence[int]) -> str:
    return f"tensor<{dims(shape)}f32>"


def dev(shape: Sequence[int], fmt: str = "f32", memory: str = "dram") -> str:
    return f"tensor<{dims(shape)}{fmt}, #tt.layout<tile, {memory}, interleaved>>"


class Graph:
    """A one-function module in the form the backend passes receive."""

    def __init__(self) -> None:
        self.args: list[str] = []
        self.lines: list[str] = []
        self.results: list[tuple[str, tuple[int, ...], str]] = []
        self.weights: dict[str, np.ndarray] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.count = 0
        self.result = ""  # a value name a helper building the graph wants to hand back

    def fresh(self) -> str:
        self.count += 1
        return f"%v{self.count}"

    def input(self, name: str, shape: Sequence[int]) -> str:
        arg = f"%in_{name}"
        self.args.append(f'{arg}: {host(shape)} {{ttir.name = "{name}"}}')
        value = self.fresh()
        self.lines.append(f'{value} = "ttir.to_layout"({arg}) : ({host(shape)}) -> {dev(shape)} loc("{name}")')
        self.shapes[value] = tuple(shape)
        return value

    def weight(self, name: str, data: np.ndarray) -> str:
        data = np.asarray(data, dtype=np.float32)
        self.weights[name] = data
        value = self.fresh()
        self.lines.append(f'{value} = "ttir.constant"() {{value = #tt.weight<"{name}">}} : () -> '
                          f'{dev(data.shape)} loc("{name}")')
        self.shapes[value] = data.shape
        return value

    def op(self, name: str, operands: Sequence[str], shape: Sequence[int], attrs: str = "", loc: str = "op",
           body: Sequence[str] = ()) -> str:
        value = self.fresh()
        types = ", ".join(dev(self.shapes[v]) for v in operands)
        attr_text = f" {{{attrs}}}" if attrs else ""
        region = ""
        if body:  # body values are renamed apart: %b0 -> %v3_b0, %0 -> %v3_0
            args = ", ".join(f"%b{i}: {dev(self.shapes[v])}" for i, v in enumerate(operands))
            text = "^bb0(" + args + "):\n" + "\n".join(body)
            region = " ({\n" + re.sub(r"%(\w+)", rf"%{value[1:]}_\1", text) + "\n})"
        self.lines.append(f'{value} = "{name}"({", ".join(operands)}){region}{attr_text} : ({types}) -> '
                          f'{dev(shape)} loc("{loc}")')
        self.shapes[value] = tuple(shape)
        return value

    def output(self, value: str, name: str) -> None:
        shape = self.shapes[value]
        result = self.fresh()
        self.lines.append(f'{result} = "ttir.to_layout"({value}) : ({dev(shape)}) -> {host(shape)} loc("{name}")')
        self.results.append((result, shape, name))

    def text(self, device: DeviceAttr = E150) -> str:
        returns = ", ".join(r for r, _, _ in self.results)
        types = ", ".join(host(s) for _, s, _ in self.results)
        signature = ", ".join(f'{host(s)} {{ttir.name = "{n}"}}' for _, s, n in self.results)
        body = "\n    ".join([*self.lines, f'func.return {returns} : {types} loc("return")'])
        return (f"module attributes {{tt.device = {device}}} {{\n  func.func @main({', '.join(self.args)}) -> "
                f"({signature}) {{\n    {body}\n  }}\n}}\n")


def compile_text(text: str, weights: dict[str, np.ndarray] | None = None, pipeline: str = BACKEND) -> Module:
    module = parse_module(text, "test.mlir", weights)
    PassManager(pipeline, stream=io.StringIO()).run(module)
    return module


def compile_graph(graph: Graph, pipeline: str = BACKEND, device: DeviceAttr = E150) -> Module:
    return compile_text(graph.text(device), dict(graph.weights), pipeline)


def device_weights(module: Module) -> dict[str, np.ndarray]:
    """Every weight a write_constant uses, packed into its buffer's pages."""
    packed = {}
    for op in module.walk():
        if op.name != "ttmetal.write_constant":
            continue
        name = op.attributes["value"].name
        t = op.operands[0].type
        assert isinstance(t, TensorType)
        packed[name] = tensor_to_pages(np.asarray(module.weights[name]).reshape(t.shape), t.element_type,
                                       str(t.encoding.tensor_layout))
    return packed


def run(module: Module, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return Executor(module, device_weights(module)).run(inputs)


def pcc(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(got).astype(np.float64), np.ravel(want).astype(np.float64))[0, 1])


def programs(module: Module) -> list:
    return [op for op in module.walk() if op.name == "ttmetal.enqueue_program"]


def body_text(module: Module) -> str:
    """@main's printed ops, stripped of indentation."""
    from ttc.ir import print_module

    lines = print_module(module).splitlines()
    start = next(i for i, line in enumerate(lines) if "func.func @main" in line)
    return "\n".join(line.strip() for line in lines[start + 1:-2])


def check(output: str, *checks: str) -> None:
    """FileCheck-style: each check is a substring of a line after the previous check's line."""
    lines = output.splitlines()
    at = 0
    for check_text in checks:
        found = next((i for i in range(at, len(lines)) if check_text in lines[i]), None)
        assert found is not None, f"CHECK not found after line {at + 1}: {check_text!r}\n--- output:\n{output}"
        at = found + 1
