"""Lowering of laid-out, gridded ttir ops to kernel programs (`ttkernel`) and the host schedule (`ttmetal`).

Importing the package registers the `lower-to-kernels` pass.
"""

from ttc.backend import lower
from ttc.backend.lower import LowerToKernels

__all__ = ["LowerToKernels", "lower"]
