"""Parse and verifier errors name line:col, quote the text with a caret, and carry the op's loc."""

from __future__ import annotations

import re

import pytest

from ttc.ir import IRError, Module, Operation, TensorType, parse_module, verify
from ttc.ir.attributes import NameLoc
from ttc.ir.core import Function
from ttc.ir.dialect import VerifyError
from ttc.ir.dialects.ttkernel import verify_sfpu_binary
from ttc.ir.types import f32

GOOD = """module {
  func.func @main(%arg0: tensor<4x8xf32>) -> tensor<4x8xf32> {
    %0 = "ttir.relu"(%arg0) : (tensor<4x8xf32>) -> tensor<4x8xf32> loc("/relu/Relu")
    func.return %0 : tensor<4x8xf32> loc("ret")
  }
}
"""


def error_of(text: str, *, check: bool = True) -> str:
    with pytest.raises(IRError) as info:
        module = parse_module(text, "m.mlir")
        if check:
            verify(module)
    return str(info.value)


def test_good_module_verifies() -> None:
    verify(parse_module(GOOD, "m.mlir"))


@pytest.mark.parametrize(("old", "new", "expected"), [
    ('"ttir.relu"(%arg0)', '"ttir.relu"(%arg7)', "m.mlir:3:22: error: use of undefined value %arg7"),
    ("-> tensor<4x8xf32> loc(\"/relu", "-> tensor<4x8xf32 loc(\"/relu", "m.mlir:3:67: error: unexpected 'loc'"),
    ("func.return %0 :", "func.return %0, %0 :", "m.mlir:4:5: error: func.return lists 2 values but 1 types"),
    ("%0 = \"ttir.relu\"", "%0:2 = \"ttir.relu\"", "m.mlir:3:5: error: 2 result names but 'ttir.relu' returns 1"),
    ('loc("ret")', 'loc("ret"', "m.mlir:5:3: error: unexpected '}'"),
    ("(tensor<4x8xf32>) -> tensor<4x8xf32> loc", "(tensor<4x8xf16>) -> tensor<4x8xf32> loc",
     "m.mlir:3:22: error: %arg0 has type tensor<4x8xf32> but is used as tensor<4x8xf16>"),
    ('{\n    %0', '{\n    %0 = "ttir.relu"(%arg0) : (tensor<4x8xf32>) -> tensor<4x8xf32> loc("x")\n    %0',
     "m.mlir:4:5: error: redefinition of value %0"),
    ("func.return", "func.retrun", "m.mlir:4:5: error: unexpected 'func.retrun'"),
])
def test_parse_errors_point_at_the_text(old: str, new: str, expected: str) -> None:
    assert old in GOOD
    message = error_of(GOOD.replace(old, new), check=False)
    assert message.startswith(expected), message
    lines = message.splitlines()
    assert len(lines) == 3 and lines[2].strip() == "^", message
    column = int(expected.split(":")[2])
    assert lines[2].index("^") == column - 1


def test_unexpected_end_of_input() -> None:
    message = error_of(GOOD[:-2], check=False)
    assert message.startswith("m.mlir:5:4: error: unexpected end of input"), message


def test_bad_dialect_attribute_is_a_parse_error() -> None:
    text = GOOD.replace("{\n    %0", "attributes {x = #tt.grid<3>} {\n    %0")
    assert "invalid #tt.grid" in error_of(text, check=False)
    text = GOOD.replace("{\n    %0", "attributes {x = #tt.nothing<3>} {\n    %0")
    assert "unknown attribute #tt.nothing" in error_of(text, check=False)


