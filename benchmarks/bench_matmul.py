"""The native matmul unit's speed: `matmul_block` timings for the block shapes the models use.

Usage: python benchmarks/bench_matmul.py [--repeats N] [--calls N] [--check]

Per shape (Dst rows x cols tiles, `inner` K tiles, fidelity, Dst format, whether the operands are bf16 values
already): microseconds per call (the best of N timed loops of `--calls` calls, each through the Python binding,
which copies Dst: about a microsecond) and the GFLOP/s of the chunk products (2 * M * N * K per call, twice that at
HiFi3, which forms 32 products per chunk). The first shapes are the compute kernels' calls in GPT-2 and BERT
(seq 128): 4x1x4, 4x1x6 and 4x2x4 are nearly all of their matmul time; the operands are Gaussian bf16 values
scaled as there (in0 about N(0, 1), in1 about N(0, 0.1)), Dst bf16 values. Shapes with bf16 operands time
`matmul_block_bf16`, which reads packed bf16 tiles (a CB's pages) in place, as the executor calls it for bf16 CBs;
the others `matmul_block` on float tiles. `--check` compares every shape's result with the Python definition
(runtime/numerics.py) byte for byte first.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from ttc.runtime import numerics as N
from ttc.runtime.native_core import native

# rows, cols, inner, fidelity, Dst format, bf16 operands; the model shapes first (calls per BERT inference)
SHAPES: list[tuple[int, int, int, int, str, bool]] = [
    (4, 1, 4, 4, "bf16", True),  # 6912 calls in BERT, 16362 in GPT-2
    (4, 1, 6, 4, "bf16", True),  # 4608
    (4, 2, 4, 4, "bf16", True),  # 3456
    (1, 4, 2, 4, "bf16", True),  # 576
    (1, 2, 4, 4, "bf16", True),  # 576
    (1, 1, 4, 4, "bf16", False),  # 776 (reduce-like, f32 operands)
    (1, 1, 5, 4, "bf16", False),  # 1000
    # other fidelities, Dst formats and a large block, for coverage
    (4, 2, 4, 1, "bf16", True),
    (4, 2, 4, 2, "bf16", True),
    (4, 2, 4, 3, "bf16", True),
    (4, 2, 4, 4, "f16", True),
    (8, 1, 8, 4, "bf16", True),
]


def operands(rows: int, cols: int, inner: int, dst_format: str, seed: int = 0
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dst, in0 and in1 tiles ([count, 32, 32] float32) with the models' typical magnitudes."""
    rng = np.random.default_rng(seed)
    a = N.bf16_round(rng.standard_normal((rows * inner, 32, 32)))
    b = N.bf16_round(rng.standard_normal((inner * cols, 32, 32)) * 0.1)
    dst = N.dst_round(rng.standard_normal((rows * cols, 32, 32)), dst_format)
    return (np.ascontiguousarray(dst, np.float32), np.ascontiguousarray(a, np.float32),
            np.ascontiguousarray(b, np.float32))


def block_call(dst: np.ndarray, a: np.ndarray, b: np.ndarray, rows: int, cols: int, inner: int, fidelity: int,
               dst_format: str, bf16: bool) -> Callable[[], np.ndarray]:
    """The timed call: matmul_block_bf16 on packed tiles for bf16 operands (the executor's path), else
    matmul_block on float tiles."""
    if bf16:
        code = native.FORMAT_CODES["bf16"]
        a_pages, b_pages = (native.pack_tiles(x, code).reshape(-1, 2048) for x in (a, b))
        return lambda: native.matmul_block_bf16(dst, a_pages, b_pages, rows, cols, inner, fidelity, dst_format)
    return lambda: native.matmul_block(dst, a, b, rows, cols, inner, fidelity, dst_format, False)


def check(rows: int, cols: int, inner: int, fidelity: int, dst_format: str, bf16: bool) -> bool:
    """Whether the native result equals the definition's, byte for byte."""
    dst, a, b = operands(rows, cols, inner, dst_format, seed=1)
    want = N.matmul_block_accumulate(dst.reshape(rows, cols, 32, 32), a.reshape(rows, inner, 32, 32),
                                     b.reshape(inner, cols, 32, 32), fidelity, bf16_operands=bf16,
                                     dst_format=dst_format)
    got = block_call(dst, a, b, rows, cols, inner, fidelity, dst_format, bf16)()
    return bool(np.array_equal(got.reshape(want.shape).view(np.uint32), want.view(np.uint32)))


def seconds_per_call(rows: int, cols: int, inner: int, fidelity: int, dst_format: str, bf16: bool,
                     calls: int, repeats: int) -> float:
    """The best of `repeats` timed loops of `calls` calls, per call."""
    dst, a, b = operands(rows, cols, inner, dst_format)
    block = block_call(dst, a, b, rows, cols, inner, fidelity, dst_format, bf16)
    block()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            block()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--check", action="store_true", help="compare each shape with the Python definition first")
    args = parser.parse_args()
    header = f"{'rows':>4} {'cols':>4} {'inner':>5} {'fid':>3} {'dst':>4} {'bf16':>4} {'us/call':>8} {'GFLOP/s':>8}"
    if args.check:
        header += f" {'same bits':>9}"
    print(header)
    print("-" * len(header))
    for rows, cols, inner, fidelity, dst_format, bf16 in SHAPES:
        seconds = seconds_per_call(rows, cols, inner, fidelity, dst_format, bf16, args.calls, args.repeats)
        flops = 2 * (rows * 32) * (cols * 32) * (inner * 32) * (2 if fidelity == 3 else 1)
        line = (f"{rows:4d} {cols:4d} {inner:5d} {fidelity:3d} {dst_format:>4} {'yes' if bf16 else 'no':>4} "
                f"{seconds * 1e6:8.1f} {flops / seconds * 1e-9:8.1f}")
        if args.check:
            line += f" {'yes' if check(rows, cols, inner, fidelity, dst_format, bf16) else 'NO':>9}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
