"""Pattern rewriting in MLIR's style: patterns match without mutating, all changes go through the
`PatternRewriter`, and a greedy worklist driver applies patterns until nothing changes.

    class FoldDoubleNeg(RewritePattern):
        root = "ttir.neg"

        def match_and_rewrite(self, op, rewriter):
            inner = defining_op(op.operands[0])
            if inner is None or inner.name != "ttir.neg":
                return rewriter.notify_match_failure(op, "operand is not a neg")
            rewriter.replace_op(op, [inner.operands[0]])
            return True

The driver also erases trivially dead pure ops. A pattern that changes the IR and then reports
failure, or reports success without changing anything, is a bug: `RewriteError` names it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ttc.ir.attributes import Location
from ttc.ir.core import Module, Operation, OpResult, Value
from ttc.ir.dialect import Trait
from ttc.ir.types import Type

log = logging.getLogger("ttc.rewriter")


class RewriteError(RuntimeError):
    """An internal error: a pattern broke the rewriter's rules, or rewriting did not converge."""


class RewritePattern:
    """One rewrite. `root` limits it to ops of that name; higher `benefit` is tried first.

    Both are class attributes usually; a pattern parametrised per op may set them in `__init__`.
    """

    root: str | None = None
    benefit: int = 1

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        """Rewrite `op` through `rewriter` and return True, or return False having changed nothing."""
        raise NotImplementedError

    @property
    def label(self) -> str:
        return type(self).__name__


@dataclass(frozen=True)
class MatchFailure:
    """Why a pattern did not apply to an op (for the debug log and for tests)."""

    pattern: str
    op: str
    reason: str


class PatternRewriter:
    """The only way patterns change the IR; it tells the driver what changed."""

    def __init__(self) -> None:
        self.changes = 0  # bumped by every mutation, so the driver can tell whether a pattern changed IR
        self.pattern = ""  # the pattern being applied, for match-failure records
        self.match_failures: list[MatchFailure] = []
        self.worklist: _Worklist | None = None

    def _notify(self, *ops: Operation) -> None:
        self.changes += 1
        if self.worklist is not None:
            for op in ops:
                self.worklist.push(op)

    def create_before(self, op: Operation, name: str, operands: Sequence[Value] = (),
                      result_types: Sequence[Type] = (), attributes: dict[str, Any] | None = None,
                      loc: Location | None = None) -> Operation:
        """Create an op right before `op` (so it dominates `op`'s users), with `op`'s location by default."""
        assert op.parent is not None, f"'{op.name}' is not in a block"
        new = Operation(name, operands, result_types, attributes, loc=loc if loc is not None else op.loc)
        op.parent.insert_before(op, new)
        self._notify(new)
        return new

    def replace_all_uses_with(self, value: Value, new: Value) -> None:
        users = value.users
        value.replace_all_uses_with(new)
        self._notify(*users)

    def replace_op(self, op: Operation, new_values: Value | Sequence[Value]) -> None:
        """Replace every result of `op` with the matching new value, then erase `op`."""
        if isinstance(new_values, Value):
            new_values = [new_values]
        if len(new_values) != len(op.results):
            raise RewriteError(f"{self.pattern}: replacing '{op.name}' ({len(op.results)} results) "
                               f"with {len(new_values)} values")
        for result, new in zip(op.results, new_values, strict=True):
            self.replace_all_uses_with(result, new)
        self.erase_op(op)

    def erase_op(self, op: Operation) -> None:
        """Erase an op whose results are unused; the producers of its operands are revisited."""
        producers = [v.op for v in op.operands if isinstance(v, OpResult)]
        op.erase()
        self._notify(*producers)

    @contextlib.contextmanager
    def modify_op(self, op: Operation) -> Iterator[Operation]:
        """`with rewriter.modify_op(op): op.attributes[...] = ...` for in-place changes."""
        yield op
        self.notify_op_modified(op)

    def notify_op_modified(self, op: Operation) -> None:
        self._notify(op)

    def notify_match_failure(self, op: Operation, reason: str) -> bool:
        """Record why the current pattern does not apply to `op` (for the debug log); returns False."""
        failure = MatchFailure(self.pattern, op.name, reason)
        self.match_failures.append(failure)
        log.debug("%s does not apply to %s at %s: %s", failure.pattern, op.name, op.loc, reason)
        return False


