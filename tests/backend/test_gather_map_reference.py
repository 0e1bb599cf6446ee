"""The tile gather map of a movement chain (passes/ops/gather_map.py labels every element with its tile and
in-tile position and moves the labels) against a plain reference written from the definition: move element
ids, then look at each output tile element by element."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, event, example, given, settings
from hypothesis import strategies as st

from ttc.passes.ops import gather_map
from ttc.passes.ops.gather_map import Gather, gather_map_of_inputs

T = 32


def reference(in_shapes: tuple[tuple[int, ...], ...], steps: tuple) -> tuple[list[int], list[int], bool] | None:
    """(source tile per output tile, source input per output tile, transposed), or None if not tile-granular."""
    starts = np.cumsum([0, *(math.prod(s) for s in in_shapes)])
    parts = [np.arange(a, a + math.prod(s)).reshape(s) for a, s in zip(starts, in_shapes, strict=False)]
    flat = parts[0]
    for kind, arg in steps:
        if kind == "concat":
            flat = np.concatenate(parts, axis=arg[0])
        elif kind == "transpose":
            flat = np.transpose(flat, arg)
        elif kind == "slice":
            flat = flat[tuple(slice(b, e, s) for b, e, s in zip(*arg, strict=True))]
        else:
            flat = flat.reshape(arg)

    def matrix(shape: tuple[int, ...]) -> tuple[int, int, int]:
        shape = (1, 1, *shape)[-max(2, len(shape)) - 1:] if len(shape) < 2 else shape
        return math.prod(shape[:-2]), shape[-2], shape[-1]

    out_b, out_r, out_c = matrix(flat.shape)
    out = flat.reshape(out_b, out_r, out_c)
    sources, inputs = [], []
    copy_ok = swap_ok = True
    for b in range(out_b):
        for tr in range(-(-out_r // T)):
            for tc in range(-(-out_c // T)):
                found = set()
                for i in range(T):
                    for j in range(T):
                        r, c = tr * T + i, tc * T + j
                        if r >= out_r or c >= out_c:
                            continue
                        e = int(out[b, r, c])
                        k = int(np.searchsorted(starts, e, side="right") - 1)
                        _, sr, sc = matrix(in_shapes[k])
                        local = e - starts[k]
                        bb, rr, cc = local // (sr * sc), local // sc % sr, local % sc
                        tile = (bb * -(-sr // T) + rr // T) * -(-sc // T) + cc // T
                        copy_ok &= (rr % T, cc % T) == (i, j)
                        swap_ok &= (rr % T, cc % T) == (j, i)
                        found.add((k, tile))
                if len(found) != 1:
                    return None
                k, tile = next(iter(found))
                _, sr, sc = matrix(in_shapes[k])
                rt, ct = -(-sr // T), -(-sc // T)
                real_src = min(sr - (tile // ct % rt) * T, T) * min(sc - (tile % ct) * T, T)
                real_out = min(out_r - tr * T, T) * min(out_c - tc * T, T)
                if real_src != real_out:
                    return None
                sources.append(tile)
                inputs.append(k)
    if not (copy_ok or swap_ok):
        return None
    return sources, inputs, not copy_ok


@st.composite
def chains(draw):
    rank = draw(st.integers(1, 4))
    shape = tuple(draw(st.sampled_from([1, 2, 3, 5, 31, 32, 33, 40, 64, 70])) for _ in range(rank))
    assume(math.prod(shape) <= 6000)
    n = 2 if draw(st.booleans()) and rank >= 1 else 1
    in_shapes = (shape,) * n
    steps = []
    cur = shape
    if n == 2:
        axis = draw(st.integers(0, rank - 1))
        steps.append(("concat", (axis,)))
        cur = tuple(d * 2 if a == axis else d for a, d in enumerate(shape))
    for _ in range(draw(st.integers(1, 2))):
        kind = draw(st.sampled_from(["transpose", "slice", "reshape"]))
        if kind == "transpose":
            perm = tuple(draw(st.permutations(range(len(cur)))))
            steps.append(("transpose", perm))
            cur = tuple(cur[p] for p in perm)
        elif kind == "slice":
            begins = tuple(draw(st.integers(0, d - 1)) for d in cur)
            ends = tuple(draw(st.integers(b + 1, d)) for b, d in zip(begins, cur, strict=True))
            stride = tuple(draw(st.sampled_from([1, 1, 2])) for _ in cur)
            steps.append(("slice", (begins, ends, stride)))
            cur = tuple(len(range(b, e, s)) for b, e, s in zip(begins, ends, stride, strict=True))
        else:
            size = math.prod(cur)
            split = [d for d in (1, 2, 32, 64) if size % d == 0]
            d = draw(st.sampled_from(split))
            cur = (size // d, d) if d > 1 else (size,)
            steps.append(("reshape", cur))
    return in_shapes, tuple(steps)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(chains())
@example((((64, 96),), (("transpose", (1, 0)),)))
@example((((33, 40),), (("transpose", (1, 0)),)))
@example((((2, 64, 70), (2, 64, 70)), (("concat", (1,)), ("transpose", (0, 2, 1)))))
@example((((1, 3, 40, 40),), (("transpose", (1, 0, 3, 2)),)))
@example((((2, 64, 96),), (("slice", ((0, 32, 0), (2, 64, 96), (1, 1, 1))), ("transpose", (0, 2, 1)))))
def test_gather_map_matches_the_element_by_element_definition(case) -> None:
    in_shapes, steps = case
    got = gather_map_of_inputs(in_shapes, steps)
    want = reference(in_shapes, steps)
    event("refused" if want is None else "transposed" if want[2] else "copied")
    if want is None:
        assert isinstance(got, str), (in_shapes, steps)
        return
    assert isinstance(got, Gather), (in_shapes, steps, got)
    sources, inputs, transposed = want
    assert got.source.tolist() == sources
    assert (got.inputs.tolist() if got.inputs is not None else [0] * len(sources)) == inputs
    assert got.transposed == transposed


@settings(max_examples=200, deadline=None, derandomize=True)
@given(chains(), st.sampled_from([1, 2, 3]))
@example((((64, 96),), (("transpose", (1, 0)),)), 1)
@example((((1, 33),), (("transpose", (1, 0)),)), 1)  # the last band's one tile holds one element: copy and transpose
@example((((2, 64, 70), (2, 64, 70)), (("concat", (1,)), ("transpose", (0, 2, 1)))), 2)
def test_the_chunked_tile_check_gives_the_whole_check_answer(case, chunk_tiles: int) -> None:
    """The tile check runs over chunks of CHECK_TILES output tiles (bands of tile rows, or groups of batches):
    with chunks of 1-3 tiles (a copy-or-transpose answer combined over chunks, where a tile holding one element is
    both) it must still match the element-by-element definition."""
    in_shapes, steps = case
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gather_map, "CHECK_TILES", chunk_tiles)
        got = gather_map.gather_map_of_inputs.__wrapped__(in_shapes, steps)
    want = reference(in_shapes, steps)
    if want is None:
        assert isinstance(got, str), (in_shapes, steps)
        return
    assert isinstance(got, Gather), (in_shapes, steps, got)
    assert got.source.tolist() == want[0]
    assert got.transposed == want[2]
