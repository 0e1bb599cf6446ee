"""Every dialect, one file each; importing this package registers them all."""

from ttc.ir.dialects import builtin, tt, ttir, ttkernel, ttmetal

__all__ = ["builtin", "tt", "ttir", "ttkernel", "ttmetal"]
