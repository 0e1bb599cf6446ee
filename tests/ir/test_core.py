"""Values, uses, replace-all-uses, erase, and the dialect declarations."""

from __future__ import annotations

import pytest

from ttc.ir import Block, Builder, Function, Module, NameLoc, Operation, TensorType, lookup_op, verify
from ttc.ir.attributes import FusedLoc, UnknownLoc, fuse_locations
from ttc.ir.dialect import Trait, registered_dialects
from ttc.ir.dialects.tt import E75, E150, device_for
from ttc.ir.types import f32

T = TensorType((4, 8), f32)


def make_chain() -> tuple[Module, Function, list[Operation]]:
    module = Module()
    func = Function.create("main", [T], [T])
    module.body.append(func.op)
    b = Builder.at_end(func.body)
    relu = b.create("ttir.relu", [func.args[0]], [T], loc=NameLoc("r"))
    exp = b.create("ttir.exp", [relu.result], [T], loc=NameLoc("e"))
    add = b.create("ttir.add", [relu.result, exp.result], [T], loc=NameLoc("a"))
    b.create("func.return", [add.result])
    return module, func, [relu, exp, add]


def test_uses_track_operands() -> None:
    _, func, (relu, exp, add) = make_chain()
    assert sorted((op.name, i) for op, i in relu.result.uses) == [("ttir.add", 0), ("ttir.exp", 0)]
    assert func.args[0].users == [relu]
    add.set_operand(1, relu.result)
    assert not exp.result.has_uses
    assert len(relu.result.uses) == 3


def test_replace_all_uses_and_erase() -> None:
    module, func, (relu, exp, add) = make_chain()
    relu.result.replace_all_uses_with(func.args[0])
    assert add.operands[0] is func.args[0] and exp.operands[0] is func.args[0]
    relu.erase()
    assert relu.parent is None and relu not in func.body.ops
    verify(module)


def test_erase_refuses_used_results() -> None:
    _, _, (relu, _, _) = make_chain()
    with pytest.raises(ValueError, match="still has uses"):
        relu.erase()


def test_attr_defaults_come_from_the_declaration() -> None:
    op = Operation("ttir.matmul", [], [])
    assert op.attr("transpose_b") is False
    with pytest.raises(KeyError):
        op.attr("no_such_attr")


def test_dialects_are_declared_as_data() -> None:
    dialects = registered_dialects()
    assert {"ttir", "tt", "ttkernel", "ttmetal", "func", "builtin"} <= set(dialects)
    add = lookup_op("ttir.add")
    assert add is not None and add.has(Trait.COMMUTATIVE) and add.has(Trait.BROADCASTABLE)
    assert lookup_op("ttir.layer_norm").operands[2].optional


def test_device_descriptors_follow_grayskull_md() -> None:
    assert E150.compute_grid == (12, 9) and E75.compute_grid == (11, 8)
    assert E150.worker_grid == (12, 10) and E75.worker_grid == (12, 8)
    assert E150.clock_mhz == 1200 and E75.clock_mhz == 1000
    assert E150.l1_size == 1 << 20 and E150.l1_reserved == 0x2A580
    assert E150.dram_size == 8 << 30
    assert E150.compute_cores == 108 and E75.compute_cores == 88
    assert round(E150.dram_bytes_per_cycle, 1) == 98.7  # 118.4 GB/s at 1.2 GHz
    assert device_for("e75") is E75
    with pytest.raises(ValueError, match="unknown arch"):
        device_for("wormhole")


def test_fused_locations_flatten_and_dedupe() -> None:
    a, b = NameLoc("a"), NameLoc("b")
    assert fuse_locations(a) == a
    assert fuse_locations(a, FusedLoc((b, a)), UnknownLoc()) == FusedLoc((a, b))
    assert FusedLoc((a, b)).names() == ("a", "b")


def test_block_insertion() -> None:
    block = Block()
    first = block.append(Operation("test.a"))
    Builder.before(first).create("test.b")
    assert [op.name for op in block.ops] == ["test.b", "test.a"]
    with pytest.raises(ValueError, match="already in a block"):
        block.append(first)


def test_im2col_rows_is_the_window_gather() -> None:
    """ttir.im2col_rows (the im2col op's fold and the host's `to_layout {window}`) against the definition: row
    (n, oh, ow), column (kernel row, kernel column, channel), the input element the window reads there or 0 in
    the padding; with strides, asymmetric pads and dilations."""
    import numpy as np

    from ttc.ir.dialects.ttir import im2col_rows, window_edge

    x = np.random.default_rng(0).standard_normal((2, 3, 7, 6)).astype(np.float32)
    kernel, strides, pads, dilations = (3, 2), (2, 1), (1, 0, 2, 1), (1, 2)
    got = im2col_rows(x, window_edge(kernel, strides, pads, dilations))
    oh = (7 + 1 + 2 - 3) // 2 + 1
    ow = (6 + 0 + 1 - 3) // 1 + 1
    assert got.shape == (2 * oh * ow, 3 * 2 * 3)
    for n in range(2):
        for i in range(oh):
            for j in range(ow):
                for a in range(3):
                    for b in range(2):
                        for c in range(3):
                            y, z = i * 2 - 1 + a, j - 0 + b * 2
                            want = x[n, c, y, z] if 0 <= y < 7 and 0 <= z < 6 else 0.0
                            assert got[(n * oh + i) * ow + j, (a * 2 + b) * 3 + c] == want
