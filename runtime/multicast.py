"""Semaphores and multicast: the Python emulator's inter-core ops (the definition the native core follows).

Conventions fixed here where the dialect is silent
- Semaphores are per program and core (`ttkernel.NUM_SEMAPHORES` each, int64 counters), 0 at launch; they
  live in a fixed area of every core's L1 outside the CB and buffer heap (tt-metal allocates them statically
  in a reserved semaphore range), so they cost no allocated L1.
- `enabled` (optional operand): the op acts on the cores where it is non-zero; it is a no-op elsewhere.
- Cores run in lockstep: a `semaphore_wait` blocks the kernel (on every core) while any enabled core's
  semaphore is below its value. A kernel blocked there is named in a deadlock with the first such core, the
  semaphore and the value it holds.
- `noc_mcast_cb`: senders one after the other in grid order; each writes its pages (as they are then) to the
  same CB slots of every other core of its rectangle (the receivers' reserved back window: CB state is the
  same on every core), so where rectangles overlap the later sender's pages win. Its counts: the pages leave the sender's port once and
  enter each receiver's port (NoC bytes: the pages of all cores // cores, as any transfer whose pages differ
  by core); the sender's link bytes (every link of a row or column multicast carries each page once: the
  busiest link is the one leaving the sender that sent most) and the largest fan-out; a sender whose
  rectangle holds no other core moves nothing. Semaphore messages
  (4 bytes) are not counted.
- Pages a multicast wrote into a receiver's CB are the receiver's only once it has seen the multicast land: a
  receiver must complete a `semaphore_wait` (any semaphore, enabled on it: tt-metal's receiver waits for the
  "valid" semaphore the multicast sets) after the multicast and before it pushes that CB. A cb_push_back of
  such a CB with no wait in between is a fault of the receivers doing it (lockstep execution would otherwise
  hide the race: on hardware the receiver pushes pages that may not have arrived).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ttc.ir.core import Operation
from ttc.ir.dialects.ttkernel import NUM_CBS, NUM_SEMAPHORES
from ttc.runtime.dataflow import page_range
from ttc.runtime.device import Fault
from ttc.runtime.handlers import Blocked, handler

if TYPE_CHECKING:  # types only: the scheduler imports this module, not the other way round
    from ttc.runtime.interpreter import Kernel, Program


def semaphores(p: Program) -> np.ndarray:
    """The program's semaphores [cores, NUM_SEMAPHORES] (0 at launch)."""
    values = p.__dict__.get("_semaphores")
    if values is None:
        values = p.__dict__["_semaphores"] = np.zeros((p.cores, NUM_SEMAPHORES), dtype=np.int64)
    return values


def unlanded(p: Program) -> np.ndarray | None:
    """[cores, CBs] bool: a multicast wrote the CB on that core and the core has completed no semaphore_wait since
    (None until the program's first multicast)."""
    return p.__dict__.get("_unlanded")


def _check_semaphore(index: int) -> None:
    if not 0 <= index < NUM_SEMAPHORES:
        raise Fault(f"semaphore {index} is outside 0..{NUM_SEMAPHORES - 1}")


def _per_core(p: Program, value: int | np.ndarray) -> np.ndarray:
    return np.broadcast_to(np.asarray(value, dtype=np.int64).reshape(-1), (p.cores,))


def _enabled(p: Program, k: Kernel, op: Operation, index: int) -> np.ndarray:
    """[cores] bool: where the op acts (its optional `enabled` operand #index, else everywhere)."""
    if len(op.operands) <= index:
        return np.ones(p.cores, dtype=bool)
    return _per_core(p, k.env[op.operands[index]]) != 0


def _grid_text(p: Program) -> str:
    return f"the program's {p.grid.x}x{p.grid.y} grid"


