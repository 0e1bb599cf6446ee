"""The `ttkernel` dialect: kernel-level ops mirroring the TT-Metalium kernel API.

Only the circular-buffer protocol is declared so far; the data-movement and compute ops arrive with
the backend (issue "Foundation 2 of 2").
"""

from __future__ import annotations

from ttc.ir.core import Operation
from ttc.ir.dialect import Attr, Dialect, IntAttr, OpDef, VerifyError

NUM_CBS = 32


def verify_cb_op(op: Operation) -> None:
    cb, pages = op.attr("cb"), op.attr("pages")
    if not 0 <= cb < NUM_CBS:
        raise VerifyError(f"circular buffer index {cb} is outside 0..{NUM_CBS - 1}")
    if pages <= 0:
        raise VerifyError(f"page count must be positive, got {pages}")


def cb_op(name: str, summary: str) -> OpDef:
    return OpDef(f"ttkernel.{name}", summary, results=(),
                 attributes=(Attr("cb", IntAttr), Attr("pages", IntAttr)), verify=verify_cb_op)


CB_RESERVE_BACK = cb_op("cb_reserve_back", "Producer: block until `pages` free pages at the back")
CB_PUSH_BACK = cb_op("cb_push_back", "Producer: publish `pages` written pages")
CB_WAIT_FRONT = cb_op("cb_wait_front", "Consumer: block until `pages` filled pages at the front")
CB_POP_FRONT = cb_op("cb_pop_front", "Consumer: release `pages` read pages")

TTKERNEL = Dialect("ttkernel", "Kernel-level ops (TT-Metalium kernel API).",
                   ops=[CB_RESERVE_BACK, CB_PUSH_BACK, CB_WAIT_FRONT, CB_POP_FRONT]).register()
