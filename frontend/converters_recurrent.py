"""Recurrent layers (RNN, GRU, LSTM), unrolled over their static sequence length at import.

ttc compiles static programs and a recurrent layer's sequence length is a dim of its input, so the
converter writes out every step with ttir ops the device already runs: the input projections of all
steps at once (one `[T*B, I] @ [I, H]` product per gate, biases added), then per step the recurrent
product `h @ R_g^T` per gate, the activations and the gate arithmetic. The weights are cut per gate and
transposed once: at compile time when they are constants, by one device transpose each when computed.
A state known to be zero (no initial_h / initial_c) skips its products.

`sequence_lens` masks the steps past a batch entry's length, as the ONNX spec says: the state is held
(`where(t < len_b, new, old)`) and the entry's Y is zero there; the reverse direction then starts at the
entry's last valid step, as it should. (onnx's reference evaluator ignores sequence_lens; onnxruntime
follows the spec.) `layout = 1` (batch first) transposes X and the initial states in and Y, Y_h and
Y_c out. Activations are the spec's list (Relu, Tanh, Sigmoid, Affine, LeakyRelu, ThresholdedRelu,
ScaledTanh, HardSigmoid, Elu, Softsign, Softplus; case-insensitive), with activation_alpha/beta
consumed in order by the functions that take them (as onnxruntime reads them) and `clip` bounding the
input of every gate activation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ttc.frontend.converters import _tensor, converter, emit_slice
from ttc.frontend.converters_emitter import Emitter, _concat, _float_input

if TYPE_CHECKING:
    from ttc.frontend.importer import NodeContext
    from ttc.ir import Value

Activation = Callable[[Emitter, "Value"], "Value"]

# The gates in the order of W's, R's and B's rows, and the default activations (f, g, h).
GATES = {"RNN": "i", "GRU": "zrh", "LSTM": "iofc"}
DEFAULT_ACTIVATIONS = {"RNN": ("Tanh",), "GRU": ("Sigmoid", "Tanh"), "LSTM": ("Sigmoid", "Tanh", "Tanh")}
# Lengths compare exactly with step numbers as bf16 integers up to 256.
MAX_MASKED_STEPS = 256


def _scaled(e: Emitter, x: Value, alpha: float, beta: float) -> Value:
    y = e.scale(x, alpha)
    return y if beta == 0.0 else e.add(y, e.const(beta, y))


# name (lower case) -> (defaults of the alpha/beta it takes, how it is built)
ACTIVATIONS: dict[str, tuple[tuple[float, ...], Callable[..., Value]]] = {
    "relu": ((), lambda e, x: e.unary("relu", x)),
    "tanh": ((), lambda e, x: e.unary("tanh", x)),
    "sigmoid": ((), lambda e, x: e.unary("sigmoid", x)),
    "softplus": ((), lambda e, x: e.unary("softplus", x)),
    "softsign": ((), lambda e, x: e.div(x, e.add(e.unary("abs", x), e.const(1.0, x)))),
    "affine": ((1.0, 0.0), _scaled),
    "leakyrelu": ((0.01,), lambda e, x, a: e.add(e.unary("relu", x),
                                                 e.scale(e.binary("minimum", x, e.const(0.0, x)), a))),
    "thresholdedrelu": ((1.0,), lambda e, x, a: e.where(e.compare("gt", x, e.const(a, x)), x, e.const(0.0, x))),
    "scaledtanh": ((1.0, 1.0), lambda e, x, a, b: e.scale(e.unary("tanh", e.scale(x, b)), a)),
    "hardsigmoid": ((0.2, 0.5), lambda e, x, a, b: e.binary("minimum", e.unary("relu", _scaled(e, x, a, b)),
                                                          e.const(1.0, x))),
    "elu": ((1.0,), lambda e, x, a: e.where(e.compare("gt", x, e.const(0.0, x)), x,
                                            e.scale(e.sub(e.unary("exp", x), e.const(1.0, x)), a))),
}


@dataclass
class Layer:
    """One recurrent node: its kind, sizes, per-direction activations and clip."""

    kind: str
    steps: int
    batch: int
    hidden: int
    directions: int
    activations: list[list[Activation]]  # per direction: f (, g (, h))
    clip: float | None

    @property
    def gates(self) -> str:
        return GATES[self.kind]


def _activations(ctx: NodeContext, kind: str, directions: int) -> list[list[Activation]]:
    """The activation functions per direction from `activations`, `activation_alpha` and `activation_beta`."""
    per_direction = len(DEFAULT_ACTIVATIONS[kind])
    given = any(attr.name == "activations" for attr in ctx.node.attribute)  # RNN's schema default is 2 long
    names = list(ctx.attr("activations") if given else DEFAULT_ACTIVATIONS[kind] * directions)
    if len(names) == per_direction and directions == 2:
        names *= 2  # one list for both directions
    if len(names) != per_direction * directions:
        raise ctx.error(f"{len(names)} activations given; {kind} takes {per_direction} per direction "
                        f"({per_direction * directions} here)")
    alphas, betas = list(ctx.attr("activation_alpha") or ()), list(ctx.attr("activation_beta") or ())
    functions: list[Activation] = []
    for name in names:
        entry = ACTIVATIONS.get(name.lower())
        if entry is None:
            raise ctx.error(f"activation '{name}' is not supported (ttc builds "
                            f"{', '.join(sorted(ACTIVATIONS))})")
        defaults, build = entry
        params = []
        if defaults:
            params.append(alphas.pop(0) if alphas else defaults[0])
        if len(defaults) > 1:
            params.append(betas.pop(0) if betas else defaults[1])
        functions.append(lambda e, x, build=build, params=tuple(params): build(e, x, *params))
    return [functions[d * per_direction:(d + 1) * per_direction] for d in range(directions)]


def _operand(ctx: NodeContext, index: int) -> np.ndarray | Value | None:
    """An optional input: its array when constant, else its value; None when absent."""
    if not ctx.has_input(index):
        return None
    array = ctx.input_constant(index)
    return ctx.input(index) if array is None else array


def _rows(e: Emitter, operand: np.ndarray | Value, like: Value, direction: int, begin: int, end: int,
          transpose: bool = False) -> Value:
    """operand[direction, begin:end] (transposed if asked): cut at compile time from a constant."""
    if isinstance(operand, np.ndarray):
        part = operand[direction, begin:end]
        return e.const(part.T if transpose else part, like)
    shape = _tensor(operand).shape
    begins, ends = [direction, begin, *[0] * (len(shape) - 2)], [direction + 1, end, *shape[2:]]
    part = e.reshape(emit_slice(e.ctx, operand, begins, ends, [1] * len(shape)), (end - begin, *shape[2:]))
    return e.transpose(part, (1, 0)) if transpose else part


def _bias(e: Emitter, bias: np.ndarray | Value | None, like: Value, direction: int, pieces: list[int],
          hidden: int) -> Value | None:
    """The sum of the bias pieces (row blocks of `hidden`) of one direction; None without a bias."""
    if bias is None or not pieces:
        return None
    if isinstance(bias, np.ndarray):
        total = sum(bias[direction, p * hidden:(p + 1) * hidden] for p in pieces)
        return e.const(np.asarray(total), like)
    parts = [_rows(e, bias, like, direction, p * hidden, (p + 1) * hidden) for p in pieces]
    return _sum(e, *parts)


def _sum(e: Emitter, *terms: Value | None) -> Value | None:
    """The sum of the terms that are not None (a zero term is None)."""
    present = [t for t in terms if t is not None]
    if not present:
        return None
    total = present[0]
    for term in present[1:]:
        total = e.add(total, term)
    return total


def _clipped(e: Emitter, layer: Layer, x: Value) -> Value:
    if layer.clip is None:
        return x
    return e.binary("minimum", e.binary("maximum", x, e.const(-layer.clip, x)), e.const(layer.clip, x))


def _state(e: Emitter, operand: np.ndarray | Value | None, like: Value, layout: int, direction: int,
           batch: int) -> Value | None:
    """One direction's initial state [B, H] from initial_h / initial_c ([D, B, H], or [B, D, H] with
    layout 1); None (zero) when absent."""
    if operand is None:
        return None
    if layout:
        operand = operand.swapaxes(0, 1) if isinstance(operand, np.ndarray) else e.transpose(operand, (1, 0, 2))
    return _rows(e, operand, like, direction, 0, batch)


def _step_masks(ctx: NodeContext, e: Emitter, like: Value, steps: int, batch: int) -> list[Value] | None:
    """Per step t an i1 [B, 1] mask of the batch entries still in their sequence (t < len_b); None when
    no step is masked."""
    lengths = _operand(ctx, 4)
    if lengths is None:
        return None
    if isinstance(lengths, np.ndarray):
        lengths = lengths.reshape(batch, 1)
        if (lengths >= steps).all():
            return None
        return [ctx.constant(lengths > t, f"{ctx.name}.step{t}") for t in range(steps)]
    if steps > MAX_MASKED_STEPS:
        raise ctx.error(f"{steps} steps with computed sequence_lens (lengths compare exactly with step numbers "
                        f"up to {MAX_MASKED_STEPS} only)")
    lengths_f = e.reshape(e.cast(lengths, _tensor(like).element_type), (batch, 1))
    return [e.compare("gt", lengths_f, e.const(float(t), lengths_f)) for t in range(steps)]


@dataclass
class Direction:
    """One direction's weights, cut per gate: the input projections of every step ([T*B, H] each, with
    the biases that add to it), the transposed recurrent weights ([H, H]), extra biases and peepholes."""

    inputs: list[Value]
    recurrent: list[Value]
    recurrent_bias: Value | None  # GRU with linear_before_reset: Rb_h, added inside the reset product
    peepholes: list[Value | None]  # LSTM: i, o, f


def _direction(ctx: NodeContext, e: Emitter, layer: Layer, x_rows: Value, direction: int,
               linear_before_reset: bool) -> Direction:
    w, r, bias = _operand(ctx, 1), _operand(ctx, 2), _operand(ctx, 3)
    hidden, count = layer.hidden, len(layer.gates)
    inputs, recurrent = [], []
    for g, gate in enumerate(layer.gates):
        w_t = _rows(e, w, x_rows, direction, g * hidden, (g + 1) * hidden, transpose=True)
        keep_recurrent_bias = layer.kind == "GRU" and gate == "h" and linear_before_reset
        pieces = [g] if keep_recurrent_bias else [g, count + g]
        inputs.append(_sum(e, e.matmul(x_rows, w_t), _bias(e, bias, x_rows, direction, pieces, hidden)))
        recurrent.append(_rows(e, r, x_rows, direction, g * hidden, (g + 1) * hidden, transpose=True))
    recurrent_bias = None
    if layer.kind == "GRU" and linear_before_reset:
        recurrent_bias = _bias(e, bias, x_rows, direction, [count + 2], hidden)
    peepholes: list[Value | None] = [None, None, None]
    p = _operand(ctx, 7) if layer.kind == "LSTM" else None
    if p is not None:
        peepholes = [_rows(e, p, x_rows, direction, k * hidden, (k + 1) * hidden) for k in range(3)]
    return Direction(inputs, recurrent, recurrent_bias, peepholes)


def _input_at(e: Emitter, layer: Layer, projection: Value, step: int) -> Value:
    """Rows of `step` of a [T*B, H] input projection."""
    shape = _tensor(projection).shape
    begin = step * layer.batch
    return emit_slice(e.ctx, projection, [begin, 0], [begin + layer.batch, shape[1]], [1, 1])


def _recurrent(e: Emitter, h: Value | None, weight: Value) -> Value | None:
    return None if h is None else e.matmul(h, weight)


def _rnn_step(e: Emitter, layer: Layer, weights: Direction, acts: list[Activation], step: int,
              h: Value | None, c: Value | None) -> tuple[Value, Value | None]:
    x = _input_at(e, layer, weights.inputs[0], step)
    return acts[0](e, _clipped(e, layer, _sum(e, x, _recurrent(e, h, weights.recurrent[0])))), None


def _gru_step(e: Emitter, layer: Layer, weights: Direction, acts: list[Activation], step: int,
              h: Value | None, c: Value | None, linear_before_reset: bool) -> tuple[Value, Value | None]:
    f, g = acts
    xz, xr, xh = (_input_at(e, layer, projection, step) for projection in weights.inputs)
    z = f(e, _clipped(e, layer, _sum(e, xz, _recurrent(e, h, weights.recurrent[0]))))
    r = f(e, _clipped(e, layer, _sum(e, xr, _recurrent(e, h, weights.recurrent[1]))))
    if linear_before_reset:
        reset = _sum(e, _recurrent(e, h, weights.recurrent[2]), weights.recurrent_bias)
        candidate = _sum(e, xh, None if reset is None else e.mul(r, reset))
    else:
        candidate = _sum(e, xh, None if h is None else e.matmul(e.mul(r, h), weights.recurrent[2]))
    candidate = g(e, _clipped(e, layer, candidate))
    if h is None:  # (1 - z) * h~
        return e.sub(candidate, e.mul(z, candidate)), None
    return e.add(candidate, e.mul(z, e.sub(h, candidate))), None  # (1 - z) * h~ + z * h


def _lstm_step(e: Emitter, layer: Layer, weights: Direction, acts: list[Activation], step: int,
               h: Value | None, c: Value | None, input_forget: bool) -> tuple[Value, Value | None]:
    f, g, act_h = acts
    xi, xo, xf, xc = (_input_at(e, layer, projection, step) for projection in weights.inputs)
    ri, ro, rf, rc = weights.recurrent
    pi, po, pf = weights.peepholes

    def peephole(p: Value | None, state: Value | None) -> Value | None:
        return None if p is None or state is None else e.mul(p, state)

    i = f(e, _clipped(e, layer, _sum(e, xi, _recurrent(e, h, ri), peephole(pi, c))))
    if input_forget:
        forget = e.sub(e.const(1.0, i), i)
    else:
        forget = f(e, _clipped(e, layer, _sum(e, xf, _recurrent(e, h, rf), peephole(pf, c))))
    candidate = g(e, _clipped(e, layer, _sum(e, xc, _recurrent(e, h, rc))))
    c_new = _sum(e, None if c is None else e.mul(forget, c), e.mul(i, candidate))
    o = f(e, _clipped(e, layer, _sum(e, xo, _recurrent(e, h, ro), peephole(po, c_new))))
    return e.mul(o, act_h(e, c_new)), c_new


def _held(e: Emitter, mask: Value, new: Value, old: Value | None) -> Value:
    """The new state where the entry is still in its sequence, the old (zero when None) past its end."""
    return e.where(mask, new, e.const(0.0, new) if old is None else old)


def _run(ctx: NodeContext, e: Emitter, layer: Layer, step_fn: Callable[..., tuple[Value, Value | None]],
         x_rows: Value, layout: int, **options: bool) -> list[Value | None]:
    """Unroll every direction; the outputs Y, Y_h (, Y_c) in ONNX's shapes (None for Y when unused)."""
    like = x_rows
    masks = _step_masks(ctx, e, like, layer.steps, layer.batch)
    linear_before_reset = bool(options.get("linear_before_reset"))
    ys: list[list[Value]] = []
    finals_h, finals_c = [], []
    reverse_directions = {"reverse": [True], "bidirectional": [False, True]}
    for d, reverse in enumerate(reverse_directions.get(ctx.attr("direction") or "forward", [False])):
        weights = _direction(ctx, e, layer, x_rows, d, linear_before_reset)
        h = _state(e, _operand(ctx, 5), like, layout, d, layer.batch)
        c = _state(e, _operand(ctx, 6), like, layout, d, layer.batch) if layer.kind == "LSTM" else None
        outputs: list[Value] = [like] * layer.steps
        for t in (reversed(range(layer.steps)) if reverse else range(layer.steps)):
            h_new, c_new = step_fn(e, layer, weights, layer.activations[d], t, h, c, **options)
            if masks is None:
                outputs[t], h, c = h_new, h_new, c_new
                continue
            outputs[t] = e.where(masks[t], h_new, e.const(0.0, h_new))
            h = _held(e, masks[t], h_new, h)
            c = None if c_new is None else _held(e, masks[t], c_new, c)
        ys.append(outputs)
        finals_h.append(h)
        finals_c.append(c)
    y = _sequence_output(ctx, e, layer, ys, layout) if ctx.node.output[0] else None
    results: list[Value | None] = [y]
    for finals in [finals_h, finals_c] if layer.kind == "LSTM" else [finals_h]:
        results.append(_state_output(ctx, e, layer, finals, layout))
    return results


