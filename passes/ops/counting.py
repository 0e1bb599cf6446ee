"""Counting a program as its kernels' loops run: `Plan` walks an op's work units per core and records tile
ops per key, NoC bytes per core, DRAM bytes read and written and the pages a core moves within its own
shard (the units the emulators count, runtime/accounting.py). Each op module's `counts` builds one; the
cost model (ttc.ir.target) turns the counts into cycles."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from ttc.ir import target
from ttc.ir.attributes import WeightAttr
from ttc.ir.core import OpResult, Value
from ttc.ir.dialects.tt import DeviceAttr
from ttc.ir.target import Counts
from ttc.passes.ops.geometry import (
    core_bank,
    is_sharded,
    layout,
    page_size,
    shard_geometry,
    tensor,
)
from ttc.passes.ops.interface import unit_index

Weights = Mapping[str, np.ndarray]


def format_name(value: Value) -> str:
    return tensor(value).element_type.name


def constant_of(value: Value, weights: Weights | None) -> np.ndarray | None:
    """The array behind a weight constant, when the weights are at hand."""
    if weights is None or not isinstance(value, OpResult):
        return None
    attr = value.op.attributes.get("value")
    return weights.get(attr.name) if isinstance(attr, WeightAttr) else None


@dataclass(frozen=True)
class Buffer:
    """How a program reaches one buffer: its page size, memory, and shard map (for local pages)."""

    page: int
    dram: bool
    owner_bank: Callable[[np.ndarray], np.ndarray] | None  # page -> bank (device core) of its shard

    @classmethod
    def of(cls, t: object, device: DeviceAttr, page: int | None = None, dram: bool | None = None) -> Buffer:
        from ttc.ir.types import TensorType

        assert isinstance(t, TensorType)
        owner = None
        if is_sharded(t):
            geometry = shard_geometry(t)
            device_x = device.compute_grid[0]

            def owner(pages: np.ndarray) -> np.ndarray:
                shard = geometry.owner(pages // geometry.cols, pages % geometry.cols)
                return core_bank(shard, geometry.grid, device_x)

        in_dram = layout(t).memory_space == "dram" if dram is None else dram
        return cls(page if page is not None else page_size(t), in_dram, owner)


class Plan:
    """The counts of one program as its kernels' loops are walked, per core and per transfer."""

    def __init__(self, device: DeviceAttr, grid: tuple[int, int], units: tuple[int, ...],
                 by_column: bool = False) -> None:
        self.device = device
        self.cores = grid[0] * grid[1]
        self.units = units
        self.builder = target.CountsBuilder(self.cores)
        self.banks = core_bank(np.arange(self.cores), grid, device.compute_grid[0])
        count = math.prod(units)
        # per core: its work unit's coordinates (a padded grid's extra cores repeat the last unit; `by_column`:
        # the units taken column by column, interface.unit_index)
        index = unit_index(np.arange(self.cores), grid, by_column)
        self.unit = np.stack(np.unravel_index(np.minimum(index, count - 1), units), axis=1) \
            if units else np.zeros((self.cores, 0), dtype=np.int64)

    def tile(self, key: str, tiles: int) -> None:
        self.builder.tile(key, tiles)

    def static(self, buffer: Buffer, pages: int, write: bool = False,
               page_lists: Callable[[], np.ndarray] | None = None) -> None:
        """`pages` pages per core (every core the same), and for a sharded buffer the pages themselves,
        `page_lists()` [cores, n] over all instances, to tell a core's own shard from the others."""
        self.builder.transfer(pages * buffer.page, buffer.dram, write)
        if buffer.owner_bank is not None and page_lists is not None and pages:
            listed = page_lists()
            self.builder.local_total += int((buffer.owner_bank(listed) == self.banks[:, None]).sum()) * buffer.page

    def masked(self, buffer: Buffer, totals: np.ndarray, write: bool = False) -> None:
        """A transfer whose pages differ by core: per instance the pages of all cores (`totals`), of which
        every core is counted the floor of the average on the NoC; DRAM serves them all."""
        totals = np.asarray(totals, dtype=np.int64)
        pages = int((totals // self.cores).sum())
        self.builder.transfer(pages * buffer.page, buffer.dram, write, int(totals.sum()) * buffer.page)

    def counts(self) -> Counts:
        return self.builder.counts()


def _grid(grid: tuple[int, int] | object) -> tuple[int, int]:
    if isinstance(grid, tuple):
        return grid
    return (int(grid.x), int(grid.y))  # type: ignore[attr-defined]
