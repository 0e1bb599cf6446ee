"""The `ttmetal` dialect: the host schedule (buffers and program dispatch).

Declared so far: buffer management; program dispatch arrives with the backend.
"""

from __future__ import annotations

from ttc.ir.dialect import AnyTensor, Attr, Dialect, IntAttr, OpDef, Operand, Result, enum_attr

CREATE_BUFFER = OpDef("ttmetal.create_buffer", "Allocate a device buffer for a tensor",
                      results=(Result("buffer", AnyTensor),),
                      attributes=(Attr("address", IntAttr, 0), Attr("memory", enum_attr("dram", "l1"), "dram")))
DEALLOCATE = OpDef("ttmetal.deallocate", "Free a device buffer", operands=(Operand("buffer"),), results=())

TTMETAL = Dialect("ttmetal", "Host-side dispatch.", ops=[CREATE_BUFFER, DEALLOCATE]).register()