def _sequence_output(ctx: NodeContext, e: Emitter, layer: Layer, ys: list[list[Value]], layout: int) -> Value:
    """Y from the per-direction step outputs ([B, H] each): [T, D, B, H], or [B, T, D, H] with layout 1,
    joined in that order (a transpose after a concat would be one movement reading several inputs, which
    the device only does for whole tiles)."""
    batch, hidden = layer.batch, layer.hidden
    if not layout:
        per_direction = [e.reshape(_joined(ctx, outputs, 0), (layer.steps, 1, batch, hidden)) for outputs in ys]
        return _joined(ctx, per_direction, 1)
    per_step = [_joined(ctx, [e.reshape(outputs[t], (batch, 1, 1, hidden)) for outputs in ys], 2)
                for t in range(layer.steps)]
    return _joined(ctx, per_step, 1)


def _state_output(ctx: NodeContext, e: Emitter, layer: Layer, finals: list[Value], layout: int) -> Value:
    """Y_h or Y_c from the per-direction final states: [D, B, H], or [B, D, H] with layout 1."""
    shape = (1, layer.batch, layer.hidden) if not layout else (layer.batch, 1, layer.hidden)
    return _joined(ctx, [e.reshape(state, shape) for state in finals], 1 if layout else 0)


def _joined(ctx: NodeContext, values: list[Value], axis: int) -> Value:
    return _concat(ctx, values, axis) if len(values) > 1 else values[0]


