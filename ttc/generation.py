"""`ttc generate` and `ttc.generate`: text generation with a GPT-2-class causal LM on the emulated Grayskull.

    import ttc
    result = ttc.generate("gpt2-kv.onnx", [464, 2068, 7586], max_new_tokens=32, top_k=40, seed=0)
    result.tokens, result.summary()

Two export forms are accepted, and the mode follows from the model:

- **cached**: the model takes per-layer past keys/values and returns them with this call's appended
  (inputs `past_key_values.N.key` / outputs `present.N.key`, or any names paired by `kv_names`). Both
  programs are compiled once, at fixed shapes: the *prefill* at the prompt's length and the *decode* at one
  token. The decode program's cache has `capacity` slots (max_length in whole tile rows); slot validity is the
  attention mask (1 for a written slot, 0 for an empty one) and the token's position is `position_ids`, so one
  compiled decode program serves every position up to `max_length`: no recompiles, whatever the length.
  The prefill's entries fill the last t slots (where the model's concat puts them) and decode step k writes
  slot k: attention does not care which slot a key sits in (its position is already in it: absolute position
  embeddings, or rotary ones applied before caching).
- **uncached**: a model without cache inputs, at a fixed sequence length (or compiled at `max_length` if its
  length is dynamic). Every step reruns the whole sequence, padded at the tail, under the model's causal mask,
  and reads the logits of the last real token. Slower by the sequence length; said when it runs.

Sampling is greedy (the default), or by `temperature` with `top_k` and/or `top_p` (nucleus) filtering, from a
seeded numpy generator: the same seed gives the same tokens. Timings: the emulator's wall time per step, and
the cost model's e150 device time of the programs each step runs (prefill and decode apart).

Both programs keep the cache in device DRAM (the `kv-cache` pass: device states written at the runtime scalar
`kv_position`), on one emulated device, so the prefill writes the prompt's entries there and a decode step
moves the token, its position and the mask, and the logits. A model whose cache update the pass does not recognise keeps the
cache on the host (each step uploads the padded past and reads `present` back), and says so (docs/generate.md).
"""

from __future__ import annotations

import math
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ttc.ir.diagnostics import UserError

# -- the model's interface ------------------------------------------------------------------------------------

_PAST_WORDS = ("past_key_values", "past_key_value", "past")
POSITION_SCALAR = "kv_position"  # the runtime scalar the device cache's writes go to
_PRESENT_WORDS = ("present_key_values", "present", "present")


@dataclass(frozen=True)
class Port:
    """One graph input or output: its name, element type and dims (an int, or a name for a dynamic one)."""

    name: str
    elem_type: int
    dims: tuple[int | str, ...]

    @property
    def rank(self) -> int:
        return len(self.dims)


@dataclass(frozen=True)
class KVPair:
    """A past input and the present output that returns it with this call's entries appended on `axis`."""

    past: str
    present: str
    axis: int


@dataclass(frozen=True)
class LMInterface:
    """What the generator feeds and reads: the roles of a causal LM's inputs and outputs."""

    input_ids: str
    logits: str
    attention_mask: str | None = None
    position_ids: str | None = None
    kv: tuple[KVPair, ...] = ()
    ports: Mapping[str, Port] = field(default_factory=dict)

    @property
    def cached(self) -> bool:
        return bool(self.kv)


def _ports(values: Sequence[onnx.ValueInfoProto]) -> dict[str, Port]:
    ports = {}
    for value in values:
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?")
                     for d in tensor.shape.dim)
        ports[value.name] = Port(value.name, tensor.elem_type, dims)
    return ports


def _present_name(past: str) -> list[str]:
    """The output names a past input's present usually has (`past_key_values.0.key` -> `present.0.key`)."""
    names = []
    for word, present in zip(_PAST_WORDS, ("present", "present", "present"), strict=True):
        if word in past:
            names.append(past.replace(word, present, 1))
    return names


def parse_kv_names(specs: Sequence[str]) -> dict[str, str]:
    """`--kv-names IN=OUT[,IN=OUT...]` (repeatable) as {past input: present output}."""
    pairs: dict[str, str] = {}
    for spec in specs:
        for item in filter(None, (s.strip() for s in spec.split(","))):
            past, sep, present = item.partition("=")
            if not sep or not past or not present:
                raise UserError(f"--kv-names takes PAST_INPUT=PRESENT_OUTPUT pairs, not {item!r}")
            pairs[past] = present
    return pairs


