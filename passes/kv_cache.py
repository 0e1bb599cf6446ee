"""`kv-cache` and `kv-cache-rows`: a causal LM's key/value cache kept in device DRAM across runs.

A decode step of a model exported with cache inputs computes `present = concat(past, entry)` along the
cache axis for every cache pair, and attends over `present`. Compiled as it stands, every step uploads the
whole `past` and reads `present` back. With `kv-cache{pairs="past=present,..." position=NAME}` (before
`tilize`) each such concat becomes `ttir.kv_write(entry) {state = present, position = NAME}`: the cache is a
device buffer that persists across runs (the *state* `present`), this call's entry is written into it at the
runtime scalar NAME (a value given to each run, substituted into the writer kernel's runtime arguments),
and attention reads the whole buffer, whose unwritten slots the model's attention mask hides. The past input
and the present output leave the function: a run neither uploads the cache nor reads it back.

The result has the concat's shape, so the cache holds `past + entry` positions (the caller picks the past
length, i.e. the cache's capacity), and a position is a slot index: the rewrite assumes what a generator that
files each token's entry at its position ensures, that slot j holds the entry of position j. It is
therefore an opt-in pass for generation, never part of the default pipeline.

Layout (`kv-cache-rows`, after `tilize`): the cache is kept row-major, a page per (batch, head, position)
row, so one position's entry is whole pages and the write moves just those (`passes/ops/kv_write.py`);
the entry is untilized on the device before the write and the cache tilized for its readers after it (a
tile-layout cache would need a read-modify-write of the 32-row tile holding the position).
"""

from __future__ import annotations

from dataclasses import dataclass

from ttc.ir.core import Function, Module
from ttc.ir.diagnostics import UserError
from ttc.ir.dialects import ttir
from ttc.ir.dialects.tt import LayoutAttr
from ttc.ir.dialects.ttir import normalize_axis
from ttc.ir.dialects.ttmetal import STATE_ATTR
from ttc.ir.types import FunctionType, TensorType
from ttc.passes.manager import Pass, register_pass
from ttc.passes.rewriter import PatternRewriter

ROW_MAJOR_DRAM = LayoutAttr("row_major", "dram", "interleaved")
STATE = STATE_ATTR  # the kv_write attribute naming its state, which lower-to-kernels puts on its create_buffer


def parse_pairs(text: str) -> list[tuple[str, str]]:
    pairs = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        past, sep, present = item.partition("=")
        if not sep or not past or not present:
            raise UserError(f"kv-cache: pairs take PAST_INPUT=PRESENT_OUTPUT items, not {item!r}")
        pairs.append((past, present))
    if not pairs:
        raise UserError("kv-cache: no cache pairs given (pairs=\"PAST=PRESENT,...\")")
    return pairs


def _named(func: Function, results: bool) -> dict[str, int]:
    count = len(func.type.results if results else func.type.inputs)
    attrs = func.res_attrs if results else func.arg_attrs
    return {attrs(i).get("ttir.name", ""): i for i in range(count)}


