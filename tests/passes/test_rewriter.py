"""The greedy pattern driver: fixed point, dead code, benefit order, caps and the rewriter's rules."""

from __future__ import annotations

import logging

import pytest

from ttc.ir import Module, Operation, parse_module, print_module, verify
from ttc.passes import PatternRewriter, RewriteError, RewritePattern, apply_patterns_greedily
from ttc.passes.rewriter import defining_op

T = "tensor<4xf32>"


def negs(count: int) -> Module:
    """@main returning `count` nested negations of its argument."""
    lines = [f'%{i} = "ttir.neg"({"%arg0" if i == 0 else f"%{i - 1}"}) : ({T}) -> {T} loc("n{i}")'
             for i in range(count)]
    body = "\n    ".join(lines)
    return parse_module(f"""
module {{
  func.func @main(%arg0: {T}) -> {T} {{
    {body}
    func.return %{count - 1} : {T} loc("ret")
  }}
}}""", "test.mlir")


def main_body(module: Module) -> list[str]:
    return [line.strip() for line in print_module(module).splitlines()[2:-2]]


class DoubleNeg(RewritePattern):
    """neg(neg(x)) -> x."""

    root = "ttir.neg"

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        inner = defining_op(op.operands[0], "ttir.neg")
        if inner is None:
            return rewriter.notify_match_failure(op, "operand is not a neg")
        rewriter.replace_op(op, [inner.operands[0]])
        return True


class NegToRelu(RewritePattern):
    """Rename every neg to relu (wrong maths, but a visible rewrite)."""

    root = "ttir.neg"

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        new = rewriter.create_before(op, "ttir.relu", op.operands, [op.result.type])
        rewriter.replace_op(op, [new.result])
        return True


class Rename(RewritePattern):
    """Replace a `source` op by a `target` op on the same operand."""

    def __init__(self, source: str, target: str, benefit: int = 1) -> None:
        self.root = source
        self.target = target
        self.benefit = benefit

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
        new = rewriter.create_before(op, self.target, op.operands, [op.result.type])
        rewriter.replace_op(op, [new.result])
        return True


def test_rewrites_reach_a_fixed_point_in_one_sweep() -> None:
    module = negs(5)
    # One sweep does it all (users of replaced values are revisited); the second confirms.
    assert apply_patterns_greedily(module, [DoubleNeg()], max_iterations=2)
    verify(module)
    assert main_body(module) == [
        f'%0 = "ttir.neg"(%arg0) : ({T}) -> {T} loc("n4")',  # n0..n3 cancel in pairs
        f'func.return %0 : {T} loc("ret")',
    ]
    assert not apply_patterns_greedily(module, [DoubleNeg()])


def test_trivially_dead_pure_ops_are_erased() -> None:
    module = parse_module(f"""
module {{
  func.func @main(%arg0: {T}) -> {T} {{
    %0 = "ttir.constant"() {{value = dense<1.0> : {T}}} : () -> {T} loc("c")
    %1 = "ttir.add"(%arg0, %0) : ({T}, {T}) -> {T} loc("dead")
    %2 = "ttir.exp"(%1) : ({T}) -> {T} loc("dead too")
    %3 = "ttir.relu"(%arg0) : ({T}) -> {T} loc("live")
    func.return %3 : {T} loc("ret")
  }}
}}""", "test.mlir")
    assert apply_patterns_greedily(module, [])
    assert main_body(module) == [
        f'%0 = "ttir.relu"(%arg0) : ({T}) -> {T} loc("live")',
        f'func.return %0 : {T} loc("ret")',
    ]


def test_higher_benefit_patterns_are_tried_first() -> None:
    module = negs(1)
    apply_patterns_greedily(module, [Rename("ttir.neg", "ttir.exp"), Rename("ttir.neg", "ttir.relu", benefit=5)])
    assert '"ttir.relu"(%arg0)' in main_body(module)[0]


def test_root_limits_a_pattern_to_one_op_name() -> None:
    module = negs(1)
    assert not apply_patterns_greedily(module, [Rename("ttir.exp", "ttir.relu")])
    apply_patterns_greedily(module, [NegToRelu(), Rename("ttir.relu", "ttir.sigmoid")])
    assert '"ttir.sigmoid"(%arg0)' in main_body(module)[0]  # ops a rewrite creates are visited too


def test_patterns_that_undo_each_other_hit_the_rewrite_cap() -> None:
    module = negs(1)
    patterns = [Rename("ttir.neg", "ttir.exp"), Rename("ttir.exp", "ttir.neg")]
    with pytest.raises(RewriteError, match=r"more than 50 rewrites in one iteration; .*Rename on ttir.exp"):
        apply_patterns_greedily(module, patterns, max_rewrites=50)


def test_a_rewrite_that_never_settles_hits_the_iteration_cap() -> None:
    class ToggleOnReturn(RewritePattern):
        """Each visit of the neg flips an attribute of the return op (which nothing revisits)."""

        root = "ttir.neg"

        def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
            ret = op.result.users[0]
            with rewriter.modify_op(ret):
                ret.attributes["test.flag"] = not ret.attributes.get("test.flag", False)
            return True

    with pytest.raises(RewriteError, match="did not converge in 3 iterations"):
        apply_patterns_greedily(negs(1), [ToggleOnReturn()], max_iterations=3)


def test_a_pattern_that_mutates_and_then_fails_is_an_error() -> None:
    class Sloppy(RewritePattern):
        """Creates an op before deciding it does not match."""

        root = "ttir.neg"

        def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
            rewriter.create_before(op, "ttir.relu", op.operands, [op.result.type])
            return False

    with pytest.raises(RewriteError, match=r"pattern Sloppy changed the IR and then reported no match on "
                                           r"'ttir.neg' at loc\(\"n0\"\)"):
        apply_patterns_greedily(negs(1), [Sloppy()])


def test_a_pattern_that_claims_success_without_a_change_is_an_error() -> None:
    class Liar(RewritePattern):
        root = "ttir.neg"

        def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
            return True

    with pytest.raises(RewriteError, match=r"pattern Liar reported a match on 'ttir.neg' .* but changed nothing"):
        apply_patterns_greedily(negs(1), [Liar()])


def test_match_failures_are_recorded_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    rewriter = PatternRewriter()
    with caplog.at_level(logging.DEBUG, logger="ttc.rewriter"):
        assert not apply_patterns_greedily(negs(1), [DoubleNeg()], rewriter=rewriter)
    assert [(f.pattern, f.op, f.reason) for f in rewriter.match_failures] == [
        ("DoubleNeg", "ttir.neg", "operand is not a neg")]
    assert 'DoubleNeg does not apply to ttir.neg at loc("n0"): operand is not a neg' in caplog.text


def test_replace_op_checks_the_number_of_values() -> None:
    class Wrong(RewritePattern):
        root = "ttir.neg"

        def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> bool:
            rewriter.replace_op(op, [])
            return True

    with pytest.raises(RewriteError, match=r"Wrong: replacing 'ttir.neg' \(1 results\) with 0 values"):
        apply_patterns_greedily(negs(1), [Wrong()])


def test_patterns_apply_to_a_single_op_tree_too() -> None:
    module = negs(2)
    func_op = module.function("main").op
    assert apply_patterns_greedily(func_op, [DoubleNeg()])
    assert main_body(module) == [f'func.return %arg0 : {T} loc("ret")']
