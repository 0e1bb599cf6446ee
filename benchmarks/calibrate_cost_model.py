"""Calibration of the cost model (ttc.ir.target) against measured Grayskull figures (docs/cost-model.md).

Usage: python benchmarks/calibrate_cost_model.py [--no-ttc]

1. Matmuls (docs/grayskull.md section 9, the MatMul study's default tt-metal matmul on an e75, 8 x 8 cores,
   all operands in DRAM): square sizes 2048, 4096 and 8192 in BF16 at HiFi4 and HiFi2 and BFP8 at HiFi2 and
   LoFi. Each point is modelled from the counts of the kernel that was measured: tt-metal's 2-D reuse-multicast
   matmul, each core computing an (M/8) x (N/8) block of output tiles over all of K, every operand tile read
   from DRAM once and multicast to the 8 cores of its row (in0) or column (in1), the result written once, all
   in the measured format. The target's cost of those counts on the e75 descriptor (1 GHz) is the device time;
   the measurement was timed on the host around each matmul, which adds the per-operation host dispatch the
   same study measured as the flat floor of sizes 256 to 1024 (211-231 us, taken as 220 us). Sizes up to 1024
   sit on that floor and FP32 / BFP4 are not formats ttc emits, so they are left out.
2. DRAM reads (section 10, ttPEAK on an e75): every core reads a 16 MiB interleaved buffer tile by tile,
   one core alone and all 88 together; the modelled rate is the bytes over the modelled time without launch
   (ttPEAK subtracts its launch latency). These are the measurements the DRAM parameters come from, so this
   checks the model uses them as documented, not that they predict anything new. The adjacent-core NoC read
   is printed beside them (a check of the 32 B/cycle link figure).
3. With ttc: the same matmuls compiled by ttc (e75, at most 64 cores, B a weight: `--dtype bfp8_b` stores it in
   BFP8, A stays BF16) and counted from the compiled kernels without running them (`ttc profile --static`).
   ttc's kernels read every operand tile per core (no multicast), so they are modelled slower than the
   measured kernel; an 8192^3 product does not fit L1 in ttc's kernel (its partial sums hold a whole block of
   output tiles per core) and is reported as such.

Every parameter is a field of the device descriptor (`#tt.device`), none is per point. Prints modelled vs
measured and the signed error ((modelled - measured) / measured); exits 1 when a calibration point is off by
more than 25 %.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

import numpy as np

from ttc.ir import target
from ttc.ir.dialects.tt import E75, DeviceAttr

HOST_DISPATCH_US = 220.0  # the MatMul study's per-operation floor (sizes 256-1024 all take 211-231 us)
GRID = (8, 8)
TOLERANCE = 0.25

# docs/grayskull.md section 9: results/oob_pw_0.csv, TFLOPS
MEASURED_MATMUL = {
    ("bf16", "hifi4"): {2048: 17.38, 4096: 22.36, 8192: 24.49},
    ("bf16", "hifi2"): {2048: 18.88, 4096: 29.81, 8192: 33.69},
    ("bfp8_b", "hifi2"): {2048: 26.34, 4096: 40.47, 8192: 40.33},
    ("bfp8_b", "lofi"): {2048: 28.09, 4096: 50.98, 8192: 46.78},
}
# docs/grayskull.md section 10: ttPEAK, the runs at commits 3be913e and c3467f2, GB/s
MEASURED_DRAM_READ = {1: (24.28, 22.99), 88: (67.28, 67.45)}
MEASURED_NOC_READ = (38.50, 38.47)  # adjacent cores, at the 1.3 GHz AI clock ttPEAK reported
TTPEAK_CLOCK_MHZ = 1300
TTPEAK_BYTES_PER_CORE = 16 << 20  # a 16 MiB buffer, 8192 bf16 tiles


@dataclass(frozen=True)
class Point:
    name: str
    measured: float | tuple[float, ...]
    modelled: float
    unit: str
    bound: str

    def errors(self) -> tuple[float, ...]:
        measured = self.measured if isinstance(self.measured, tuple) else (self.measured,)
        return tuple((self.modelled - m) / m for m in measured)


def multicast_matmul_counts(n: int, fmt: str, fidelity: str, grid: tuple[int, int] = GRID) -> target.Counts:
    """The counts of tt-metal's 2-D reuse-multicast matmul of two n x n matrices on `grid` (x, y)."""
    tiles = n // 32
    gx, gy = grid
    pcm, pcn = tiles // gy, tiles // gx
    tile = target.TILE_BYTES[fmt]
    operand_tiles = 2 * tiles * tiles  # A and B, each tile read from DRAM once and multicast
    received = (pcm + pcn) * tiles * tile  # per core: its rows of A and its columns of B
    return target.Counts(
        cores=gx * gy,
        tiles=((target.matmul_key(fidelity, fmt, fmt), pcm * pcn * tiles),),
        dram_read=operand_tiles * tile,
        dram_written=tiles * tiles * tile,
        noc_bytes=received + pcm * pcn * tile,
        link_bytes=max(pcm, pcn) * tiles * tile,  # a row (column) link carries one band of A (B)
        mcast_fanout=max(gx, gy),
    )


