"""Golden tests of the recurrent layers (`frontend/converters_recurrent.py`, unrolled at import) and of If,
Scan and Loop (`frontend/converters_control.py`): both directions, initial states, sequence_lens masking,
batch-first layout, peepholes, linear_before_reset, activations and clip, constant and computed weights; If
with a constant and with a runtime condition; Scan's axes and directions, opset-8 Scan; Loop with a
compile-time trip count and condition, and the UserErrors when they are computed at run time. Every case is
compared with onnxruntime (`check`)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator
from test_transformer_ops import BOOL, Graph, check

import ttc
from ttc.frontend.importer import import_model
from ttc.golden import compare
from ttc.ir.diagnostics import UserError

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
I32 = TensorProto.INT32


def recurrent(g: Graph, op: str, steps: int, batch: int, inputs: int, hidden: int, *, direction: str = "forward",
              layout: int = 0, weights_constant: bool = False, bias: bool = True, initial: bool = False,
              lengths: np.ndarray | None = None, lengths_constant: bool = False, peepholes: bool = False,
              **attrs) -> list[str]:
    """An `op` node with random weights (scaled to keep the gates off saturation); returns its outputs."""
    rng = np.random.default_rng(11)
    dirs = 2 if direction == "bidirectional" else 1
    gates = GATES[op]
    x_shape = (batch, steps, inputs) if layout else (steps, batch, inputs)
    state_shape = (batch, dirs, hidden) if layout else (dirs, batch, hidden)
    x = g.input("x", x_shape)
    names = [x]
    for name, shape in (("w", (dirs, gates * hidden, inputs)), ("r", (dirs, gates * hidden, hidden)),
                        ("b", (dirs, 2 * gates * hidden))):
        if name == "b" and not bias:
            names.append("")
            continue
        values = rng.uniform(-0.6, 0.6, shape)
        names.append(g.const(values) if weights_constant else g.input(name, shape, values=values))
    if lengths is None:
        names.append("")
    elif lengths_constant:
        names.append(g.const(lengths, np.int32))
    else:
        names.append(g.input("lengths", (batch,), I32, values=lengths))
    names.append(g.input("initial_h", state_shape) if initial else "")
    if op == "LSTM":
        names.append(g.input("initial_c", state_shape) if initial else "")
        p = rng.uniform(-0.5, 0.5, (dirs, 3 * hidden))
        names.append("" if not peepholes else g.const(p) if weights_constant else g.input("p", p.shape, values=p))
    while names[-1] == "":
        names.pop()
    outputs = 3 if op == "LSTM" else 2
    results = g.node(op, names, outputs=outputs, hidden_size=hidden, direction=direction, layout=layout, **attrs)
    for name in results:
        g.output(name)
    return results


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_directions_with_initial_states(op: str, direction: str) -> None:
    g = Graph()
    recurrent(g, op, steps=4, batch=3, inputs=5, hidden=6, direction=direction, initial=True)
    check(g)


def check_with_onnx_reference(g: Graph) -> None:
    """`check` against onnx's reference evaluator: onnxruntime does not run batch-first (layout 1) layers."""
    model = g.model()
    outputs = ttc.compile(model).run(g.feeds)
    reference = ReferenceEvaluator(model).run(None, g.feeds)
    for value, expected in zip(model.graph.output, reference, strict=True):
        result = compare(value.name, outputs[value.name], expected)
        assert result.passed, result


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_batch_first_layout_over_several_steps(op: str) -> None:
    g = Graph()
    recurrent(g, op, steps=3, batch=2, inputs=4, hidden=5, direction="bidirectional", layout=1, initial=True)
    check_with_onnx_reference(g)


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("lengths_constant", [False, True])
def test_sequence_lens_hold_the_state_and_zero_y(op: str, lengths_constant: bool) -> None:
    g = Graph()  # entry 1 stops after one step, entry 2 after three: the reverse direction starts there
    recurrent(g, op, steps=4, batch=3, inputs=3, hidden=4, direction="bidirectional", initial=True,
              lengths=np.array([4, 1, 3]), lengths_constant=lengths_constant)
    check(g)


def test_constant_weights_are_cut_and_transposed_at_compile_time() -> None:
    g = Graph()
    recurrent(g, "LSTM", steps=3, batch=2, inputs=40, hidden=36, weights_constant=True, peepholes=True)
    check(g)
    imported = str(import_model(g.model()))
    assert "ttir.transpose" not in imported


