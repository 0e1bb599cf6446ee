"""The `kv-cache` and `kv-cache-rows` passes (passes/kv_cache.py): a cache pair's concat(past, entry) becomes a
kv_write into a device state, the past input and the present output leave the function, and after tilize the
state is row-major between an untilize of the entry and a tilize for its readers. What the pass cannot turn
into a device cache is a `kv-cache:` error (the generator then keeps the cache on the host)."""

from __future__ import annotations

import pytest

from ttc.ir import parse_module
from ttc.ir.diagnostics import UserError
from ttc.ir.dialects import ttir
from ttc.ir.dialects.tt import E150
from ttc.passes import PassManager, parse_pipeline

PAST, ENTRY, CACHE = "tensor<1x2x31x32xf32>", "tensor<1x2x1x32xf32>", "tensor<1x2x32x32xf32>"


def module(body: str, axis: int = 2, cache: str = CACHE, past: str = PAST, entry: str = ENTRY):
    return parse_module(
        f"module attributes {{tt.device = {E150}}} {{\n"
        f'  func.func @main(%x: {entry} {{ttir.name = "x"}}, %past: {past} {{ttir.name = "past.0"}}) -> '
        f'({cache} {{ttir.name = "y"}}, {cache} {{ttir.name = "present.0"}}) {{\n'
        f'    %new = "ttir.relu"(%x) : ({entry}) -> {entry} loc("new")\n'
        f'    %cat = "ttir.concat"(%past, %new) {{axis = {axis}}} : ({past}, {entry}) -> {cache} loc("cat")\n'
        f"{body}"
        f"  }}\n}}\n")


ATTEND = (f'    %y = "ttir.relu"(%cat) : ({CACHE}) -> {CACHE} loc("attend")\n'
          f"    func.return %y, %cat : {CACHE}, {CACHE}\n")


def run(mod, pipeline='kv-cache{pairs="past.0=present.0"}'):
    PassManager(parse_pipeline(pipeline)).run(mod)
    return mod.function("main")


def test_the_concat_becomes_a_write_into_a_device_state() -> None:
    main = run(module(ATTEND))
    (kv,) = [op for op in main.body.ops if op.name == ttir.KV_WRITE.name]
    assert kv.attributes == {"state": "present.0", "position": "kv_position", "axis": 2}
    assert str(kv.result.type) == CACHE and kv.operands[0].owner.name == ttir.RELU.name
    assert not any(op.name == ttir.CONCAT.name for op in main.body.ops)
    assert [main.arg_attrs(i)["ttir.name"] for i in range(len(main.args))] == ["x"]
    assert [main.res_attrs(i)["ttir.name"] for i in range(len(main.type.results))] == ["y"]
    assert len(main.type.inputs) == 1 and len(main.return_op.operands) == 1
    (attend,) = kv.result.users
    assert attend.name == ttir.RELU.name and main.return_op.operands[0] is attend.result  # reads the whole cache


def test_rows_after_tilize() -> None:
    main = run(module(ATTEND), 'kv-cache{pairs="past.0=present.0" position=pos},tilize,kv-cache-rows')
    (kv,) = [op for op in main.body.ops if op.name == ttir.KV_WRITE.name]
    assert kv.attributes["position"] == "pos"
    assert "row_major" in str(kv.result.type) and "row_major" in str(kv.operands[0].type)
    untilize = kv.operands[0].owner
    assert untilize.name == ttir.TO_LAYOUT.name and "tile" in str(untilize.operands[0].type)
    (tilize,) = kv.result.users
    assert tilize.name == ttir.TO_LAYOUT.name and "tile" in str(tilize.result.type)


@pytest.mark.parametrize("body,pairs,message", [
    (f'    %u = "ttir.relu"(%past) : ({PAST}) -> {PAST} loc("use")\n' + ATTEND, "past.0=present.0",
     "input 'past.0' must feed exactly one concat"),
    (f'    %y = "ttir.relu"(%cat) : ({CACHE}) -> {CACHE} loc("attend")\n    func.return %cat, %y : {CACHE}, {CACHE}\n',
     "past.0=present.0", "output 'present.0' is not the concat"),
    (ATTEND, "nope=present.0", "no input 'nope'"),
    (ATTEND, "past.0=nope", "no output 'nope'"),
    (ATTEND, "past.0", "PAST_INPUT=PRESENT_OUTPUT"),
])
def test_what_cannot_be_a_device_cache_is_a_kv_cache_error(body, pairs, message) -> None:
    with pytest.raises(UserError, match=message) as info:
        run(module(body), f'kv-cache{{pairs="{pairs}"}}')
    assert info.value.message.startswith("kv-cache:")


def test_a_cache_growing_along_its_last_dim_is_refused() -> None:
    past, entry, cache = "tensor<1x2x32x31xf32>", "tensor<1x2x32x1xf32>", "tensor<1x2x32x32xf32>"
    body = f'    %y = "ttir.relu"(%cat) : ({cache}) -> {cache} loc("attend")\n    func.return %y, %cat : {cache}, {cache}\n'
    with pytest.raises(UserError, match=r"kv-cache: .* grows along its last dim"):
        run(module(body, axis=3, cache=cache, past=past, entry=entry))