def _seq_axis(past: Port, present: Port, where: str) -> int:
    """The axis on which present grows: the one dim that is dynamic (or differs) between the two."""
    if past.rank != present.rank:
        raise UserError(f"{where}: '{past.name}' has rank {past.rank} but '{present.name}' has rank "
                        f"{present.rank}; a past input and its present output must have the same rank")
    differ = [i for i, (a, b) in enumerate(zip(past.dims, present.dims, strict=True))
              if a != b or isinstance(a, str)]
    if not differ:
        raise UserError(f"{where}: '{past.name}' and '{present.name}' have the same fixed shape "
                        f"{list(past.dims)}, so no axis grows; is it a cache pair?")
    # The batch axis is dynamic too in some exports: the sequence axis is the last differing one before the
    # feature axis (keys are [batch, heads, seq, head_dim] or [batch, seq, heads, head_dim]).
    candidates = [i for i in differ if i != 0] or differ
    return candidates[-1] if candidates[-1] != past.rank - 1 else candidates[0]


def lm_interface(model: onnx.ModelProto, kv_names: Mapping[str, str] | None = None,
                 where: str = "the model") -> LMInterface:
    """Find the input ids, logits, attention mask, position ids and cache pairs of a causal LM."""
    from ttc.frontend.loader import graph_inputs

    inputs = _ports(graph_inputs(model))
    outputs = _ports(model.graph.output)
    ports = {**inputs, **outputs}
    kv: list[KVPair] = []
    if kv_names:
        for past, present in kv_names.items():
            if past not in inputs:
                raise UserError(f"--kv-names: {where} has no input '{past}' (its inputs: {', '.join(inputs)})")
            if present not in outputs:
                raise UserError(f"--kv-names: {where} has no output '{present}' (its outputs: "
                                f"{', '.join(outputs)})")
            kv.append(KVPair(past, present, _seq_axis(inputs[past], outputs[present], where)))
    else:
        for name, port in inputs.items():
            if not any(word in name for word in _PAST_WORDS):
                continue
            match = next((n for n in _present_name(name) if n in outputs), None)
            if match is None:
                raise UserError(f"{where}: input '{name}' looks like a cache input but no output pairs with it "
                                f"(looked for {', '.join(repr(n) for n in _present_name(name))}); name the pairs "
                                f"with --kv-names PAST=PRESENT")
            kv.append(KVPair(name, match, _seq_axis(port, outputs[match], where)))
    paired_in = {p.past for p in kv}
    paired_out = {p.present for p in kv}
    rest_in = [n for n in inputs if n not in paired_in]
    rest_out = [n for n in outputs if n not in paired_out]

    def role(candidates: Sequence[str], words: Sequence[str]) -> str | None:
        for word in words:
            for name in candidates:
                if name == word or name.endswith(word):
                    return name
        return None

    input_ids = role(rest_in, ("input_ids", "ids", "tokens"))
    if input_ids is None:
        integer = [n for n in rest_in if inputs[n].elem_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)]
        if len(integer) == 1:
            input_ids = integer[0]
    if input_ids is None:
        raise UserError(f"{where}: cannot tell which input takes the token ids (inputs: {', '.join(rest_in)}); "
                        f"name it input_ids")
    logits = role(rest_out, ("logits",)) or (rest_out[0] if len(rest_out) == 1 else None)
    if logits is None:
        raise UserError(f"{where}: cannot tell which output holds the logits (outputs: {', '.join(rest_out)}); "
                        f"name it logits")
    mask = role(rest_in, ("attention_mask",))
    positions = role(rest_in, ("position_ids",))
    unknown = [n for n in rest_in if n not in (input_ids, mask, positions)]
    if unknown:
        raise UserError(f"{where}: input(s) {', '.join(repr(n) for n in unknown)} are neither token ids, "
                        f"attention mask, position ids nor a cache pair, so ttc generate cannot feed them; if they are "
                        f"cache inputs, pair them with their outputs: --kv-names PAST=PRESENT")
    if logits and ports[logits].rank != 3:
        raise UserError(f"{where}: output '{logits}' has rank {ports[logits].rank}; logits must be "
                        f"[batch, sequence, vocabulary]")
    return LMInterface(input_ids, logits, mask, positions, tuple(kv), ports)


