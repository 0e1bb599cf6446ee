"""The backend's face to the driver: lowering gridded ttir ops to kernel programs (`ttkernel`) and the host
schedule (`ttmetal`).

The lowering lives with the passes (passes/lower_to_kernels.py drives it, and each device op's kernels are
built by its kind in passes/ops/), so that imports point one way: ir <- passes <- backend <- driver. This
package re-exports the pass for the driver and for code written against the old place.
"""

from ttc.passes.lower_to_kernels import LowerToKernels, lower_function

__all__ = ["LowerToKernels", "lower_function"]