def device_cache(func: Function, pairs: list[tuple[str, str]], position: str, rewriter: PatternRewriter) -> None:
    """Each pair's concat(past, entry) -> kv_write(entry); the past input and present output removed."""
    args, results = _named(func, results=False), _named(func, results=True)
    ret = func.return_op
    for past, present in pairs:
        if past not in args:
            raise UserError(f"kv-cache: the function has no input '{past}' (inputs: {', '.join(args)})")
        if present not in results:
            raise UserError(f"kv-cache: the function has no output '{present}' (outputs: {', '.join(results)})")
        arg = func.args[args[past]]
        users = arg.users
        concat = users[0] if len(users) == 1 else None
        if concat is None or concat.name != ttir.CONCAT.name or len(concat.operands) != 2 \
                or concat.operands[0] is not arg or concat.operands[1] is arg:
            what = ", ".join(sorted({u.name for u in users})) or "nothing"
            raise UserError(f"kv-cache: input '{past}' must feed exactly one concat(past, new entry) (the cache "
                            f"update), but it is used by {what}; such a model runs with its cache on the host")
        value = ret.operands[results[present]]
        if value is not concat.result:
            raise UserError(f"kv-cache: output '{present}' is not the concat of input '{past}' with the new entry")
        cache = concat.result.type
        assert isinstance(cache, TensorType)
        axis = normalize_axis(concat.attr("axis"), cache.rank)
        if axis == cache.rank - 1:
            raise UserError(f"kv-cache: the cache of input '{past}' grows along its last dim ({cache}), so a "
                            "position's entry is no whole row; the device cache needs the position axis before the "
                            "feature axis")
        kv = rewriter.create_before(concat, ttir.KV_WRITE.name, [concat.operands[1]], [cache],
                                    {STATE: present, "position": position, "axis": axis})
        rewriter.replace_op(concat, kv.result)
    drop_results = sorted(results[present] for _, present in pairs)
    drop_args = sorted(args[past] for past, _ in pairs)
    keep_results = [i for i in range(len(ret.operands)) if i not in drop_results]
    with rewriter.modify_op(ret):
        ret.set_operands([ret.operands[i] for i in keep_results])
    keep_args = [i for i in range(len(func.args)) if i not in drop_args]
    body = func.body
    body.args = [body.args[i] for i in keep_args]
    for index, arg in enumerate(body.args):
        arg.index = index
    ftype = func.type
    func.set_type(FunctionType(tuple(ftype.inputs[i] for i in keep_args),
                               tuple(ftype.results[i] for i in keep_results)))
    for key, keep in (("arg_attrs", keep_args), ("res_attrs", keep_results)):
        attrs = func.op.attributes.get(key)
        if attrs:
            func.op.attributes[key] = tuple(attrs[i] if i < len(attrs) else {} for i in keep)


@register_pass
@dataclass
class KVCache(Pass):
    """Keep the cache pairs' caches in device DRAM across runs, written at a runtime position (generation)."""

    name = "kv-cache"
    pairs: str = ""  # "past_key_values.0.key=present.0.key,..."
    position: str = "kv_position"  # the runtime scalar the writes go to

    def run(self, module: Module) -> None:
        pairs = parse_pairs(self.pairs)
        if not self.position:
            raise UserError("kv-cache: the runtime position needs a name (position=NAME)")
        device_cache(module.function("main"), pairs, self.position, PatternRewriter())


def row_major_cache(func: Function, rewriter: PatternRewriter) -> None:
    for op in list(func.body.ops):
        if op.name != ttir.KV_WRITE.name:
            continue
        entry, cache = op.operands[0].type, op.result.type
        assert isinstance(entry, TensorType) and isinstance(cache, TensorType)
        if not isinstance(cache.encoding, LayoutAttr) or cache.encoding.tensor_layout != "tile":
            continue  # rows already
        rows = rewriter.create_before(op, ttir.TO_LAYOUT.name, [op.operands[0]],
                                      [entry.with_encoding(ROW_MAJOR_DRAM)], loc=op.loc)
        with rewriter.modify_op(op):
            op.set_operand(0, rows.result)
        users = list(op.result.uses)
        op.result.type = cache.with_encoding(ROW_MAJOR_DRAM)
        following = func.body.ops[func.body.ops.index(op) + 1]
        tiles = rewriter.create_before(following, ttir.TO_LAYOUT.name, [op.result], [cache], loc=op.loc)
        for user, index in users:
            with rewriter.modify_op(user):
                user.set_operand(index, tiles.result)


@register_pass
@dataclass
class KVCacheRows(Pass):
    """After tilize: the device caches row-major (a page per position), the entry untilized, the cache tilized."""

    name = "kv-cache-rows"

    def run(self, module: Module) -> None:
        for func in module.functions:
            row_major_cache(func, PatternRewriter())
