"""The constant folding inside the model exports (torch.onnx.export(..., optimize=True) runs onnxscript's
optimizer, which evaluates nodes whose inputs are all constant with onnx's reference operators).

Some of those operators are wrong for the inputs real exports hold (frontend/reference_overrides.py lists
them with the reason). Where one raises, onnxscript logs "Evaluation failed: ..." and leaves the node in
the graph: BERT's token-type ids are a GatherElements of a (1, 512) buffer by (1, seq) positions, which
onnx's GatherElements mis-shapes for any seq over 64 ("cannot reshape array of size 1 into shape (1,384)"
at s384), so every BERT export printed that warning and kept a GatherElements of constants. `exact_folding`
has the export's folding use ttc's own overrides, the ones the importer folds with, so the exported graph
holds the folded constant and the export prints nothing misleading.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def exact_folding() -> Iterator[None]:
    """While active, onnxscript's constant folding evaluates the ops of ttc's reference overrides with them.
    (No-op when the installed onnxscript folds another way: the export then behaves as before.)"""
    try:
        from onnxscript.optimizer import _constant_folding as folding
    except ImportError:
        yield
        return
    evaluator = getattr(folding, "ReferenceEvaluator", None)
    original = getattr(evaluator, "get_evaluator", None)
    if original is None:
        yield
        return
    from ttc.frontend.reference_overrides import OVERRIDES

    overrides = {cls.__name__: cls for cls in OVERRIDES}

    def get_evaluator(self, domain: str, op: str, version: int):
        if domain in ("", "ai.onnx") and op in overrides:
            return overrides[op].eval
        return original(self, domain, op, version)

    evaluator.get_evaluator = get_evaluator
    try:
        yield
    finally:
        evaluator.get_evaluator = original