class _Worklist:
    """A stack of ops to visit, each at most once on it; erased ops are skipped when popped."""

    def __init__(self, ops: Sequence[Operation]) -> None:
        self.stack = list(reversed(ops))  # popped from the end: program order first
        self.members = set(self.stack)

    def push(self, op: Operation) -> None:
        if op not in self.members:
            self.members.add(op)
            self.stack.append(op)

    def pop(self) -> Operation | None:
        while self.stack:
            op = self.stack.pop()
            self.members.discard(op)
            if op.parent is not None:
                return op
        return None


def is_trivially_dead(op: Operation) -> bool:
    opdef = op.opdef
    return opdef is not None and opdef.has(Trait.PURE) and not any(r.uses for r in op.results)


def apply_patterns_greedily(target: Module | Operation, patterns: Sequence[RewritePattern],
                            max_iterations: int = 10, max_rewrites: int | None = None,
                            rewriter: PatternRewriter | None = None) -> bool:
    """Apply `patterns` to every op nested in `target` until none applies; True if the IR changed.

    Each iteration visits all ops through a worklist (new ops, users of replaced values and producers
    of erased ops' operands are revisited). It stops after an iteration that changed nothing;
    `max_iterations` iterations, or more than `max_rewrites` rewrites in one iteration (default: 10
    per op plus 100), raise RewriteError: the patterns undo each other or never settle.
    """
    root = target.op if isinstance(target, Module) else target
    ordered = sorted(patterns, key=lambda p: -p.benefit)  # stable: equal benefits keep their order
    rewriter = rewriter or PatternRewriter()
    changed = False
    for _ in range(max_iterations):
        ops = [op for op in root.walk() if op is not root]
        limit = max_rewrites if max_rewrites is not None else 10 * len(ops) + 100
        if not _run_iteration(ops, ordered, rewriter, limit):
            return changed
        changed = True
    raise RewriteError(f"pattern rewriting did not converge in {max_iterations} iterations "
                       f"(patterns: {', '.join(p.label for p in ordered)})")


def _run_iteration(ops: Sequence[Operation], patterns: Sequence[RewritePattern], rewriter: PatternRewriter,
                   max_rewrites: int) -> bool:
    """One worklist sweep; True if anything changed."""
    worklist = _Worklist(ops)
    rewriter.worklist = worklist
    rewrites = 0
    recent: list[str] = []
    try:
        while (op := worklist.pop()) is not None:
            if is_trivially_dead(op):
                rewriter.pattern = "dead-code"
                rewriter.erase_op(op)
                rewrites += 1
                continue
            applied = _apply_first(op, patterns, rewriter)
            if applied is None:
                continue
            rewrites += 1
            recent = [*recent[-4:], f"{applied} on {op.name}"]
            if rewrites > max_rewrites:
                raise RewriteError(f"more than {max_rewrites} rewrites in one iteration; patterns may undo "
                                   f"each other (last: {'; '.join(recent)})")
    finally:
        rewriter.worklist = None
    return rewrites > 0


def _apply_first(op: Operation, patterns: Sequence[RewritePattern], rewriter: PatternRewriter) -> str | None:
    """Try patterns on `op` in benefit order; the name of the one that applied, if any."""
    for pattern in patterns:
        if pattern.root is not None and pattern.root != op.name:
            continue
        rewriter.pattern = pattern.label
        before = rewriter.changes
        matched = pattern.match_and_rewrite(op, rewriter)
        changed = rewriter.changes != before
        if matched and changed:
            return pattern.label
        if changed:
            raise RewriteError(f"pattern {pattern.label} changed the IR and then reported no match on "
                               f"'{op.name}' at {op.loc} (patterns must match before they mutate)")
        if matched:
            raise RewriteError(f"pattern {pattern.label} reported a match on '{op.name}' at {op.loc} "
                               "but changed nothing")
    return None


def defining_op(value: Value, name: str | None = None) -> Operation | None:
    """The op producing `value` (None for a block argument, or when it is not named `name`)."""
    if not isinstance(value, OpResult):
        return None
    return value.op if name is None or value.op.name == name else None