def _recurrent_layer(ctx: NodeContext, kind: str, step_fn: Callable[..., tuple[Value, Value | None]],
                     **options: bool) -> list[Value | None]:
    e = Emitter(ctx)
    x = _float_input(ctx)
    layout = ctx.attr("layout") or 0
    if layout:
        x = e.transpose(x, (1, 0, 2))
    steps, batch, input_size = _tensor(x).shape
    direction = ctx.attr("direction") or "forward"
    if direction not in ("forward", "reverse", "bidirectional"):
        raise ctx.error(f"direction '{direction}' is not forward, reverse or bidirectional")
    directions = 2 if direction == "bidirectional" else 1
    r_shape = _tensor(ctx.input(2)).shape
    hidden = ctx.attr("hidden_size") or r_shape[-1]
    gates = len(GATES[kind])
    expected = {1: (directions, gates * hidden, input_size), 2: (directions, gates * hidden, hidden)}
    for index, shape in expected.items():
        if _tensor(ctx.input(index)).shape != shape:
            raise ctx.error(f"input {index} has shape {_tensor(ctx.input(index)).shape}, expected {shape}")
    clip = ctx.attr("clip")
    layer = Layer(kind, steps, batch, hidden, directions, _activations(ctx, kind, directions),
                  None if clip is None else float(clip))
    x_rows = e.reshape(x, (steps * batch, input_size))
    return _run(ctx, e, layer, step_fn, x_rows, layout, **options)