def test_lstm_peepholes_and_coupled_input_forget_gates() -> None:
    g = Graph()
    recurrent(g, "LSTM", steps=3, batch=2, inputs=3, hidden=4, initial=True, peepholes=True, input_forget=1)
    check(g)


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_gru_linear_before_reset(direction: str) -> None:
    g = Graph()
    recurrent(g, "GRU", steps=3, batch=2, inputs=3, hidden=5, direction=direction, initial=True,
              linear_before_reset=1)
    check(g)


def test_activations_with_alpha_beta_and_clip() -> None:
    g = Graph()
    recurrent(g, "LSTM", steps=3, batch=2, inputs=3, hidden=4, initial=True, clip=0.7,
              activations=["HardSigmoid", "LeakyRelu", "Softsign"], activation_alpha=[0.3, 0.1],
              activation_beta=[0.4])
    check(g)


def test_rnn_relu_without_bias() -> None:
    g = Graph()
    recurrent(g, "RNN", steps=5, batch=2, inputs=3, hidden=4, bias=False, activations=["Relu"])
    check(g)


def test_unknown_activation_is_a_user_error_naming_the_node() -> None:
    g = Graph()
    recurrent(g, "RNN", steps=2, batch=1, inputs=2, hidden=3, activations=["Gelu"])
    with pytest.raises(UserError, match=r"node '/RNN_1' \(RNN\): activation 'Gelu' is not supported"):
        ttc.compile(g.model())


# ----------------------------------------------------------------------------------------------
# If


def branches(g: Graph, x: str) -> tuple:
    """then: relu(x) * 2 (reads x and a constant from the enclosing graph); else: x - 1."""
    two = g.const(np.float32(2.0))
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    out = helper.make_tensor_value_info
    then_branch = helper.make_graph(
        [helper.make_node("Relu", [x], ["then_r"]), helper.make_node("Mul", ["then_r", two], ["then_out"])],
        "then", [], [out("then_out", TensorProto.FLOAT, None)])
    else_branch = helper.make_graph([helper.make_node("Sub", [x, "one"], ["else_out"])], "else", [],
                                    [out("else_out", TensorProto.FLOAT, None)], [one])
    return then_branch, else_branch


@pytest.mark.parametrize("value", [True, False])
def test_if_with_a_constant_condition_inlines_the_taken_branch(value: bool) -> None:
    g = Graph()
    x = g.input("x", (3, 40))
    then_branch, else_branch = branches(g, x)
    cond = g.const(np.array(value), np.bool_)
    y = g.node("If", [cond], then_branch=then_branch, else_branch=else_branch)
    g.output(g.node("Add", [y, x]))
    compiled = check(g)
    assert compiled.manifest["host_ops"] == 0


@pytest.mark.parametrize("value", [True, False])
def test_if_with_a_runtime_condition_selects_between_both_branches(value: bool) -> None:
    g = Graph()
    x = g.input("x", (3, 40))
    cond = g.input("cond", (), BOOL, values=np.array(value))
    then_branch, else_branch = branches(g, x)
    g.output(g.node("If", [cond], then_branch=then_branch, else_branch=else_branch))
    check(g)


def test_if_with_a_runtime_condition_and_branches_of_different_shapes_is_a_user_error() -> None:
    g = Graph()
    x = g.input("x", (3, 4))
    cond = g.input("cond", (), BOOL)
    out = helper.make_tensor_value_info
    then_branch = helper.make_graph([helper.make_node("Identity", [x], ["t"])], "then",
                                    [], [out("t", TensorProto.FLOAT, None)])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [0])
    else_branch = helper.make_graph([helper.make_node("ReduceSum", [x, "axes"], ["e"])], "else",
                                    [], [out("e", TensorProto.FLOAT, None)], [axes])
    g.output(g.node("If", [cond], then_branch=then_branch, else_branch=else_branch))
    with pytest.raises(UserError, match=r"node '/If_1' \(If\): .*shape"):
        ttc.compile(g.model())


# ----------------------------------------------------------------------------------------------
# Scan: the body inlined once per step


