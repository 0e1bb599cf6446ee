"""A hand-written multicast program for the runtime tests: the first core of each grid row reads tiles of `a`
from DRAM and multicasts them along its row, with tt-metal's handshake (each receiver increments the sender's
"ready" semaphore, the sender waits for all of them, multicasts the tiles and sets the receivers' "valid"
semaphore); every core copies what it holds to its own tiles of `c`."""

from __future__ import annotations

from runtime_helpers import ProgramSpec, addrgen, cb, core_args, kfor, kop

READY, VALID = 0, 1


def row_multicast(grid: tuple[int, int], blocks: int, tiles: int = 1, rect: tuple[int, int, int, int] | None = None,
                  drop: str | None = None) -> ProgramSpec:
    """Core (x, y) writes block i's tiles (tile y * blocks * tiles + i * tiles + j of `a`, a [rows, blocks * tiles]
    tile matrix) to tile ((i * gy + y) * gx + x) * tiles + j of `c`. `rect` overrides every sender's rectangle
    (x0, y0, x1, y1); `drop` removes an op kind from the reader (a mutation)."""
    gx, gy = grid
    reader = [kop("get_arg", out="sender", index=0), kop("get_arg", out="receiver", index=1),
              kop("get_arg", out="a0", index=2), kop("get_arg", out="valid", index=3),
              kop("get_arg", out="sx", index=4), kop("get_arg", out="sy", index=5),
              kop("get_arg", out="x0", index=6), kop("get_arg", out="y0", index=7),
              kop("get_arg", out="x1", index=8), kop("get_arg", out="y1", index=9),
              *addrgen("a", 0), kop("constant", out="step", value=tiles),
              kop("semaphore_set", semaphore=READY, value=0), kop("semaphore_set", semaphore=VALID, value=0),
              kfor("i", blocks, [
                  kop("muli", "i", "step", out="off"), kop("addi", "a0", "off", out="t"),
                  kop("cb_reserve_back", cb=0, pages=tiles),
                  kop("noc_read_tiles", "a", "t", "valid", cb=0, rows=1, cols=tiles),
                  kop("noc_read_barrier"),
                  kop("semaphore_inc", "sx", "sy", "receiver", semaphore=READY),
                  kop("semaphore_wait", "sender", semaphore=READY, value=gx - 1),
                  kop("semaphore_set", "sender", semaphore=READY, value=0),
                  kop("noc_mcast_cb", "x0", "y0", "x1", "y1", "sender", cb=0, pages=tiles, semaphore=VALID, value=1),
                  kop("semaphore_wait", "receiver", semaphore=VALID, value=1),
                  kop("semaphore_set", "receiver", semaphore=VALID, value=0),
                  kop("cb_push_back", cb=0, pages=tiles)])]
    if drop is not None:
        reader[-1] = "\n".join(line for line in reader[-1].split("\n") if f'"ttkernel.{drop}"' not in line)
    compute = [kfor("i", blocks, [
        kop("cb_wait_front", cb=0, pages=tiles), kop("tile_regs_acquire"),
        kop("copy_tiles", cb=0, rows=1, cols=tiles), kop("tile_regs_commit"), kop("tile_regs_wait"),
        kop("cb_reserve_back", cb=16, pages=tiles), kop("pack_tiles", count=tiles, cb=16),
        kop("cb_push_back", cb=16, pages=tiles), kop("tile_regs_release"), kop("cb_pop_front", cb=0, pages=tiles)])]
    writer = [kop("get_arg", out="c0", index=0), *addrgen("c", 1), kop("constant", out="stride", value=gx * gy * tiles),
              kfor("i", blocks, [
                  kop("muli", "i", "stride", out="off"), kop("addi", "c0", "off", out="t"),
                  kop("cb_wait_front", cb=16, pages=tiles),
                  kop("noc_write_tiles", "c", "t", cb=16, rows=1, cols=tiles), kop("noc_write_barrier"),
                  kop("cb_pop_front", cb=16, pages=tiles)])]

    def reader_args(x: int, y: int) -> list[int]:
        sender = int(x == 0)
        box = rect if rect is not None else (0, y, gx - 1, y)
        return [sender, 1 - sender, y * blocks * tiles, tiles if sender else 0, 0, y, *box]

    args = [core_args(grid, reader_args), [[] for _ in range(gx * gy)],
            core_args(grid, lambda x, y: [(y * gx + x) * tiles])]
    return ProgramSpec(reader, compute, writer, [cb(0, 2 * tiles), cb(16, 2 * tiles)], grid, args,
                       kind="mcast", node="mcast")