@converter("RNN", since=7)
def rnn(ctx: NodeContext) -> list[Value | None]:
    """H_t = f(X_t W^T + H_{t-1} R^T + Wb + Rb)."""
    return _recurrent_layer(ctx, "RNN", _rnn_step)


@converter("GRU", since=7)
def gru(ctx: NodeContext) -> list[Value | None]:
    """z, r = f(X_t W^T + H_{t-1} R^T + b); h~ = g(X_t Wh^T + (r * H_{t-1}) Rh^T + b) (linear_before_reset:
    g(X_t Wh^T + Wbh + r * (H_{t-1} Rh^T + Rbh))); H_t = (1 - z) * h~ + z * H_{t-1}."""
    return _recurrent_layer(ctx, "GRU", _gru_step, linear_before_reset=bool(ctx.attr("linear_before_reset")))


@converter("LSTM", since=7)
def lstm(ctx: NodeContext) -> list[Value | None]:
    """i, f, o = f(X_t W^T + H_{t-1} R^T + P * C + b), c~ = g(...); C_t = f * C_{t-1} + i * c~;
    H_t = o * h(C_t); input_forget couples the gates (f = 1 - i)."""
    return _recurrent_layer(ctx, "LSTM", _lstm_step, input_forget=bool(ctx.attr("input_forget")))