def scan_body(weight: str) -> object:
    """state' = tanh(state @ W + x_t) * decay_t (W read from the enclosing graph); outputs state' and
    state' + 1 (a body initializer)."""
    tensor = helper.make_tensor_value_info
    one = helper.make_tensor("body_one", TensorProto.FLOAT, [], [1.0])
    return helper.make_graph(
        [helper.make_node("MatMul", ["state_in", weight], ["projected"]),
         helper.make_node("Add", ["projected", "x_t"], ["summed"]),
         helper.make_node("Tanh", ["summed"], ["activated"]),
         helper.make_node("Mul", ["activated", "decay_t"], ["state_out"]),
         helper.make_node("Add", ["state_out", "body_one"], ["shifted"])],
        "step", [tensor("state_in", TensorProto.FLOAT, [3, 40]), tensor("x_t", TensorProto.FLOAT, [3, 40]),
                 tensor("decay_t", TensorProto.FLOAT, [3, 40])],
        [tensor("state_out", TensorProto.FLOAT, [3, 40]), tensor("shifted", TensorProto.FLOAT, [3, 40])], [one])


@pytest.mark.parametrize(("input_axes", "input_directions", "output_axes", "output_directions"), [
    ([0, 0], [0, 0], [0], [0]),
    ([0, 2], [1, 0], [1], [1]),
    ([1, -1], [0, 1], [-1], [0]),
])
def test_scan_threads_the_state_and_slices_and_stacks_by_axes_and_directions(
        input_axes: list[int], input_directions: list[int], output_axes: list[int],
        output_directions: list[int]) -> None:
    g = Graph()
    steps, rows, cols = 4, 3, 40
    initial = g.input("initial", (rows, cols))
    shapes = []
    for axis in input_axes:
        shape = [rows, cols]
        shape.insert(axis % 3, steps)
        shapes.append(tuple(shape))
    x = g.input("x", shapes[0])
    decay = g.input("decay", shapes[1], values=np.random.default_rng(5).uniform(0.5, 1.0, shapes[1]))
    weight = g.const(np.random.default_rng(6).uniform(-0.3, 0.3, (cols, cols)))
    final, stacked = g.node("Scan", [initial, x, decay], outputs=2, body=scan_body(weight), num_scan_inputs=2,
                            scan_input_axes=input_axes, scan_input_directions=input_directions,
                            scan_output_axes=output_axes, scan_output_directions=output_directions)
    g.output(final)
    g.output(stacked)
    assert check(g).manifest["host_ops"] == 0


def test_scan_output_transposed_and_regrouped_moves_rows_after_its_stack() -> None:
    """LinearAttention's ending: the steps stacked on axis 0, then [T, B, H, D] -> [B, T, H, D] -> [B, T, H*D]
    (a tile-granular concat heading a chain that is not)."""
    g = Graph()
    tensor = helper.make_tensor_value_info
    body = helper.make_graph(
        [helper.make_node("Add", ["acc_in", "x_t"], ["acc_out"]), helper.make_node("Identity", ["acc_out"], ["y_t"])],
        "step", [tensor("acc_in", TensorProto.FLOAT, [2, 4, 8]), tensor("x_t", TensorProto.FLOAT, [2, 4, 8])],
        [tensor("acc_out", TensorProto.FLOAT, [2, 4, 8]), tensor("y_t", TensorProto.FLOAT, [2, 4, 8])])
    initial, x = g.input("initial", (2, 4, 8)), g.input("x", (5, 2, 4, 8))
    _, stacked = g.node("Scan", [initial, x], outputs=2, body=body, num_scan_inputs=1)
    moved = g.node("Transpose", [stacked], perm=[1, 0, 2, 3])
    g.output(g.node("Reshape", [moved, g.const(np.array([2, 5, 32]), np.int64)]))
    check(g)


def opset8_scan(batch: int) -> Graph:
    g = Graph()
    tensor = helper.make_tensor_value_info
    body = helper.make_graph(
        [helper.make_node("Add", ["sum_in", "next"], ["sum_out"]), helper.make_node("Identity", ["sum_out"], ["out"])],
        "step", [tensor("sum_in", TensorProto.FLOAT, [2]), tensor("next", TensorProto.FLOAT, [2])],
        [tensor("sum_out", TensorProto.FLOAT, [2]), tensor("out", TensorProto.FLOAT, [2])])
    initial, x = g.input("initial", (batch, 2)), g.input("x", (batch, 3, 2))
    for name in g.node("Scan", ["", initial, x], outputs=2, body=body, num_scan_inputs=1, directions=[1]):
        g.output(name)
    return g


def test_opset8_scan_of_batch_one_runs_as_scan_9() -> None:
    check(opset8_scan(1), opset=8)


