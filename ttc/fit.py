"""Does the model fit the card? A check that runs before any weight is read.

The exact DRAM and L1 plan comes later (the `allocate` pass records peaks and fails on exhaustion), but by
then the importer has read every weight into memory. For a model far too big for the card that is minutes
of I/O and gigabytes of RAM spent on an answer the graph's metadata already gives. This check reads only
the ONNX protobuf (external data stays on disk) and adds up what the weights alone will occupy in device
DRAM: tile-padded, in the data format the layout pass will give them. Weights alone are a lower bound of
the real need, so a model that fails here can never fit; one that passes may still fail in `allocate`,
with the exact figure.

The host has a limit too (`check_host_memory`): importing holds every weight and packs it into device
pages. Inline weights cost about three times their bytes at the peak (the protobuf, the array, the pages);
external ones are memory-mapped from their files and packed a band at a time, about once their bytes. Before any weight is read, that need is
compared with `--max-host-memory` (default: the RAM available now) and refused with the figure and a remedy.
The card-fit hint suggests --dtype bfp8_b only when the host can carry out that compile.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator

import onnx

from ttc.ir.diagnostics import UserError
from ttc.ir.dialects.tt import DEVICES

TILE = 32
BF16_TILE_BYTES = 2048
BFP8_TILE_BYTES = 1088
BFP4_TILE_BYTES = 576  # 1024 4-bit mantissas and 64 shared exponents
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
_ELEMENT_BYTES = {onnx.TensorProto.INT64: 8, onnx.TensorProto.INT32: 4, onnx.TensorProto.BOOL: 1,
                  onnx.TensorProto.INT8: 1, onnx.TensorProto.UINT8: 1}


def _tiles(dims: list[int]) -> int:
    """Tiles of a tensor in tile layout: the last two dims padded to 32, the rest multiplied out."""
    if not dims:
        return 1
    rows = dims[-2] if len(dims) >= 2 else 1
    batch = math.prod(dims[:-2]) if len(dims) > 2 else 1
    return batch * math.ceil(rows / TILE) * math.ceil(dims[-1] / TILE)


def tensor_device_bytes(tensor: onnx.TensorProto, dtype: str) -> int:
    """DRAM bytes of one constant on the device. Float weights of matrix shape (both last dims at least a
    tile) become bfp8_b with dtype=bfp8_b; everything else float is bf16. Integer constants are counted at
    their host size (they are small index tables or folded away)."""
    dims = list(tensor.dims)
    if tensor.data_type in _FLOAT_TYPES:
        matrix = len(dims) >= 2 and dims[-1] >= TILE and dims[-2] >= TILE
        block = {"bfp8_b": BFP8_TILE_BYTES, "bfp4_b": BFP4_TILE_BYTES}
        per_tile = block.get(dtype, BF16_TILE_BYTES) if matrix else BF16_TILE_BYTES
        return _tiles(dims) * per_tile
    return math.prod(dims) * _ELEMENT_BYTES.get(tensor.data_type, 4)


def conv_weight_dims(tensor: onnx.TensorProto) -> list[int]:
    """A Conv weight [OC, C / groups, KH, KW] as the device stores it: the matrix [KH * KW * C', OC], the
    channels padded to whole tiles (groups make it block-diagonal, larger still: this is a lower bound)."""
    oc, channels, kh, kw = ([*list(tensor.dims), 1, 1, 1, 1])[:4]
    return [kh * kw * math.ceil(channels / TILE) * TILE, oc]


def _as_conv_weights(proto: onnx.ModelProto, tensors: list[onnx.TensorProto]) -> list[onnx.TensorProto]:
    """The constants, Conv weights (4-D) reshaped to their device matrices."""
    names = {node.input[1] for node in proto.graph.node if node.op_type == "Conv" and len(node.input) > 1}
    shaped = []
    for tensor in tensors:
        if tensor.name in names and len(tensor.dims) == 4:
            matrix = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=conv_weight_dims(tensor))
            shaped.append(matrix)
        else:
            shaped.append(tensor)
    return shaped


def _constants(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        if node.op_type == "Constant":
            yield from (attr.t for attr in node.attribute if attr.HasField("t"))


HOST_PEAK_FACTOR = 3  # inline weights: in the protobuf, as numpy arrays, and packed into device pages
MAPPED_PEAK_FACTOR = 1  # external weights are mapped from their files (read band by band while packing):
#                         the packed pages (at most the float32 bytes) and one band beside them
HOST_BASELINE = 512 << 20  # Python, numpy, onnx and the compiler's own structures


def _host_bytes(tensor: onnx.TensorProto) -> int:
    per = 4 if tensor.data_type in _FLOAT_TYPES else _ELEMENT_BYTES.get(tensor.data_type, 4)
    if tensor.data_type == onnx.TensorProto.DOUBLE:
        per = 8
    return math.prod(tensor.dims) * per


def host_weight_bytes(proto: onnx.ModelProto) -> int:
    """The bytes of every constant as the importer holds it (its host element type; external data included)."""
    return sum(_host_bytes(tensor) for tensor in _constants(proto.graph))


def host_memory_needed(proto: onnx.ModelProto) -> int:
    """An estimate of the peak host RAM (anonymous memory) a compile of this model needs."""
    from onnx.external_data_helper import uses_external_data

    need = HOST_BASELINE
    for tensor in _constants(proto.graph):
        need += (MAPPED_PEAK_FACTOR if uses_external_data(tensor) else HOST_PEAK_FACTOR) * _host_bytes(tensor)
    return need


def available_host_memory() -> int:
    """The RAM available now (MemAvailable of /proc/meminfo; physical pages where that is absent)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: no limit


def parse_size(text: str, what: str = "--max-host-memory") -> int:
    """`16G`, `512M`, `2048K`, `1.5G` or a byte count."""
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match:
        from ttc.ir.diagnostics import UserError

        raise UserError(f"{what} {text!r} is not a size: give bytes or a number with K, M, G or T (e.g. 16G)")
    return int(float(match[1]) * (1 << {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[match[2].upper()]))


def check_host_memory(proto: onnx.ModelProto, limit: int | None, name: str | None = None) -> int:
    """Raise UserError when compiling the model would need more host RAM than `limit` (None: the RAM available
    now); returns the estimate. Runs before any weight is read."""
    needed = host_memory_needed(proto)
    source = "--max-host-memory" if limit is not None else "the RAM available now"
    limit = available_host_memory() if limit is None else limit
    if needed <= limit:
        return needed
    weights = host_weight_bytes(proto)
    raise UserError(
        f"{name or 'the model'}: compiling it needs about {_gib(needed)} of host RAM ({_gib(weights)} of weights, "
        f"held and packed into device pages, plus {_gib(HOST_BASELINE)}), but the limit is "
        f"{_gib(limit)} ({source}). Checked before "
        f"reading any weight. Try: a machine with more free RAM, or --max-host-memory with a larger figure if "
        f"this one has swap to spare; --dtype bfp8_b does not lower it (the weights are read in float32 first)")


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def check_model_fits(model: str | os.PathLike[str] | onnx.ModelProto, arch: str, dtype: str,
                     name: str | None = None, host_limit: int | None = None,
                     extra: tuple[int, str, Callable[[int], str]] | None = None) -> int:
    """Raise UserError when the weights alone (plus `extra`) exceed the card's DRAM; returns the weight bytes.
    `name` names a ModelProto read from a file in the message; `host_limit` is the host RAM the bfp8_b hint
    may assume (default: what is available now). `extra` is a further need known before any weight is read:
    (bytes, what it is, the remedy to suggest given the bytes left beside the weights), e.g. a generator's KV
    cache."""
    if isinstance(model, onnx.ModelProto):
        proto, where = model, name or "the model"
    else:
        try:
            proto = onnx.load(os.fspath(model), load_external_data=False)
        except Exception:
            return 0  # unreadable: the loader reports it with the full story
        where = os.fspath(model)
    tensors = _as_conv_weights(proto, list(_constants(proto.graph)))
    weights = sum(tensor_device_bytes(t, dtype) for t in tensors)
    extra_bytes, extra_what, extra_remedy = extra if extra is not None else (0, "", None)
    needed = weights + extra_bytes
    device = DEVICES[arch]
    available = device.dram_size
    if needed <= available:
        return weights
    hints = []
    if dtype != "bfp8_b" and tensors:
        smaller = sum(tensor_device_bytes(t, "bfp8_b") for t in tensors) + extra_bytes
        verdict = "would fit" if smaller <= available else "would still not fit"
        host_need, host_limit = host_memory_needed(proto), (available_host_memory() if host_limit is None
                                                             else host_limit)
        if smaller <= available and host_need > host_limit:
            verdict = (f"would fit the card, but this host cannot pack it: about {_gib(host_need)} of RAM, "
                       f"{_gib(host_limit)} available")
        hints.append(f"--dtype bfp8_b stores matrix weights in about half the bytes ({_gib(smaller)} in all: "
                     f"{verdict})")
        if smaller > available:
            quarter = sum(tensor_device_bytes(t, "bfp4_b") for t in tensors) + extra_bytes
            verdict = "would fit" if quarter <= available else "would still not fit"
            hints.append(f"bfp4_b matrix weights (the device's 4-bit block format; not yet a --dtype of ttc) "
                         f"would need {_gib(quarter)} in all: {verdict}")
    if extra_remedy is not None:
        hints.append(extra_remedy(available - weights))
    else:
        hints.append("a smaller model or a shorter sequence (--input-shape) for tables sized by it")
    if extra is None:
        need = f"its weights alone need {_gib(needed)} ({needed} bytes)"
    else:
        need = (f"its weights ({_gib(weights)}) and {extra_what} ({_gib(extra_bytes)}) need {_gib(needed)} "
                f"({needed} bytes)")
    largest = ""
    if tensors:
        biggest = max(tensors, key=lambda t: tensor_device_bytes(t, dtype))
        largest = (f"; the largest weight is '{biggest.name}' {list(biggest.dims)} "
                   f"({_gib(tensor_device_bytes(biggest, dtype))})")
    raise UserError(
        f"{where} does not fit the {arch}: {need} of device DRAM in {dtype}, tile-padded, but the card has "
        f"{_gib(available)} ({available} bytes){largest}. Checked before reading any weight. Try: "
        + "; ".join(hints))


def check_activations_fit(module, weights: int, arch: str, name: str | None = None) -> None:
    """Raise UserError when the imported model's float inputs and outputs (activations: bf16 on the device in
    every --dtype, tile-padded) plus its weights (`weights`, from `check_model_fits`) exceed the card's DRAM.
    Runs right after the import, once `--input-shape` has fixed every dimension and before any pass plans
    (and builds tables of) tensors that could never be on the card."""
    from ttc.frontend.importer import NAME_ATTR
    from ttc.ir.types import TensorType

    func = module.function("main")
    parts = []
    for kind, types in (("input", func.type.inputs), ("output", func.type.results)):
        for index, t in enumerate(types):
            if isinstance(t, TensorType) and t.element_type.is_float:
                dims = [d if isinstance(d, int) and d > 0 else 1 for d in t.shape]
                label = (func.arg_attrs(index) if kind == "input" else func.res_attrs(index)).get(NAME_ATTR, "")
                parts.append((_tiles(dims) * BF16_TILE_BYTES, f"{kind} '{label}' {dims}"))
    needed = weights + sum(size for size, _ in parts)
    available = DEVICES[arch].dram_size
    if needed <= available or not parts:
        return
    size, largest = max(parts)
    raise UserError(
        f"{name or 'the model'} does not fit the {arch}: its inputs and outputs (bf16, tile-padded) and weights "
        f"need at least {needed} bytes of device DRAM ({_gib(needed)}), but the card has {_gib(available)} "
        f"({available} bytes); the largest is the {largest} ({_gib(size)}). Checked before planning. Try: a "
        f"smaller batch or shorter inputs (--input-shape)")