@handler("semaphore_set")
def semaphore_set(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    """This core's semaphore = value."""
    _check_semaphore(a["semaphore"])
    enabled = _enabled(p, k, op, 0)
    semaphores(p)[enabled, a["semaphore"]] = a["value"]


@handler("semaphore_wait")
def semaphore_wait(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> Blocked | None:
    """Block while any enabled core's semaphore is below value."""
    sem, want = a["semaphore"], a["value"]
    _check_semaphore(sem)
    values = semaphores(p)[:, sem]
    short = _enabled(p, k, op, 0) & (values < want)
    if short.any():
        first = int(np.argmax(short))
        return Blocked(op, sem, want, "semaphore", core=first, holds=int(values[first]))
    pending = unlanded(p)
    if pending is not None:  # the waiting cores have seen every multicast into them land
        pending[_enabled(p, k, op, 0)] = False
    return None


@handler("semaphore_inc")
def semaphore_inc(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    """Add amount to semaphore of core (x, y) (in grid order of the incrementing cores)."""
    sem = a["semaphore"]
    _check_semaphore(sem)
    enabled = _enabled(p, k, op, 2)
    x, y = _per_core(p, k.env[op.operands[0]]), _per_core(p, k.env[op.operands[1]])
    outside = enabled & ((x < 0) | (x >= p.grid.x) | (y < 0) | (y >= p.grid.y))
    if outside.any():
        first = int(np.argmax(outside))
        raise Fault(f"semaphore increment of core ({x[first]},{y[first]}) outside {_grid_text(p)}", cores=outside)
    targets = (y * p.grid.x + x)[enabled]
    np.add.at(semaphores(p)[:, sem], targets, a["amount"])


@handler("noc_mcast_cb")
def noc_mcast_cb(p: Program, k: Kernel, op: Operation, a: dict[str, Any]) -> None:
    """Each enabled core's reserved back pages of cb -> the same slots of the other cores of its rectangle."""
    cb = p.cb(a["cb"])
    sem = a["semaphore"]
    if sem != -1:
        _check_semaphore(sem)
    enabled = _enabled(p, k, op, 4)
    x0, y0, x1, y1 = (_per_core(p, k.env[v]) for v in op.operands[:4])
    outside = enabled & ((x0 < 0) | (y0 < 0) | (x1 >= p.grid.x) | (y1 >= p.grid.y) | (x0 > x1) | (y0 > y1))
    if outside.any():
        c = int(np.argmax(outside))
        raise Fault(f"multicast rectangle ({x0[c]},{y0[c]})-({x1[c]},{y1[c]}) is outside {_grid_text(p)}",
                    cores=outside, cb=cb.index)
    slots = p.back_slots(cb, page_range(a["cb_offset"], a["pages"]))
    if cb.index in k.pending_reads and enabled.any():
        raise Fault(f"noc_mcast_cb of CB {cb.index} while NoC reads into it have not completed "
                    "(missing noc_read_barrier)", cores=enabled, cb=cb.index)
    slot_list = np.arange(slots.start, slots.stop) if isinstance(slots, slice) else np.asarray(slots)
    sent = np.zeros(p.cores, dtype=np.int64)
    moved, fanout = 0, 0
    for s in np.flatnonzero(enabled):
        ys, xs = np.mgrid[y0[s]: y1[s] + 1, x0[s]: x1[s] + 1]
        receivers = (ys * p.grid.x + xs).ravel()
        receivers = receivers[receivers != s]
        if len(receivers):
            data = cb.slots[p.core_banks[s], slot_list]  # as it is now: an earlier sender may have written it
            cb.slots[p.core_banks[receivers][:, None], slot_list[None, :]] = data[None]
            if sem != -1:
                semaphores(p)[receivers, sem] = a["value"]
            if "_unlanded" not in p.__dict__:
                p.__dict__["_unlanded"] = np.zeros((p.cores, NUM_CBS), dtype=bool)
            p.__dict__["_unlanded"][receivers, cb.index] = True
            moved += a["pages"] * (1 + len(receivers))
            sent[s] = a["pages"] * cb.page_size
            fanout = max(fanout, len(receivers))
    p.counting.transfer((moved // p.cores) * cb.page_size, False, False)
    p.counting.multicast(sent, fanout)