@pytest.mark.parametrize(("old", "new", "expected"), [
    ('"ttir.relu"(%arg0) :', '"ttir.transpose"(%arg0) {perm = [1, 0]} :',
     "m.mlir:3:5: error: 'ttir.transpose' result shape 4x8 should be 8x4 (operand shape permuted by perm)"),
    ('"ttir.relu"', '"ttir.frobnicate"', "m.mlir:3:5: error: unregistered operation 'ttir.frobnicate'"),
    ('"ttir.relu"(%arg0) :', '"ttir.relu"(%arg0) {axis = 1} :', "m.mlir:3:5: error: 'ttir.relu' has no attribute 'axis'"),
    ('"ttir.relu"(%arg0) : (tensor<4x8xf32>)', '"ttir.relu"(%arg0, %arg0) : (tensor<4x8xf32>, tensor<4x8xf32>)',
     "m.mlir:3:5: error: 'ttir.relu' takes 1 operands, got 2"),
    ('"ttir.relu"(%arg0) :', '"ttir.softmax"(%arg0) {axis = 5} :',
     "m.mlir:3:5: error: 'ttir.softmax' axis 5 is out of range for rank 2"),
])
def test_verifier_errors_point_at_the_op(old: str, new: str, expected: str) -> None:
    message = error_of(GOOD.replace(old, new))
    assert message.startswith(expected), message
    assert message.splitlines()[-1].strip() == "^"


def test_verifier_errors_name_the_loc_of_built_ops() -> None:
    module = Module()
    t = TensorType((4, 8), f32)
    func = Function.create("main", [t], [t])
    module.body.append(func.op)
    bad = Operation("ttir.add", [func.args[0], func.args[0]], [TensorType((4, 9), f32)], loc=NameLoc("/add/Add"))
    func.body.append(bad)
    func.body.append(Operation("func.return", [func.args[0]]))
    with pytest.raises(IRError) as info:
        verify(module)
    message = str(info.value)
    assert message.startswith('loc("/add/Add"): error: \'ttir.add\' result shape 4x9 should be 4x8')
    assert '"ttir.add"(%arg0, %arg0)' in message


def test_verifier_catches_use_before_definition_and_missing_return() -> None:
    text = GOOD.replace('func.return %0 : tensor<4x8xf32> loc("ret")\n', "")
    assert "function body must end with func.return" in error_of(text)
    module = parse_module(GOOD, "m.mlir")
    body = module.function().body
    body.ops[0], body.ops[1] = body.ops[1], body.ops[0]
    message = error_of_module(module)
    assert "not defined before this use" in message


def error_of_module(module: Module) -> str:
    with pytest.raises(IRError) as info:
        verify(module)
    return str(info.value)


def test_weights_are_checked_when_present() -> None:
    import numpy as np

    text = GOOD.replace(
        '    %0 = "ttir.relu"(%arg0)',
        '    %w = "ttir.constant"() {value = #tt.weight<"w">} : () -> tensor<4x8xf32> loc("w")\n'
        '    %0 = "ttir.relu"(%arg0)')
    module = parse_module(text, "m.mlir", weights={"w": np.zeros((4, 8), np.float32)})
    verify(module)
    module.weights = {"w": np.zeros((2, 8), np.float32)}
    assert "weight 'w' has shape [2, 8]" in error_of_module(module)
    module.weights = {"other": np.zeros((2, 8), np.float32)}
    assert "weight 'w' is not in the module's weights" in error_of_module(module)


IM2COL = """module {{
  func.func @main(%arg0: tensor<25x32xbf16>, %arg1: {ids}) -> tensor<{m}x288xbf16> {{
    %0 = "ttir.embedding"(%arg0, %arg1) {{im2col = true, pad_negative = true}} : (tensor<25x32xbf16>, {ids}) -> tensor<{m}x288xbf16> loc("conv")
    func.return %0 : tensor<{m}x288xbf16> loc("ret")
  }}
}}
"""


@pytest.mark.parametrize(("ids", "m", "expected"), [
    ("tensor<9x40xi32>", 40, "im2col indices are [positions, tile rows, 32], not 9x40"),
    ("tensor<9x2x16xi32>", 40, "im2col indices are [positions, tile rows, 32], not 9x2x16"),
    ("tensor<9x3x32xi32>", 40, "an im2col result has 32 * 3 rows at most (one index page of 32 per tile row), "
                               "and more than 32 * 2"),
])
def test_im2col_indices_are_a_page_per_tile_row(ids: str, m: int, expected: str) -> None:
    verify(parse_module(IM2COL.format(ids="tensor<9x2x32xi32>", m=40), "m.mlir"))
    assert expected in error_of(IM2COL.format(ids=ids, m=m))


