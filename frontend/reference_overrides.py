"""Where onnx's reference evaluator is wrong for the inputs real exports produce: replacements for those
ops, used by compile-time folding (`folding.evaluate_node`), each with its reason."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from onnx.reference.op_run import OpRun
from onnx.reference.ops import op_loop


class GatherElements(OpRun):
    """onnx's GatherElements goes through np.choose, which takes at most 64 choices, and its fallback
    mis-shapes the result when the gathered axis is longer (BERT's token-type ids gather 128 of
    512); np.take_along_axis is the op's definition."""

    op_domain = ""

    def _run(self, data, indices, axis=None):  # type: ignore[override]
        axis = 0 if axis is None else axis
        indices = np.where(indices < 0, indices + data.shape[axis], indices)
        return (np.take_along_axis(data, indices, axis=axis),)


class Loop(op_loop.Loop):
    """onnx's Loop joins the scan outputs with np.vstack, which gives [n, 1] for scalars (an expanded
    Range's elements) and merges the first two dims of matrices; the spec stacks them along a new first
    axis (np.stack)."""

    op_domain = ""

    def _run(self, M, cond, *args, context=None, body=None, attributes=None, bindings=None):  # type: ignore[override]
        names = self.body.input_names
        inputs = dict.fromkeys(names)
        inputs.update(zip(names[2:], args, strict=False))  # the loop-carried initial values
        inputs.update(context or {})
        scans: list[list[np.ndarray]] = [[] for _ in range(self.K)]
        carried = [inputs[name] for name in names[2:]]
        it = 0
        while cond and (M is None or it < M):
            inputs[names[0]] = np.array(it, dtype=None if M is None else M.dtype)
            inputs[names[1]] = cond
            outputs = self._run_body(inputs, attributes=attributes, bindings=bindings)
            cond = outputs[0]
            carried = list(outputs[1:1 + self.N])
            inputs.update(zip(names[2:], carried, strict=True))
            for k in range(self.K):
                scans[k].append(outputs[1 + self.N + k])
            it += 1
        return self._check_and_fix_outputs((*carried, *(np.stack(scan) for scan in scans)))


OVERRIDES: Sequence[type[OpRun]] = (GatherElements, Loop)