def modelled_tflops(device: DeviceAttr, n: int, cycles: float, host_us: float = 0.0) -> tuple[float, float]:
    seconds = target.time_us(device, cycles) * 1e-6 + host_us * 1e-6
    return 2 * n ** 3 / seconds / 1e12, seconds


def matmul_points(device: DeviceAttr) -> list[Point]:
    points = []
    for (fmt, fidelity), by_size in MEASURED_MATMUL.items():
        for n, measured in by_size.items():
            cost = target.cost(device, multicast_matmul_counts(n, fmt, fidelity))
            tflops, _ = modelled_tflops(device, n, cost.cycles, HOST_DISPATCH_US)
            label = {"bf16": "BF16", "bfp8_b": "BFP8"}[fmt]
            points.append(Point(f"matmul {n} {label} {fidelity}", measured, tflops, "TFLOPS", cost.bound))
    return points


def dram_points(device: DeviceAttr) -> list[Point]:
    points = []
    for cores, measured in MEASURED_DRAM_READ.items():
        counts = target.Counts(cores=cores, dram_read=cores * TTPEAK_BYTES_PER_CORE, noc_bytes=TTPEAK_BYTES_PER_CORE)
        cost = target.cost(device, counts)
        busy = cost.cycles - cost.launch  # ttPEAK subtracts the launch latency
        seconds = target.time_us(device, busy) * 1e-6
        points.append(Point(f"DRAM read, {cores} core{'s' if cores > 1 else ''}", measured,
                            counts.dram_bytes / seconds / 1e9, "GB/s", cost.bound))
    noc = device.noc_bytes_per_cycle * TTPEAK_CLOCK_MHZ * 1e6 / 1e9  # the link at ttPEAK's clock
    points.append(Point("NoC read, adjacent cores", MEASURED_NOC_READ, noc, "GB/s", "noc"))
    return points


def ttc_matmul(n: int, fmt: str, fidelity: str) -> tuple[str, float]:
    """ttc's own kernel for the point: (what happened, modelled TFLOPS without host dispatch)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from ttc.compiler import CompileOptions, compile_model
    from ttc.ir.diagnostics import UserError
    from ttc.profile import static_profile

    weight = numpy_helper.from_array(np.full((n, n), 0.01, np.float32), "b")
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"], name="mm")], "mm",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)

    class Limited(CompileOptions):
        @property
        def pipeline_spec(self) -> str:
            spec = super().pipeline_spec
            return spec.replace(f"grid{{math-fidelity={fidelity}}}", f"grid{{math-fidelity={fidelity} max-cores=64}}")

    start = time.perf_counter()
    try:
        compiled = compile_model(model, Limited(arch="e75", dtype=fmt, math_fidelity=fidelity))
    except UserError as error:
        return f"not compiled: {str(error).split(';')[0][:70]}", float("nan")
    (profile,) = static_profile(compiled.module, compiled.device_weights)
    elapsed = time.perf_counter() - start
    tflops, _ = modelled_tflops(E75, n, profile.cycles)
    return f"{profile.cores} cores, {profile.bound}-bound, compiled and counted in {elapsed:.1f} s", tflops


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-ttc", action="store_true", help="skip compiling ttc's own matmuls")
    args = parser.parse_args()
    device = E75
    print(f"device: e75 at {device.clock_mhz} MHz; matmul_efficiency {device.matmul_efficiency}, "
          f"unpack_bytes_per_cycle {device.unpack_bytes_per_cycle}, dram_efficiency {device.dram_efficiency} "
          f"(achievable {device.dram_gbps * device.dram_efficiency:.1f} GB/s), dram_core_gbps "
          f"{device.dram_core_gbps}; host dispatch of the measured matmuls {HOST_DISPATCH_US:.0f} us")
    print()
    header = f"{'point':30} {'measured':>15} {'modelled':>9} {'unit':6} {'error':>15}  bound"
    print(header)
    print("-" * len(header))
    worst = 0.0
    for point in matmul_points(device) + dram_points(device):
        measured = point.measured if isinstance(point.measured, tuple) else (point.measured,)
        errors = point.errors()
        calibration = not point.name.startswith("NoC")
        if calibration:
            worst = max(worst, *(abs(e) for e in errors))
        print(f"{point.name:30} {' / '.join(f'{m:.2f}' for m in measured):>15} {point.modelled:9.2f} "
              f"{point.unit:6} {' / '.join(f'{100 * e:+.1f}%' for e in errors):>15}  {point.bound}"
              + ("" if calibration else "  (check only)"))
    print()
    print(f"worst calibration error {100 * worst:.1f}% (target: within {100 * TOLERANCE:.0f}%)")
    if not args.no_ttc:
        print()
        print("ttc's own kernels for the same matmuls (e75, <= 64 cores, static count; device time, no host):")
        for (fmt, fidelity), by_size in MEASURED_MATMUL.items():
            for n, measured in by_size.items():
                what, tflops = ttc_matmul(n, fmt, fidelity)
                label = {"bf16": "BF16", "bfp8_b": "BFP8 weight"}[fmt]
                shown = f"{tflops:7.2f} TFLOPS" if tflops == tflops else "      -       "
                print(f"  matmul {n} {label:11} {fidelity:5}: {shown} (measured kernel {measured:.2f})  {what}")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
