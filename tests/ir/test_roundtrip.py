"""print -> parse -> print is the identity: a property over generated modules."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ttc.ir import (
    Block,
    DenseAttr,
    DialectType,
    Dims,
    FileLineColLoc,
    Function,
    FunctionType,
    FusedLoc,
    Ident,
    Module,
    NameLoc,
    Operation,
    Region,
    ScalarType,
    TensorType,
    TypeAttr,
    UnknownLoc,
    WeightAttr,
    parse_module,
    print_module,
)
from ttc.ir.attributes import RESERVED_WORDS
from ttc.ir.diagnostics import IRError
from ttc.ir.dialects.tt import E75, E150, GridAttr, LayoutAttr
from ttc.ir.types import SCALAR_TYPE_NAMES

ELEMENT_TYPES = sorted(SCALAR_TYPE_NAMES - {"index"})
identifiers = st.from_regex(r"[a-z_][a-z0-9_]{0,8}(\.[a-z][a-z0-9_]{0,5})?", fullmatch=True).filter(
    lambda s: s not in RESERVED_WORDS)
texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)

layouts = st.builds(
    LayoutAttr,
    st.sampled_from(["tile", "row_major"]),
    st.sampled_from(["dram", "l1"]),
    st.sampled_from(["interleaved", "height_sharded", "width_sharded", "block_sharded"]),
    st.none() | st.tuples(st.integers(1, 12), st.integers(1, 10)).map(Dims),
    st.none() | st.tuples(st.integers(1, 64), st.integers(1, 64)).map(Dims),
)
scalar_types = st.sampled_from(ELEMENT_TYPES).map(ScalarType)
tensor_types = st.builds(TensorType, st.lists(st.integers(0, 300), max_size=4).map(tuple), scalar_types,
                         st.none() | layouts)
dialect_types = st.builds(DialectType, st.just("ttkernel"), st.sampled_from(["cb", "semaphore"]),
                          st.lists(st.integers(0, 99) | scalar_types.map(TypeAttr), max_size=3).map(tuple))
value_types = st.one_of(tensor_types, dialect_types, st.just(ScalarType("index")), scalar_types)


@st.composite
def dense_attrs(draw: st.DrawFn) -> DenseAttr:
    element = draw(st.sampled_from(["f32", "f16", "bf16", "i64", "i32", "i1"]))
    shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))  # a 0 dim: no elements, `dense<[]>`
    ttype = TensorType(shape, ScalarType(element))
    dtype = ttype.element_type.numpy_dtype()
    size = int(np.prod(shape))
    if element == "i1":
        values = draw(st.lists(st.booleans(), min_size=size, max_size=size))
    elif element.startswith("i"):
        values = draw(st.lists(st.integers(-(2**31), 2**31 - 1), min_size=size, max_size=size))
    else:
        values = draw(st.lists(st.floats(width=16, allow_nan=False) | st.sampled_from([float("inf"), 0.1, -0.0]),
                               min_size=size, max_size=size))
    splat = draw(st.booleans())
    array = np.asarray(values[:1] * size if splat else values, dtype=dtype).reshape(shape)
    return DenseAttr(ttype, array)


scalar_attrs = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
    identifiers.map(Ident),
)
leaf_attrs = st.one_of(
    scalar_attrs, dense_attrs(), texts.map(WeightAttr), layouts,
    st.builds(GridAttr, st.integers(1, 12), st.integers(1, 10)), st.sampled_from([E150, E75]),
    tensor_types.map(TypeAttr), scalar_types.map(TypeAttr),
)
attr_values = st.recursive(
    leaf_attrs,
    lambda inner: st.lists(inner, max_size=3).map(tuple) | st.dictionaries(identifiers | texts, inner, max_size=3),
    max_leaves=6,
)
attr_dicts = st.dictionaries(identifiers | texts, attr_values, max_size=3)
locations = st.recursive(
    st.one_of(st.just(UnknownLoc()), texts.map(NameLoc),
              st.builds(FileLineColLoc, texts, st.integers(1, 999), st.integers(1, 99))),
    lambda inner: st.lists(inner, min_size=2, max_size=3).map(lambda locs: FusedLoc(tuple(locs))),
    max_leaves=4,
)
op_names = st.from_regex(r"(ttir|ttkernel|test)\.[a-z_]{1,10}", fullmatch=True)


@st.composite
def op_list(draw: st.DrawFn, block: Block, visible: list, depth: int) -> None:
    for _ in range(draw(st.integers(0, 4))):
        operands = draw(st.lists(st.sampled_from(visible), max_size=3)) if visible else []
        result_types = draw(st.lists(value_types, max_size=3))
        regions = []
        if depth < 2 and draw(st.integers(0, 4)) == 0:
            for _ in range(draw(st.integers(1, 2))):
                inner = Block(draw(st.lists(value_types, max_size=2)))
                draw(op_list(inner, visible + inner.args, depth + 1))
                regions.append(Region([inner]))
        if depth == 0 and draw(st.integers(0, 5)) == 0:  # a program: labelled kernels, attributes first
            kernels = []
            for _ in range(3):
                inner = Block()
                draw(op_list(inner, list(visible), depth + 1))
                kernels.append(Region([inner]))
            attrs = dict(draw(attr_dicts))
            attrs["grid"] = GridAttr(draw(st.integers(1, 12)), draw(st.integers(1, 9)))
            attrs["runtime_args"] = tuple(tuple(tuple(draw(st.lists(st.integers(0, 99), max_size=3)))
                                                for _ in range(2)) for _ in range(3))
            block.append(Operation("ttmetal.enqueue_program", operands, [], attrs, kernels, draw(locations)))
            continue
        op = Operation(draw(op_names), operands, result_types, draw(attr_dicts), regions, draw(locations))
        block.append(op)
        visible.extend(op.results)


@st.composite
def modules(draw: st.DrawFn) -> Module:
    module = Module()
    module.attributes.update(draw(attr_dicts))
    if draw(st.booleans()):  # printed once as the alias #device
        module.attributes["tt.device"] = draw(st.sampled_from([E150, E75]))
    for index in range(draw(st.integers(0, 2))):
        inputs = draw(st.lists(value_types, max_size=3))
        func = Function.create(f"f{index}", inputs, [],
                               arg_attrs=[draw(attr_dicts) for _ in inputs])
        visible = list(func.args)
        draw(op_list(func.body, visible, 0))
        returned = draw(st.lists(st.sampled_from(visible), max_size=2)) if visible else []
        func.set_type(FunctionType(tuple(a.type for a in func.args), tuple(v.type for v in returned)))
        if returned and draw(st.booleans()):
            func.op.attributes["res_attrs"] = tuple(draw(attr_dicts) for _ in returned)
        func.body.append(Operation("func.return", returned, loc=draw(locations)))
        module.body.append(func.op)
    return module


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(modules())
def test_print_parse_print_is_identity(module: Module) -> None:
    text = print_module(module)
    again = print_module(parse_module(text, "generated.mlir"))
    assert again == text
    # Without locations (the terminal form) the text parses too, and prints back the same, but for the
    # programs' names, which come from their locations.
    bare = print_module(module, locations=False)
    assert "loc(" not in bare.replace('"loc(', "")
    reparsed = print_module(parse_module(bare, "bare.mlir"), locations=False)

    def names_dropped(t: str) -> str:
        return re.sub(r"(?m)^(\s*// program \d+):.*$", r"\1", t)

    assert names_dropped(reparsed) == names_dropped(bare)


def test_roundtrip_keeps_structure() -> None:
    text = """module {
  func.func @main(%arg0: tensor<2x3xf32> {ttir.name = "x"}) -> (tensor<2x3xf32> {ttir.name = "y"}) {
    %0 = "ttir.constant"() {value = dense<1.5> : tensor<f32>} : () -> tensor<f32> loc("c")
    %1:2 = "test.pair"(%arg0) : (tensor<2x3xf32>) -> (tensor<2x3xf32>, index) loc("p")
    "test.loop"(%1#1) ({
    ^bb0(%arg1: index):
      "test.body"(%arg1, %1#0) : (index, tensor<2x3xf32>) -> () loc(unknown)
    }) {trip_count = 4} : (index) -> () loc(fused["a", "b.mlir":3:4])
    %2 = "ttir.add"(%1#0, %0) : (tensor<2x3xf32>, tensor<f32>) -> tensor<2x3xf32> loc("add")
    func.return %2 : tensor<2x3xf32> loc("ret")
  }
}
"""
    module = parse_module(text, "t.mlir")
    assert print_module(module) == text
    func = module.function("main")
    pair = func.body.ops[1]
    assert len(pair.results) == 2
    assert sorted(op.name for op in pair.results[0].users) == ["test.body", "ttir.add"]
    loop = func.body.ops[2]
    body = loop.regions[0].block
    assert body.ops[0].operands == (body.args[0], pair.results[0])
    assert func.arg_attrs(0) == {"ttir.name": "x"}
    assert func.res_attrs(0) == {"ttir.name": "y"}


def test_dynamic_dims_round_trip_on_host_tensors_only() -> None:
    text = """module {
  func.func @main(%arg0: tensor<3x4xf32> {ttir.name = "x"}) -> (tensor<?x4xf32> {ttir.name = "y"}) {
    %0 = "ttmetal.host_compute"(%arg0) {model = "", op_type = "Unique"} : (tensor<3x4xf32>) -> tensor<?x4xf32> loc("u")
    func.return %0 : tensor<?x4xf32> loc(unknown)
  }
}
"""
    module = parse_module(text, "t.mlir")
    assert print_module(module) == text
    assert module.function("main").type.results[0] == TensorType((None, 4), ScalarType("f32"))
    with pytest.raises(IRError, match=r"t.mlir:2:.*a tensor with a layout has a static shape"):
        parse_module(text.replace("tensor<?x4xf32> {", "tensor<?x4xf32, #tt.layout<tile, dram, interleaved>> {"),
                     "t.mlir")
