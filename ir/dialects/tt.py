"""The `tt` dialect: attributes shared by every level of the compiler.

- `#tt.device<...>`: the device descriptor (one per card, figures from docs/grayskull.md). It is
  printed in the module's attributes, so passes and the emulator read the very same numbers.
- `#tt.grid<XxY>`: a rectangle of Tensix cores. Grids are written x (columns) by y (rows), as
  tt-metal's CoreCoord and the "12x9 compute grid" of an e150.
- `#tt.layout<...>`: where and how a tensor lives (tile / row-major, DRAM / L1, interleaved or
  sharded, grid and shard shape). The data format is the tensor's element type, never repeated here.
- `#tt.weight<"name">`: defined with the other attributes in `ttc.ir.attributes`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ttc.ir.attributes import DialectAttribute, Dims, Ident, dialect_attribute, positional
from ttc.ir.dialect import Dialect


@dialect_attribute("tt", "grid")
@dataclass(frozen=True)
class GridAttr(DialectAttribute):
    """A core grid `#tt.grid<4x2>`: 4 columns (x) by 2 rows (y)."""

    x: int
    y: int

    def params(self) -> tuple[list[Any], dict[str, Any]]:
        return [Dims((self.x, self.y))], {}

    @classmethod
    def from_params(cls, args: list[Any], kwargs: dict[str, Any]) -> GridAttr:
        if kwargs or len(args) != 1 or not isinstance(args[0], Dims) or len(args[0]) != 2:
            raise ValueError("#tt.grid takes one XxY parameter, e.g. #tt.grid<4x2>")
        return cls(int(args[0][0]), int(args[0][1]))

    @property
    def num_cores(self) -> int:
        return self.x * self.y

    def __str__(self) -> str:
        return f"#tt.grid<{self.x}x{self.y}>"


TENSOR_LAYOUTS = ("tile", "row_major")
MEMORY_SPACES = ("dram", "l1", "system")
MEMORY_LAYOUTS = ("interleaved", "height_sharded", "width_sharded", "block_sharded")


@dialect_attribute("tt", "layout")
@dataclass(frozen=True)
class LayoutAttr(DialectAttribute):
    """`#tt.layout<tile, dram, interleaved>` or, sharded in L1,
    `#tt.layout<tile, l1, block_sharded, grid = 4x2, shard = 2x3>` (shard in tiles, rows x cols)."""

    tensor_layout: str = positional()
    memory_space: str = positional()
    memory_layout: str = positional()
    grid: Dims | None = None
    shard: Dims | None = None

    def __post_init__(self) -> None:
        for value, choices in ((self.tensor_layout, TENSOR_LAYOUTS), (self.memory_space, MEMORY_SPACES),
                               (self.memory_layout, MEMORY_LAYOUTS)):
            if value not in choices:
                raise ValueError(f"'{value}' is not one of {', '.join(choices)}")
        object.__setattr__(self, "tensor_layout", Ident(self.tensor_layout))
        object.__setattr__(self, "memory_space", Ident(self.memory_space))
        object.__setattr__(self, "memory_layout", Ident(self.memory_layout))
        if self.grid is not None:
            object.__setattr__(self, "grid", Dims(self.grid))
        if self.shard is not None:
            object.__setattr__(self, "shard", Dims(self.shard))


@dialect_attribute("tt", "device")
@dataclass(frozen=True)
class DeviceAttr(DialectAttribute):
    """The device descriptor of one Grayskull card; every figure here is sourced in docs/grayskull.md
    (section 11 maps each field to its section) and docs/cost-model.md (the calibrated efficiencies).

    Cycle costs are per 32x32 tile and include unpack, math and pack (Buda's netlist analyzer). The cost
    model (`ttc.ir.target.cost`) reads every constant it uses from here, launch overheads included, so a
    printed module carries the whole model.
    """

    arch: str
    worker_grid: Dims  # Tensix cores enabled, x by y
    compute_grid: Dims  # what programs may use (tt-metal's compute_with_storage_grid_size)
    clock_mhz: int
    l1_size: int
    l1_reserved: int  # first byte free for circular buffers (firmware below it)
    l1_alignment: int
    dram_channels: int
    dram_channel_size: int
    dram_alignment: int
    dram_gbps: float
    noc_bytes_per_cycle: int
    noc_max_packet: int
    noc_hop_cycles: int
    noc_write_startup_cycles: int
    dst_tiles: int  # Dst register tiles; half of them usable per acquire with double buffering
    num_cbs: int
    matmul_cycles_per_phase: int  # one 32x32x32 tile matmul per math-fidelity phase
    matmul_efficiency: float  # MVMUL utilisation of a streaming matmul kernel on a full grid (measured)
    unpack_bytes_per_cycle: int  # matmul operand tiles unpacked from L1 into the source registers (calibrated)
    dram_efficiency: float  # the fraction of dram_gbps all cores reach reading together (measured)
    dram_core_gbps: float  # what one core reaches reading DRAM alone (measured)
    launch_cycles: int  # per program: dispatch and kernel start on the device
    launch_cycles_per_core: int  # per core of the program: runtime arguments and launch messages
    tile_op_cycles: dict[str, int] = field(hash=False)
    sfpu_cost_keys: dict[str, str] = field(hash=False)  # SFPU functions costed like a tile_op_cycles entry

    def __post_init__(self) -> None:
        object.__setattr__(self, "worker_grid", Dims(self.worker_grid))
        object.__setattr__(self, "compute_grid", Dims(self.compute_grid))
        for name in ("dram_gbps", "matmul_efficiency", "dram_efficiency", "dram_core_gbps"):
            object.__setattr__(self, name, float(getattr(self, name)))

    def __hash__(self) -> int:
        return hash(str(self))

    @property
    def compute_cores(self) -> int:
        return self.compute_grid[0] * self.compute_grid[1]

    @property
    def l1_free(self) -> int:
        return self.l1_size - self.l1_reserved

    @property
    def dram_size(self) -> int:
        return self.dram_channels * self.dram_channel_size

    @property
    def dram_bytes_per_cycle(self) -> float:
        """The specified DRAM bandwidth in bytes per AI-clock cycle."""
        return self.dram_gbps * 1e9 / (self.clock_mhz * 1e6)

    @property
    def achievable_dram_bytes_per_cycle(self) -> float:
        """What all cores reading together reach (dram_efficiency of the specified bandwidth)."""
        return self.dram_bytes_per_cycle * self.dram_efficiency

    @property
    def dram_core_bytes_per_cycle(self) -> float:
        """What one core reaches on its own."""
        return self.dram_core_gbps * 1e9 / (self.clock_mhz * 1e6)


# Buda netlist analyzer per-tile cycles (unpack + math + pack), docs/grayskull.md section 3 "Compute".
_TILE_OP_CYCLES = {
    "add": 250, "sub": 250, "mul": 200, "datacopy": 150, "exp": 450, "recip": 950, "log": 1425,
    "sqrt": 250, "sigmoid": 225, "gelu": 350, "matmul_mac": 50, "matmul_out": 16,
}
# SFPU functions the netlist analyzer has no figure for, costed like the nearest one it has (ttc); `default`:
# one simple SFPU pass (relu, neg, abs, square, the *_scalar forms and the selects), costed like a multiply.
_SFPU_COST_KEYS = {
    "rsqrt": "recip", "tanh": "sigmoid", "gelu_tanh": "gelu", "erf": "gelu", "pow_scalar": "exp",
    "rpow_scalar": "exp", "softplus": "log", "mish": "log", "pow": "log", "hardswish": "gelu", "default": "mul",
}

_COMMON: dict[str, Any] = {
    "l1_size": 1 << 20,
    "l1_reserved": 0x2A580,
    "l1_alignment": 16,
    "dram_channels": 8,
    "dram_channel_size": 1 << 30,
    "dram_alignment": 32,
    "noc_bytes_per_cycle": 32,
    "noc_max_packet": 8192,
    "noc_hop_cycles": 9,
    "noc_write_startup_cycles": 40,
    "dst_tiles": 16,
    "num_cbs": 32,
    "matmul_cycles_per_phase": 32,
    # docs/cost-model.md: measured on an e75 (MatMul study, ttPEAK) and used for both cards
    "matmul_efficiency": 0.72,
    "unpack_bytes_per_cycle": 28,
    "dram_efficiency": 0.66,
    "dram_core_gbps": 23.6,
    "launch_cycles": 2000,
    "launch_cycles_per_core": 20,
    "tile_op_cycles": _TILE_OP_CYCLES,
    "sfpu_cost_keys": _SFPU_COST_KEYS,
}

E150 = DeviceAttr(arch="e150", worker_grid=Dims((12, 10)), compute_grid=Dims((12, 9)), clock_mhz=1200,
                  dram_gbps=118.4, **_COMMON)
E75 = DeviceAttr(arch="e75", worker_grid=Dims((12, 8)), compute_grid=Dims((11, 8)), clock_mhz=1000,
                 dram_gbps=102.4, **_COMMON)
DEVICES = {"e150": E150, "e75": E75}
DEVICE_ATTR_NAME = "tt.device"


def device_for(arch: str) -> DeviceAttr:
    try:
        return DEVICES[arch]
    except KeyError:
        raise ValueError(f"unknown arch '{arch}' (known: {', '.join(DEVICES)})") from None


TT = Dialect("tt", "Shared attributes: device descriptor, grids, layouts, weights.", ops=[]).register()