def test_opset8_scan_of_a_larger_batch_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"node '/Scan_1' \(Scan\): opset-8 batch size 2 of input 'initial'"):
        ttc.compile(opset8_scan(2).model(8))


# ----------------------------------------------------------------------------------------------
# Loop: unrolled when its trip count and condition are known at compile time


def loop_body(condition: onnx.NodeProto, table: str) -> object:
    """acc' = acc * 0.5 + table[i] (a row of an enclosing constant picked by the iteration number);
    a scan output acc' * 2; the condition from `condition` (it writes `cond_out`)."""
    tensor = helper.make_tensor_value_info
    one = helper.make_tensor("loop_one", TensorProto.INT64, [1], [1])
    half = helper.make_tensor("loop_half", TensorProto.FLOAT, [], [0.5])
    nodes = [condition,
             helper.make_node("Unsqueeze", ["i", "loop_one_axis"], ["start"]),
             helper.make_node("Add", ["start", "loop_one"], ["end"]),
             helper.make_node("Slice", [table, "start", "end"], ["row"]),
             helper.make_node("Mul", ["acc_in", "loop_half"], ["halved"]),
             helper.make_node("Add", ["halved", "row"], ["acc_out"]),
             helper.make_node("Add", ["acc_out", "acc_out"], ["doubled"])]
    axis = helper.make_tensor("loop_one_axis", TensorProto.INT64, [1], [0])
    return helper.make_graph(
        nodes, "body", [tensor("i", TensorProto.INT64, []), tensor("cond_in", TensorProto.BOOL, []),
                        tensor("acc_in", TensorProto.FLOAT, [1, 40])],
        [tensor("cond_out", TensorProto.BOOL, []), tensor("acc_out", TensorProto.FLOAT, [1, 40]),
         tensor("doubled", TensorProto.FLOAT, [1, 40])], [one, half, axis])


def loop_graph(condition: onnx.NodeProto, trips: int | None, cond: bool | None = True,
               trips_input: bool = False) -> Graph:
    g = Graph()
    acc = g.input("acc", (1, 40))
    table = g.const(np.random.default_rng(7).standard_normal((6, 40)))
    if trips_input:
        count = g.input("trips", (), TensorProto.INT64, values=np.array(trips))
    else:
        count = "" if trips is None else g.const(np.array(trips), np.int64)
    keep_going = "" if cond is None else g.const(np.array(cond), np.bool_)
    final, scanned = g.node("Loop", [count, keep_going, acc], outputs=2, body=loop_body(condition, table))
    g.outputs.append(helper.make_tensor_value_info(final, TensorProto.FLOAT, [1, 40]))  # Loop infers no shape
    g.output(scanned)
    return g


def test_loop_with_a_constant_trip_count_is_unrolled_on_the_device() -> None:
    g = loop_graph(helper.make_node("Identity", ["cond_in"], ["cond_out"]), trips=5)
    check(g)


@pytest.mark.parametrize("trips", [6, None])
def test_loop_stops_where_its_compile_time_condition_turns_false(trips: int | None) -> None:
    limit = helper.make_tensor("limit", TensorProto.INT64, [], [2])
    stop = helper.make_node("Less", ["i", "limit_value"], ["cond_out"])
    g = loop_graph(stop, trips=trips)
    body = g.nodes[-1].attribute[0].g
    body.node.insert(0, helper.make_node("Constant", [], ["limit_value"], value=limit))
    check(g)


def test_loop_with_a_runtime_trip_count_is_a_user_error() -> None:
    g = loop_graph(helper.make_node("Identity", ["cond_in"], ["cond_out"]), trips=3, trips_input=True)
    with pytest.raises(UserError, match=r"node '/Loop_1' \(Loop\): the trip count is computed at run time"):
        ttc.compile(g.model())


def test_loop_with_a_data_dependent_condition_is_a_user_error() -> None:
    g = loop_graph(helper.make_node("ReduceMax", ["acc_in"], ["cond_out"], keepdims=0), trips=3)
    body = g.nodes[-1].attribute[0].g
    body.node[0].output[0] = "peak"
    body.node.insert(1, helper.make_node("Greater", ["peak", "loop_half"], ["cond_out"]))
    with pytest.raises(UserError, match=r"node '/Loop_1' \(Loop\): the body computes its condition from data"):
        ttc.compile(g.model())