def test_grouped_im2col_is_a_batch_per_channel_tile() -> None:
    good = IM2COL.replace("tensor<{m}x288xbf16>", "tensor<1x{m}x288xbf16>").replace(
        "im2col = true,", "grouped = true, im2col = true,")
    verify(parse_module(good.format(ids="tensor<9x2x32xi32>", m=40), "m.mlir"))
    wrong = good.replace("tensor<1x{m}x288xbf16>", "tensor<{m}x288xbf16>")
    assert "channel tile j of every position side by side in batch j" in error_of(
        wrong.format(ids="tensor<9x2x32xi32>", m=40))


@pytest.mark.parametrize(("dst", "dst_b", "count", "expected"), [
    (0, 2, 4, "the operand slots 2..5 overlap the result slots 0..3"),
    (0, 14, 4, "Dst slots 14..17 ('dst_b') are outside 0..15"),
])
def test_binary_sfpu_slots_are_checked(dst: int, dst_b: int, count: int, expected: str) -> None:
    op = Operation("ttkernel.sfpu_binary_tiles", [], [], {"fn": "pow", "dst": dst, "dst_b": dst_b, "count": count})
    verify_sfpu_binary(Operation("ttkernel.sfpu_binary_tiles", [], [], {"fn": "pow", "dst": 0, "dst_b": 4, "count": 4}))
    with pytest.raises(VerifyError, match=re.escape(expected)):
        verify_sfpu_binary(op)


WINDOW_EDGE = """module {{
  func.func @main(%arg0: tensor<1x3x8x8xf32>) -> tensor<{m}x{k}xf32> {{
    %0 = "ttir.to_layout"(%arg0) {{{attrs}}} : (tensor<1x3x8x8xf32>) -> tensor<{m}x{k}xf32, #tt.layout<tile, dram, interleaved>> loc("conv")
    %1 = "ttir.to_layout"(%0) : (tensor<{m}x{k}xf32, #tt.layout<tile, dram, interleaved>>) -> tensor<{m}x{k}xf32> loc("conv")
    func.return %1 : tensor<{m}x{k}xf32> loc("ret")
  }}
}}
"""
WINDOW = "window = [3, 3, 2, 2, 1, 1, 1, 1, 1, 1]"
IM2COL_OP = """module {{
  func.func @main(%arg0: tensor<1x3x8x8xf32>) -> tensor<{m}x{k}xf32> {{
    %0 = "ttir.im2col"(%arg0) {{kernel = [3, 3], strides = [2, 2], pads = [1, 1, 1, 1], dilations = [1, 1]}} : (tensor<1x3x8x8xf32>) -> tensor<{m}x{k}xf32> loc("conv")
    func.return %0 : tensor<{m}x{k}xf32> loc("ret")
  }}
}}
"""


@pytest.mark.parametrize(("attrs", "m", "k", "expected"), [
    (WINDOW, 16, 28, "to_layout with window [3, 3, 2, 2, 1, 1, 1, 1, 1, 1] of 1x3x8x8 gives 16x27, not 16x28"),
    (WINDOW + ", perm = [0, 2, 3, 1]", 16, 27, "to_layout with window is a host -> device edge of its own"),
    ("window = [3, 3, 2, 2, 1, 1, 1, 1]", 16, 27, "an NCHW input and kernel (2), strides (2), pads (4)"),
])
def test_window_edges_are_checked(attrs: str, m: int, k: int, expected: str) -> None:
    """The host's im2col edge (`to_layout {window}`) gives [N*OH*OW, KH*KW*C] of an NCHW input."""
    verify(parse_module(WINDOW_EDGE.format(attrs=WINDOW, m=16, k=27), "m.mlir"))
    assert expected in error_of(WINDOW_EDGE.format(attrs=attrs, m=m, k=k))


def test_im2col_op_gives_the_window_matrix() -> None:
    verify(parse_module(IM2COL_OP.format(m=16, k=27), "m.mlir"))
    assert "result shape 16x28 should be 16x27 (the im2col matrix [N*OH*OW, KH*KW*C])" in error_of(
        IM2COL_OP.format(m=16, k=28))