# -- sampling ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sampling:
    """Greedy when temperature is 0; else softmax(logits / temperature) filtered by top_k and top_p."""

    temperature: float = 0.0
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # 1.0: no nucleus filter
    seed: int | None = 0

    def __post_init__(self) -> None:
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise UserError(f"--temperature must be a finite number >= 0, not {self.temperature}")
        if self.top_k < 0:
            raise UserError(f"--top-k must be >= 0 (0: no top-k filter), not {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"--top-p must be in (0, 1], not {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def describe(self) -> str:
        if self.greedy:
            return "greedy"
        parts = [f"temperature {self.temperature:g}"]
        if self.top_k:
            parts.append(f"top-k {self.top_k}")
        if self.top_p < 1:
            parts.append(f"top-p {self.top_p:g}")
        return "sampling, " + ", ".join(parts) + f", seed {self.seed}"


def sample(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> int:
    """One token id from a row of logits."""
    logits = np.asarray(logits, dtype=np.float64)
    if not np.all(np.isfinite(logits)):
        raise UserError("the model produced non-finite logits; cannot pick a token")
    if sampling.greedy:
        return int(np.argmax(logits))
    scaled = logits / sampling.temperature
    order = np.argsort(-scaled, kind="stable")
    if sampling.top_k:
        order = order[: sampling.top_k]
    probs = np.exp(scaled[order] - scaled[order[0]])
    probs /= probs.sum()
    if sampling.top_p < 1:
        keep = int(np.searchsorted(np.cumsum(probs), sampling.top_p) + 1)  # the smallest set reaching top_p
        order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
    return int(order[rng.choice(len(order), p=probs)])


def top2_gap(logits: np.ndarray) -> float:
    """The gap between the largest and second-largest logit (how near-tied the greedy choice is)."""
    top = np.partition(np.asarray(logits, dtype=np.float64), -2)[-2:]
    return float(top[1] - top[0])


# -- results ----------------------------------------------------------------------------------------------------

@dataclass
class StepTiming:
    kind: str  # "prefill" or "decode"
    tokens: int  # tokens this step adds to the sequence (prompt length for a cached prefill, else 1)
    wall_s: float  # emulator wall time of the run
    device_s: float  # the cost model's e150 time of the run's programs
    dram_bytes: int  # device DRAM high-water mark after the step
    to_device_bytes: int = 0  # bytes the step's run wrote from the host to the device (its inputs)
    to_host_bytes: int = 0  # bytes it read back (its outputs)


@dataclass
class GenerationResult:
    prompt: list[int]
    tokens: list[int]  # the generated ids (not the prompt)
    mode: str  # "cached" or "uncached"
    steps: list[StepTiming]
    compiles: int
    gaps: list[float]  # top-2 logit gap of every generated token's step
    arch: str = "e150"
    stopped: str = "max-new-tokens"  # or "eos" or "max-length"
    text: str | None = None
    batch_tokens: list[list[int]] = field(default_factory=list)  # every sequence's ids (row 0 is `tokens`)
    cache: str | None = None  # cached mode: where the cache lives between steps ("device" or "host")

    def to_json(self) -> dict[str, Any]:
        (pe, pd), (de, dd) = self.prefill_tokens_per_s, self.decode_tokens_per_s

        def rate(value: float) -> float | None:
            return None if math.isnan(value) else round(value, 3)

        return {"mode": self.mode, "prompt": self.prompt, "tokens": self.tokens, "batch_tokens": self.batch_tokens,
                "text": self.text, "stopped": self.stopped, "compiles": self.compiles, "arch": self.arch,
                "top2_gaps": [round(g, 4) for g in self.gaps],
                "tokens_per_s": {"prefill": {"emulated": rate(pe), "modelled": rate(pd)},
                                 "decode": {"emulated": rate(de), "modelled": rate(dd)}},
                "cache": self.cache,
                "steps": [{"kind": s.kind, "tokens": s.tokens, "wall_s": s.wall_s, "device_s": s.device_s,
                           "dram_bytes": s.dram_bytes, "to_device_bytes": s.to_device_bytes,
                           "to_host_bytes": s.to_host_bytes} for s in self.steps]}

    def _rate(self, kind: str, attr: str) -> float:
        steps = [s for s in self.steps if s.kind == kind]
        seconds = sum(getattr(s, attr) for s in steps)
        tokens = sum(s.tokens for s in steps)
        return tokens / seconds if seconds > 0 else float("nan")

    @property
    def prefill_tokens_per_s(self) -> tuple[float, float]:
        """(emulated, modelled device) tokens per second of the prefill (prompt tokens / time)."""
        return self._rate("prefill", "wall_s"), self._rate("prefill", "device_s")

    @property
    def decode_tokens_per_s(self) -> tuple[float, float]:
        """(emulated, modelled device) tokens per second of the decode steps."""
        return self._rate("decode", "wall_s"), self._rate("decode", "device_s")

    def summary(self) -> str:
        pe, pd = self.prefill_tokens_per_s
        de, dd = self.decode_tokens_per_s
        where = f", cache in {self.cache} {'DRAM' if self.cache == 'device' else 'memory'}" if self.cache else ""
        lines = [f"{len(self.tokens)} tokens generated ({self.mode} mode{where}, stopped at {self.stopped}); "
                 f"{self.compiles} compiled program set(s)",
                 f"{'':10}{'emulated tokens/s':>20}{f'modelled {self.arch} tokens/s':>28}",
                 f"{'prefill':10}{pe:>20.1f}{pd:>28.1f}",
                 f"{'decode':10}{de:>20.1f}{dd:>28.1f}"]
        return "\n".join(lines)


# -- the generator ------------------------------------------------------------------------------------------------

def _load(model: str | Path | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    if isinstance(model, onnx.ModelProto):
        return model, "the model"
    from ttc.fileio import check_onnx_path
    from ttc.frontend.loader import read_model

    path = Path(model)
    check_onnx_path(path)
    proto, _ = read_model(path)
    return proto, str(path)


class Generator:
    """Compiles a causal LM for generation and runs prefill and decode steps on the emulated device."""

    def __init__(self, model: str | Path | onnx.ModelProto, *, max_length: int | None = None,
                 kv_names: Mapping[str, str] | None = None, arch: str = "e150", dtype: str = "bf16",
                 math_fidelity: str = "hifi4", emulator: str | None = None, threads: int | None = None,
                 batch: int = 1, default_length: int | None = None) -> None:
        from ttc.compiler import CompileOptions

        if batch < 1:
            raise UserError(f"--batch must be at least 1, not {batch}")
        self.source = model
        path_like = not isinstance(model, onnx.ModelProto)
        self.proto, self.where = _load(model)
        self.interface = lm_interface(self.proto, kv_names, self.where)
        self.batch = batch
        self.options = dict(arch=arch, dtype=dtype, math_fidelity=math_fidelity)
        self._compile_options = CompileOptions
        self.emulator, self.threads = emulator, threads
        self.mode = "cached" if self.interface.cached else "uncached"
        ids = self.interface.ports[self.interface.input_ids]
        if ids.rank != 2:
            raise UserError(f"{self.where}: input '{ids.name}' has rank {ids.rank}; token ids must be "
                            f"[batch, sequence]")
        if isinstance(ids.dims[0], int) and ids.dims[0] != batch:
            raise UserError(f"{self.where} fixes the batch of '{ids.name}' to {ids.dims[0]}, so --batch {batch} "
                            f"cannot run; export it with a dynamic batch dimension")
        self.fixed_length = ids.dims[1] if ids.rank == 2 and isinstance(ids.dims[1], int) else None
        self.max_length = self._max_length(max_length, default_length)
        check_generation_fits(self.proto if not path_like else Path(model), self.interface, self.max_length,
                              batch, arch, dtype, where=self.where)
        self._compiled: dict[tuple, Any] = {}
        self.compiles = 0
        self.cache: str | None = None  # cached mode: "device" (DRAM across steps) or "host", once decided
        self._device_decoder: Any = None

    # -- shapes --------------------------------------------------------------------------------------------

    def _max_length(self, requested: int | None, default: int | None) -> int:
        if self.mode == "uncached" and self.fixed_length is not None:
            if requested is not None and requested > self.fixed_length:
                raise UserError(f"{self.where} runs at a fixed sequence length of {self.fixed_length}, so "
                                f"--max-length {requested} cannot be reached; export it longer or with cache inputs")
            return requested or self.fixed_length
        requested = requested if requested is not None else default
        if requested is None:
            raise UserError(f"{self.where} has a dynamic sequence length: give --max-length (prompt plus new "
                            f"tokens), the length its programs are compiled for")
        if requested < 2:
            raise UserError(f"--max-length must be at least 2 (a prompt token and a new one), not {requested}")
        return requested

    def _kv_shape(self, pair: KVPair, length: int) -> tuple[int, ...]:
        port = self.interface.ports[pair.past]
        dims = []
        for axis, dim in enumerate(port.dims):
            if axis == 0:
                dims.append(self.batch)
            elif axis == pair.axis:
                dims.append(length)
            elif isinstance(dim, int):
                dims.append(dim)
            else:
                raise UserError(f"{self.where}: dim {axis} of cache input '{pair.past}' is dynamic ('{dim}'); "
                                f"only its batch and sequence axes may be")
        return tuple(dims)

    def _compiled_for(self, shapes: dict[str, tuple[int, ...]], pipeline: str | None = None):
        from ttc.compiler import compile_for_api

        key = (tuple(sorted(shapes.items())), pipeline)
        compiled = self._compiled.get(key)
        if compiled is None:
            options = self._compile_options(**self.options, input_shapes=dict(shapes), pipeline=pipeline)
            compiled = compile_for_api(self.source if not isinstance(self.source, onnx.ModelProto) else self.proto,
                                       options)
            self._compiled[key] = compiled
            self.compiles += 1
        return compiled

    def _run(self, compiled, feeds: dict[str, np.ndarray], kind: str, tokens: int,
             steps: list[StepTiming], scalars: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        outputs = compiled.run(feeds, emulator=self.emulator, threads=self.threads, scalars=scalars)
        wall = time.perf_counter() - start
        device = sum(p.time_us for p in compiled.profile) * 1e-6
        transfers = compiled.executor(self.emulator, self.threads).transfers
        steps.append(StepTiming(kind, tokens, wall, device, dram_high_water(compiled),
                                transfers["to_device"], transfers["to_host"]))
        return outputs

    def _dynamic_shapes(self, fixed: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """The shapes to compile for: only inputs with a dynamic dimension are named."""
        dynamic = {}
        for name, shape in fixed.items():
            port = self.interface.ports[name]
            if any(isinstance(d, str) for d in port.dims):
                dynamic[name] = shape
        return dynamic

    # -- generating -------------------------------------------------------------------------------------------

    def generate(self, prompt: Sequence[int], max_new_tokens: int, sampling: Sampling = Sampling(),
                 eos_id: int | None = None, on_token: Callable[[int], None] | None = None) -> GenerationResult:
        prompt = [int(t) for t in prompt]
        if not prompt:
            raise UserError("the prompt is empty: give at least one token id")
        if max_new_tokens < 1:
            raise UserError(f"--max-new-tokens must be at least 1, not {max_new_tokens}")
        vocab = self.interface.ports[self.interface.logits].dims[-1]
        if isinstance(vocab, int):
            bad = [t for t in prompt if not 0 <= t < vocab]
            if bad:
                raise UserError(f"prompt token id(s) {bad[:5]} are outside the vocabulary [0, {vocab})")
        room = self.max_length - len(prompt)
        if room < 1:
            raise UserError(f"the prompt has {len(prompt)} tokens; --max-length {self.max_length} leaves no room "
                            f"for a new one")
        budget = min(max_new_tokens, room)
        rng = np.random.default_rng(sampling.seed)
        step = self._cached_steps if self.mode == "cached" else self._uncached_steps
        tokens: list[np.ndarray] = []  # per step, one id per sequence of the batch
        gaps: list[float] = []
        steps: list[StepTiming] = []
        stopped = "max-new-tokens" if budget == max_new_tokens else "max-length"
        for logits in step(prompt, budget, tokens, steps):
            gaps.append(top2_gap(logits[0]))
            chosen = np.array([sample(row, sampling, rng) for row in logits], dtype=np.int64)
            tokens.append(chosen)
            if on_token is not None:
                on_token(int(chosen[0]))
            if eos_id is not None and np.all(np.any(np.stack(tokens) == eos_id, axis=0)):
                stopped = "eos"
                break
            if len(tokens) == budget:
                break
        rows = np.stack(tokens, axis=1) if tokens else np.zeros((self.batch, 0), np.int64)
        return GenerationResult(prompt, [int(t) for t in rows[0]], self.mode, steps, self.compiles, gaps,
                                arch=self.options["arch"], stopped=stopped,
                                batch_tokens=[[int(t) for t in row] for row in rows],
                                cache=self.cache if self.mode == "cached" else None)

    def _uncached_steps(self, prompt: list[int], budget: int, tokens: list[int], steps: list[StepTiming]):
        length = self.fixed_length or self.max_length
        ids_name = self.interface.input_ids
        ids_dtype = _np_type(self.interface.ports[ids_name].elem_type)
        shapes = {ids_name: (self.batch, length)}
        extra: dict[str, np.ndarray] = {}
        if self.interface.attention_mask:
            shapes[self.interface.attention_mask] = (self.batch, length)
        if self.interface.position_ids:
            shapes[self.interface.position_ids] = (self.batch, length)
            extra[self.interface.position_ids] = np.broadcast_to(np.arange(length), (self.batch, length)).astype(
                _np_type(self.interface.ports[self.interface.position_ids].elem_type))
        compiled = self._compiled_for(self._dynamic_shapes(shapes))
        ids = np.zeros((self.batch, length), dtype=ids_dtype)  # the sequences, padded at the tail with id 0
        ids[:, : len(prompt)] = prompt
        filled = len(prompt)
        while True:
            feeds = {ids_name: ids.copy(), **extra}
            if self.interface.attention_mask:
                mask = np.zeros((self.batch, length), dtype=_np_type(
                    self.interface.ports[self.interface.attention_mask].elem_type))
                mask[:, :filled] = 1
                feeds[self.interface.attention_mask] = mask
            kind = "prefill" if filled == len(prompt) else "decode"
            outputs = self._run(compiled, feeds, kind, len(prompt) if kind == "prefill" else 1, steps)
            yield outputs[self.interface.logits][:, filled - 1]
            ids[:, filled] = tokens[-1]
            filled += 1

    def _check_cached_inputs(self) -> None:
        face = self.interface
        if face.attention_mask is None or face.position_ids is None:
            missing = " and ".join(n for n, v in (("attention_mask", face.attention_mask),
                                                  ("position_ids", face.position_ids)) if v is None)
            raise UserError(f"{self.where} has cache inputs but no {missing} input: ttc pads the cache to a fixed "
                            f"length and needs them to mask the empty slots and place the token; export the model "
                            f"with them (or without cache inputs, for the uncached mode)")

    def _cache_shapes(self, seq: int, past: int) -> dict[str, tuple[int, ...]]:
        face = self.interface
        assert face.attention_mask is not None and face.position_ids is not None
        b = self.batch
        fixed = {face.input_ids: (b, seq), face.position_ids: (b, seq), face.attention_mask: (b, past + seq)}
        fixed.update({p.past: self._kv_shape(p, past) for p in face.kv})
        return self._dynamic_shapes(fixed)

    @property
    def capacity(self) -> int:
        """Positions the device cache holds: max_length rounded up to whole tile rows (32), as the cache is
        tilized for attention; the slots past max_length are never written and stay masked."""
        return -(-self.max_length // 32) * 32

    def _device_pipeline(self) -> str:
        """The default pipeline with the kv-cache passes around tilize."""
        from ttc.compiler import default_pipeline
        from ttc.passes import parse_pipeline, pipeline_text
        from ttc.passes.kv_cache import KVCache, KVCacheRows

        passes = parse_pipeline(default_pipeline(self.options["dtype"], self.options["math_fidelity"]))
        at = [p.name for p in passes].index("tilize")
        pairs = ",".join(f"{p.past}={p.present}" for p in self.interface.kv)
        passes[at:at + 1] = [KVCache(pairs=pairs, position=POSITION_SCALAR), passes[at], KVCacheRows()]
        return pipeline_text(passes)

    def _device_decode(self):
        """The decode program with the cache in device DRAM (`kv-cache` pass), or None when the model's cache
        update is not a concat the pass recognises (the reason goes to stderr, and the host cache runs)."""
        if self._device_decoder is not None or self.cache == "host":
            return self._device_decoder
        try:
            self._device_decoder = self._compiled_for(self._cache_shapes(1, self.capacity - 1), self._device_pipeline())
            self.cache = "device"
        except UserError as exc:
            if not exc.message.startswith("kv-cache:"):
                raise
            self.cache = "host"
            print(f"ttc generate: the cache stays on the host ({exc.message})", file=sys.stderr)
        return self._device_decoder

    def _device_prefill(self, decode, length: int):
        """The prefill of a `length`-token prompt with the device cache too: it writes the prompt's entries into
        the last `length` slots of the caches, where the model's concat puts them (its causal mask is built from
        those slots). It runs on the decode program's device (its DRAM above the decode program's, the caches
        one buffer for both) when the two fit that DRAM together, else on a device of its own."""
        from ttc.compiler import dram_bank_peak

        prefill = self._compiled_for(self._cache_shapes(length, self.capacity - length), self._device_pipeline())
        if prefill._executor is None:
            desc = decode.executor(self.emulator, self.threads).device.desc
            banks, alignment = desc.dram_channels, desc.dram_alignment
            need = dram_bank_peak(decode.module, banks, alignment) + dram_bank_peak(prefill.module, banks, alignment)
            prefill.executor(self.emulator, self.threads,
                             share_with=decode if need <= desc.dram_channel_size else None)
        return prefill

    def _cached_steps(self, prompt: list[int], budget: int, tokens: list[int], steps: list[StepTiming]):
        self._check_cached_inputs()
        decode = self._device_decode() if budget > 1 or self.cache == "device" else None
        if decode is None and self.cache != "device":
            yield from self._host_cache_steps(prompt, budget, tokens, steps)
            return
        yield from self._device_cache_steps(decode, prompt, tokens, steps)

    def _prefill(self, prompt: list[int], steps: list[StepTiming]) -> dict[str, np.ndarray]:
        """The prompt against one empty (masked) past slot, so that no zero-length tensor is compiled."""
        face = self.interface
        assert face.attention_mask is not None and face.position_ids is not None
        b, t = self.batch, len(prompt)
        prefill = self._compiled_for(self._cache_shapes(t, 1))
        mask_type = _np_type(face.ports[face.attention_mask].elem_type)
        feeds = {face.input_ids: np.tile(np.asarray(prompt, dtype=_np_type(face.ports[face.input_ids].elem_type)),
                                         (b, 1)),
                 face.position_ids: np.tile(np.arange(t, dtype=_np_type(face.ports[face.position_ids].elem_type)),
                                            (b, 1)),
                 face.attention_mask: np.concatenate([np.zeros((b, 1), mask_type), np.ones((b, t), mask_type)], 1)}
        feeds.update({p.past: np.zeros(self._kv_shape(p, 1), np.float32) for p in face.kv})
        return self._run(prefill, feeds, "prefill", t, steps)

    def _device_cache_steps(self, decode, prompt: list[int], tokens: list[int], steps: list[StepTiming]):
        """The prefill writes the prompt's entries into the last t slots of the device caches; decode step k
        (position t + k) writes its entry at slot k. Slots are masked by validity (attention does not care where
        a key sits), so a step uploads the token, its position and the mask, and reads the logits."""
        face = self.interface
        assert face.attention_mask is not None and face.position_ids is not None
        b, t, slots = self.batch, len(prompt), self.capacity
        prefill = self._device_prefill(decode, t)
        mask_type = _np_type(face.ports[face.attention_mask].elem_type)
        pos_type = _np_type(face.ports[face.position_ids].elem_type)
        ids_type = _np_type(face.ports[face.input_ids].elem_type)
        mask = np.zeros((b, slots), mask_type)
        mask[:, slots - t:] = 1
        feeds = {face.input_ids: np.tile(np.asarray(prompt, dtype=ids_type), (b, 1)),
                 face.position_ids: np.tile(np.arange(t, dtype=pos_type), (b, 1)), face.attention_mask: mask.copy()}
        outputs = self._run(prefill, feeds, "prefill", t, steps, scalars={POSITION_SCALAR: slots - t})
        own, shared = prefill.executor(), decode.executor(self.emulator, self.threads)
        if own.device is not shared.device:  # two devices: the caches copied over once (counted with the prefill)
            for name in shared.states:
                cache = own.read_state(name)
                steps[-1].to_host_bytes += own.state_bytes(name)
                steps[-1].to_device_bytes += shared.write_state(name, cache)
        yield outputs[face.logits][:, -1]
        step = 0
        while True:
            mask[:, step] = 1  # this step's entry, written at slot `step`
            feeds = {face.input_ids: tokens[-1].astype(ids_type).reshape(b, 1),
                     face.position_ids: np.full((b, 1), t + step, pos_type), face.attention_mask: mask.copy()}
            outputs = self._run(decode, feeds, "decode", 1, steps, scalars={POSITION_SCALAR: step})
            step += 1
            yield outputs[face.logits][:, -1]

    def _host_cache_steps(self, prompt: list[int], budget: int, tokens: list[int], steps: list[StepTiming]):
        """The cache kept on the host (models whose cache update the kv-cache pass does not recognise): each
        decode step uploads the padded past and reads `present` back."""
        face = self.interface
        ids_type = _np_type(face.ports[face.input_ids].elem_type)
        mask_type = _np_type(face.ports[face.attention_mask].elem_type)
        pos_type = _np_type(face.ports[face.position_ids].elem_type)
        slots = self.max_length - 1  # the decode program's padded past
        cache = {p.past: np.zeros(self._kv_shape(p, slots), dtype=np.float32) for p in face.kv}
        b, t = self.batch, len(prompt)
        outputs = self._prefill(prompt, steps)
        decode = self._compiled_for(self._cache_shapes(1, slots)) if budget > 1 else None
        for p in face.kv:
            _put(cache[p.past], p.axis, 0, _take(outputs[p.present], p.axis, 1, 1 + t))
        length = t
        yield outputs[face.logits][:, -1]
        while True:
            assert decode is not None
            mask = np.zeros((b, slots + 1), mask_type)
            mask[:, :length] = 1
            mask[:, slots] = 1  # this step's own key and value, appended after the padded past
            feeds = {face.input_ids: tokens[-1].astype(ids_type).reshape(b, 1),
                     face.position_ids: np.full((b, 1), length, pos_type), face.attention_mask: mask}
            feeds.update({p.past: cache[p.past] for p in face.kv})
            outputs = self._run(decode, feeds, "decode", 1, steps)
            for p in face.kv:
                _put(cache[p.past], p.axis, length, _take(outputs[p.present], p.axis, slots, slots + 1))
            length += 1
            yield outputs[face.logits][:, -1]


def _take(array: np.ndarray, axis: int, start: int, stop: int) -> np.ndarray:
    index = [slice(None)] * array.ndim
    index[axis] = slice(start, stop)
    return array[tuple(index)]


def _put(array: np.ndarray, axis: int, start: int, values: np.ndarray) -> None:
    index = [slice(None)] * array.ndim
    index[axis] = slice(start, start + values.shape[axis])
    array[tuple(index)] = values


def _np_type(elem_type: int) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))


def dram_high_water(compiled: Any) -> int:
    """Bytes of device DRAM the emulated device has touched so far (its high-water mark, all banks)."""
    executor = getattr(compiled, "_executor", None)
    if executor is None:
        return 0
    return int(executor.device.dram.data.nbytes)


# -- will it fit? ----------------------------------------------------------------------------------------------

def kv_cache_bytes(interface: LMInterface, max_length: int, batch: int) -> int:
    """Device DRAM of the cache at `max_length` for `batch` sequences: every past tensor in bf16 tiles."""
    from ttc.fit import BF16_TILE_BYTES, TILE

    total = 0
    for pair in interface.kv:
        port = interface.ports[pair.past]
        dims = [batch if axis == 0 else max_length if axis == pair.axis else (d if isinstance(d, int) else 1)
                for axis, d in enumerate(port.dims)]
        rows = dims[-2] if len(dims) >= 2 else 1
        outer = math.prod(dims[:-2]) if len(dims) > 2 else 1
        total += outer * math.ceil(rows / TILE) * math.ceil(dims[-1] / TILE) * BF16_TILE_BYTES
    return total


def check_generation_fits(model: Path | onnx.ModelProto, interface: LMInterface, max_length: int, batch: int,
                          arch: str, dtype: str, where: str) -> None:
    """The weights plus the KV cache at `max_length` and `batch` against the card's DRAM, before any weight is
    read (the fit check of `ttc compile`, with the cache as a further need)."""
    from ttc.fit import check_model_fits

    if interface.cached:
        need = kv_cache_bytes(interface, max_length, batch)
        what = f"the KV cache at --max-length {max_length} and batch {batch}"

        def remedy(room: int) -> str:
            per_token = kv_cache_bytes(interface, 32, batch) / 32  # whole tiles of 32 positions
            longest = int(room // per_token) // 32 * 32 if room > 0 else 0
            text = (f"a shorter --max-length (the cache takes {per_token / 2**20:.2f} MiB per token at batch "
                    f"{batch}: " + (f"at most {longest} tokens fit beside the weights" if longest >= 32 else
                                     "not even 32 tokens fit beside the weights") + ")")
            if batch > 1:
                text += ", or a smaller --batch"
            return text

        extra = (need, what, remedy)
    else:
        extra = None
    check_model_fits(model, arch, dtype, name=where, extra=extra)


# -- the API ------------------------------------------------------------------------------------------------------

def generate(model: str | Path | onnx.ModelProto, prompt: Sequence[int], max_new_tokens: int = 32, *,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = 0,
             max_length: int | None = None, kv_names: Mapping[str, str] | None = None, eos_id: int | None = None,
             arch: str = "e150", dtype: str = "bf16", math_fidelity: str = "hifi4", emulator: str | None = None,
             threads: int | None = None, on_token: Callable[[int], None] | None = None) -> GenerationResult:
    """Generate `max_new_tokens` token ids after `prompt` (see the module's doc for the two modes)."""
    generator = Generator(model, max_length=max_length, kv_names=kv_names, arch=arch, dtype=dtype,
                          math_fidelity=math_fidelity, emulator=emulator, threads=threads,
                          default_length=len(prompt) + max_new_tokens)
    return generator.generate(prompt, max_new_tokens, Sampling(temperature, top_k, top_p, seed), eos_id, on_token)


def load_tokenizer(path: str | Path):
    """A `tokenizers` tokenizer from a local tokenizer.json (never a hub download)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--tokenizer {path}: no such file (a local tokenizer.json is needed; ttc never "
                        f"downloads one)")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise UserError("--tokenizer needs the `tokenizers` package: pip install tokenizers") from None
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the package's own parse errors
        raise UserError(f"--tokenizer {path}: not a tokenizer.json the `tokenizers` package reads ({exc})") from None


def parse_ids(text: str) -> list[int]:
    """`464,2068,7586` (commas or spaces) as token ids."""
    parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise UserError(f"--prompt-ids takes comma-separated token ids, not {text!r}") from None


def stream_printer(tokenizer: Any = None, out: Any = None) -> Callable[[int], None]:
    """Print each token as it comes (ids separated by commas, or decoded text with a tokenizer)."""
    out = out or sys.stdout
    state = {"first": True, "ids": [], "text": ""}

    def emit(token: int) -> None:
        if tokenizer is None:
            out.write(("" if state["first"] else ",") + str(token))
        else:
            state["ids"].append(token)
            text = tokenizer.decode(state["ids"])
            out.write(text[len(state["text"]):])
            state["text"] = text
        state["first"] = False
        out.flush()

    return emit
