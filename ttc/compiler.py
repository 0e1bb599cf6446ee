"""The compile driver: ONNX model -> verified pipeline of passes -> a `CompiledModel` that runs on the
emulated device, saves as a `.ttc` artifact and reloads with `ttc.load`.

This is the one place that knows every stage: frontend, passes, backend and runtime.
"""

from __future__ import annotations

import hashlib
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import onnx

from ttc.fit import check_activations_fit, check_host_memory, check_model_fits
from ttc.ir.core import RETURN_OP, Module
from ttc.ir.diagnostics import UserError
from ttc.ir.dialects import ttmetal
from ttc.ir.dialects.tt import DEVICES
from ttc.ir.types import TensorType

ARCHES = tuple(DEVICES)
DTYPES = ("bf16", "bfp8_b")
FIDELITIES = ("lofi", "hifi2", "hifi3", "hifi4")


SOFTMAX_PRECISIONS = ("f16", "bf16")


@dataclass(frozen=True)
class PerfPreset:
    """A named set of formats and fidelities (`--perf-preset`, docs/numerics.md "Performance presets")."""

    dtype: str  # matmul weights (layout's dtype)
    activations: str  # the activations read only as matmul operands (layout's activations)
    math_fidelity: str  # matmuls
    reduce_fidelity: str  # the other programs that sum on the matrix unit (softmax, layer norm, reductions)
    # layout's matmul-fidelity: block floats for the operands whose bits `math_fidelity` drops, and for the others
    # only outside post-norm residual branches (passes/layout.py, block_float_operands)
    post_norm_guard: bool = True


# Tenstorrent's published e150 settings: bfp8_b matmul weights and the activations only matmuls read, HiFi2 matmuls;
# bf16 everywhere else and in every program's intermediates (LoFi fails the golden rule on ResNet-50 and BERT:
# docs/numerics.md); the statistics of softmax, layer norm and reductions at HiFi4. Within a post-norm residual
# block (BERT) the operands HiFi2 reads in full (weights, attention's K and V) stay bf16: there bfp8_b's noise is
# not diluted by the residual stream (BERT-Large b12 s384 failed golden with them: rel L2 0.069).
PERF_PRESETS = {"published": PerfPreset(dtype="bfp8_b", activations="bfp8_b", math_fidelity="hifi2",
                                        reduce_fidelity="hifi4")}


def default_pipeline(dtype: str = "bf16", math_fidelity: str = "hifi4", softmax_precision: str = "bf16",
                     f16_where_proven: bool = False, perf_preset: str = "") -> str:
    """The passes from imported ttir down to allocated kernel programs. bf16 everywhere by default, as on the
    hardware. `softmax_precision` f16 turns on layout's precise-softmax (a host-read softmax and its logits in
    Float16); `f16_where_proven` turns on layout's bounded-f16 (Float16 for the values whose range
    passes/ranges.py proves below Float16's largest value, bf16 elsewhere). A `perf_preset` (PERF_PRESETS)
    sets the formats and fidelities instead of `dtype` and `math_fidelity`."""
    grid = f"math-fidelity={math_fidelity}"
    layout = f"dtype={dtype}"
    if perf_preset:
        preset = PERF_PRESETS[perf_preset]
        layout = f"dtype={preset.dtype} activations={preset.activations}" \
            + (f" matmul-fidelity={preset.math_fidelity}" if preset.post_norm_guard else "")
        grid = f"math-fidelity={preset.math_fidelity} reduce-fidelity={preset.reduce_fidelity}"
    layout += (" precise-softmax=true" if softmax_precision == "f16" else "") \
        + (" bounded-f16=true" if f16_where_proven else "")
    return (f"decompose,canonicalize,channels-last,tilize,fuse,canonicalize,layout{{{layout}}},"
            f"grid{{{grid}}},lower-to-kernels,allocate")


def preset_options(perf_preset: str | None, dtype: str | None, math_fidelity: str | None,
                   what: tuple[str, str, str] = ("perf_preset", "dtype", "math_fidelity")) -> dict[str, str]:
    """CompileOptions' dtype, math_fidelity and perf_preset from what the user gave (None: not given): a preset
    sets the formats and fidelities itself, so giving either with it is a UserError (`what` names the three
    as the user spelled them)."""
    if perf_preset:
        given = [name for name, value in zip(what[1:], (dtype, math_fidelity), strict=True) if value is not None]
        if given:
            raise UserError(f"{what[0]} {perf_preset} sets the data formats and math fidelities itself; "
                            f"drop {' and '.join(given)}")
        return {"perf_preset": perf_preset}
    return {"dtype": dtype or "bf16", "math_fidelity": math_fidelity or "hifi4"}


@dataclass(frozen=True)
class CompileOptions:
    arch: str = "e150"
    dtype: str = "bf16"
    math_fidelity: str = "hifi4"
    softmax_precision: str = "bf16"
    f16_where_proven: bool = False  # layout's bounded-f16 (opt-in mixed precision)
    pipeline: str | None = None  # None: default_pipeline(dtype, math_fidelity, softmax_precision, f16_where_proven)
    perf_preset: str = ""  # a PERF_PRESETS name: its formats and fidelities (it sets dtype and math_fidelity)
    input_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    # host RAM the compile may need (bytes; None: the RAM available now); not part of the artifact
    max_host_memory: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for value, choices, what in ((self.arch, ARCHES, "arch"), (self.dtype, DTYPES, "dtype"),
                                     (self.math_fidelity, FIDELITIES, "math fidelity"),
                                     (self.softmax_precision, SOFTMAX_PRECISIONS, "softmax precision")):
            if value not in choices:
                raise UserError(f"unknown {what} '{value}' (choose from {', '.join(choices)})")
        if self.perf_preset:
            preset = PERF_PRESETS.get(self.perf_preset)
            if preset is None:
                raise UserError(f"unknown perf preset '{self.perf_preset}' (choose from {', '.join(PERF_PRESETS)})")
            # the weights' format and the matmuls' fidelity are the preset's (the fit check and the manifest)
            object.__setattr__(self, "dtype", preset.dtype)
            object.__setattr__(self, "math_fidelity", preset.math_fidelity)

    @property
    def pipeline_spec(self) -> str:
        return self.pipeline or default_pipeline(self.dtype, self.math_fidelity, self.softmax_precision,
                                                 self.f16_where_proven, self.perf_preset)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("max_host_memory", None)
        if not data["perf_preset"]:
            data.pop("perf_preset")  # an artifact compiled without a preset records what it always did
        data["input_shapes"] = {k: list(v) for k, v in sorted(self.input_shapes.items())}
        data["pipeline"] = self.pipeline_spec
        return data


@dataclass(frozen=True)
class Diagnostics:
    """What the user asked to see while compiling (all of it goes to `stream`)."""

    print_ir_after_all: bool = False
    print_ir_after: Sequence[str] = ()
    dump_ir: str | None = None
    timing: bool = False
    verify: bool = True
    stream: TextIO | None = None
    progress: bool = False  # a bar (one step per pass) on a terminal stream once compiling takes over 1 s
    print_locations: bool = False  # loc(...) in the IR printed to `stream` (--dump-ir files always have them)


def compile_model(model: str | Path | onnx.ModelProto, options: CompileOptions | None = None,
                  diagnostics: Diagnostics | None = None) -> CompiledModel:
    """Import, run the pipeline and package the result. Raises UserError for bad input."""
    from ttc.frontend.importer import import_read_model
    from ttc.frontend.loader import read_model
    from ttc.passes import PassManager, parse_pipeline
    from ttc.progress import progress

    options = options or CompileOptions()
    diagnostics = diagnostics or Diagnostics()
    start = time.perf_counter()
    source = _source_info(model)
    passes = parse_pipeline(options.pipeline_spec)
    stream = diagnostics.stream or sys.stderr
    # Steps: the import, every pass, packing the weights.
    with progress(len(passes) + 2, "import", "step", enabled=diagnostics.progress, stream=stream) as bar:
        proto, path = read_model(model)  # parsed once (without external data) for the fit check and the import
        source.update(_model_provenance(proto))
        weights = check_model_fits(proto, options.arch, options.dtype, name=path, host_limit=options.max_host_memory)
        check_host_memory(proto, options.max_host_memory, name=path)
        module = import_read_model(proto, path, input_shapes=dict(options.input_shapes), arch=options.arch)
        check_activations_fit(module, weights, options.arch, name=path)
        bar.advance(label=f"pass {passes[0].name}" if passes else "pack weights")
        dumper = _IRDumper(diagnostics.dump_ir, module) if diagnostics.dump_ir else None

        def after_pass(index: int, p: Any, module: Module) -> None:
            if dumper is not None:
                dumper.dump(index, p, module)
            bar.advance(label=f"pass {passes[index].name}" if index < len(passes) else "pack weights")

        manager = PassManager(passes, verify=diagnostics.verify, print_ir_after_all=diagnostics.print_ir_after_all,
                              print_ir_after=tuple(diagnostics.print_ir_after), timing=diagnostics.timing,
                              stream=stream, after_pass=after_pass, print_locations=diagnostics.print_locations)
        manager.run(module)
        _check_lowered(module)
        device_weights = pack_device_weights(module)
        bar.advance()
    compile_s = time.perf_counter() - start
    manifest = build_manifest(module, options, source)
    return CompiledModel(module, device_weights, manifest, compile_s=compile_s)


_DUMP_NAME = re.compile(r"\d{2,}-[a-z0-9-]+\.mlir")


def _model_provenance(proto: onnx.ModelProto) -> dict[str, Any]:
    """Who made the source model, and with which ONNX IR version and opsets."""
    producer = " ".join(part for part in (proto.producer_name, proto.producer_version) if part)
    return {"producer": producer, "ir_version": int(proto.ir_version),
            "opsets": {entry.domain or "ai.onnx": int(entry.version) for entry in proto.opset_import}}


class _IRDumper:
    """`--dump-ir DIR`: NN-passname.mlir after each pass, plus the weights (.npz) once."""

    def __init__(self, folder: str, module: Module) -> None:
        from ttc.fileio import write_text

        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            # An earlier dump of a longer pipeline must not leave its later passes behind to be mistaken for ours.
            for old in self.folder.iterdir():
                if _DUMP_NAME.fullmatch(old.name) or old.name == "weights.npz":
                    old.unlink()
        except OSError as exc:
            raise UserError(f"--dump-ir {folder}: {exc.strerror or exc}") from None
        write_text(self.folder / "00-import.mlir", str(module))

    def dump(self, index: int, p: Any, module: Module) -> None:
        from ttc.fileio import write_text, write_weights

        write_text(self.folder / f"{index:02d}-{p.name}.mlir", str(module))
        write_weights(self.folder / "weights.npz", module.weights)


def _check_lowered(module: Module) -> None:
    """The pipeline must end in an allocated host schedule; anything else cannot run."""
    main = module.function("main")
    leftovers = sorted({op.name for op in main.body.ops if not op.name.startswith(("ttmetal.", "func."))})
    if leftovers:
        raise UserError("the pipeline did not lower these ops to device programs: " + ", ".join(leftovers)
                        + " (does --pipeline end with lower-to-kernels,allocate?)")


def pack_device_weights(module: Module) -> dict[str, np.ndarray]:
    """Every weight a `ttmetal.write_constant` uses, packed into device pages of its buffer's format."""
    from ttc.ir.dialects.tt import LayoutAttr
    from ttc.runtime.layout import tensor_to_pages

    packed: dict[str, np.ndarray] = {}
    for op in module.walk():
        if op.name != ttmetal.WRITE_CONSTANT.name:
            continue
        name = op.attributes["value"].name
        buffer_type = op.operands[0].type
        assert isinstance(buffer_type, TensorType) and isinstance(buffer_type.encoding, LayoutAttr)
        data = module.weights[name]
        packed[name] = tensor_to_pages(np.asarray(data).reshape(buffer_type.shape), buffer_type.element_type,
                                       str(buffer_type.encoding.tensor_layout))
    return packed


def _source_info(model: str | Path | onnx.ModelProto) -> dict[str, Any]:
    from ttc.fileio import check_onnx_path

    if isinstance(model, onnx.ModelProto):
        return {"path": None, "sha256": hashlib.sha256(model.SerializeToString()).hexdigest()}
    path = Path(model)
    if path.is_dir():
        raise UserError(f"{path}: is a directory, not an ONNX model file")
    if not path.is_file():
        raise UserError(f"{path}: no such model file")
    check_onnx_path(path)
    return {"path": str(path.resolve()), "sha256": file_sha256(path), "size": path.stat().st_size}


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _tensor_entries(func_types: Sequence[Any], attrs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    entries = []
    for t, a in zip(func_types, attrs, strict=True):
        assert isinstance(t, TensorType)
        entries.append({"name": a.get("ttir.name", ""), "shape": list(t.shape),
                        "dtype": str(t.element_type.numpy_dtype())})
    return entries


def build_manifest(module: Module, options: CompileOptions, source: dict[str, Any]) -> dict[str, Any]:
    from ttc import __version__

    main = module.function("main")
    ftype = main.type
    inputs = _tensor_entries(ftype.inputs, [main.arg_attrs(i) for i in range(len(ftype.inputs))])
    outputs = _tensor_entries(ftype.results, [main.res_attrs(i) for i in range(len(ftype.results))])
    return {
        "format": "ttc-artifact",
        "format_version": 2,  # ttc.artifact.FORMAT_VERSION: a sha256 and size for every member
        "ttc_version": __version__,
        "arch": options.arch,
        "options": options.to_json(),
        "inputs": inputs,
        "outputs": outputs,
        "source_model": source,
        "host_ops": count_host_ops(module),
        "memory": memory_summary(module),
        "programs": sum(1 for op in module.walk() if op.name == ttmetal.ENQUEUE_PROGRAM.name),
    }


_DEVICE_SCHEDULE_OPS = frozenset({
    ttmetal.CREATE_BUFFER.name, ttmetal.WRITE_BUFFER.name, ttmetal.WRITE_CONSTANT.name, ttmetal.ENQUEUE_PROGRAM.name,
    ttmetal.READ_BUFFER.name, ttmetal.DEALLOCATE.name, RETURN_OP,
    ttmetal.EMPTY_TENSOR.name,  # computes nothing: a tensor without elements is known by its type
})


def count_host_ops(module: Module) -> int:
    """Ops that compute on the host between the inputs' write_buffer and the outputs' read_buffer: every op of
    the host schedule that is not moving data to, from or within the device (or making an empty tensor)."""
    return sum(1 for op in module.function("main").body.ops if op.name not in _DEVICE_SCHEDULE_OPS)


def memory_summary(module: Module) -> dict[str, int]:
    return {"dram_bytes": int(module.attributes.get("tt.dram_peak_bytes", 0)),
            "l1_peak_bytes": int(module.attributes.get("tt.l1_peak_bytes", 0)),
            "resident_weights": bool(module.attributes.get("tt.resident_weights", False))}


class CompiledModel:
    """A model compiled for the emulated Grayskull: `.run(feeds)`, `.save(path)`."""

    def __init__(self, module: Module, device_weights: dict[str, np.ndarray], manifest: dict[str, Any],
                 compile_s: float = 0.0) -> None:
        self.module = module
        self.device_weights = device_weights
        self.manifest = manifest
        self.compile_s = compile_s
        self._executor: Any = None

    def __repr__(self) -> str:
        def entries(kind: str) -> str:
            return ", ".join(f"{e['name']}: {'x'.join(map(str, e['shape'])) or 'scalar'} {e['dtype']}"
                             for e in self.manifest[kind])

        options = self.manifest.get("options", {})
        memory = self.manifest.get("memory", {})
        source = (self.manifest.get("source_model") or {}).get("path")
        return (f"<ttc.CompiledModel for {self.manifest.get('arch', '?')} ({options.get('dtype', '?')}, "
                f"{options.get('math_fidelity', '?')}): ({entries('inputs')}) -> ({entries('outputs')}); "
                f"{self.manifest.get('programs', '?')} programs, {self.manifest.get('host_ops', '?')} host ops, "
                f"DRAM {memory.get('dram_bytes', 0) / 2**20:.2f} MiB, peak L1 {memory.get('l1_peak_bytes', 0) / 1024:.1f} "
                f"KiB per core; from {Path(source).name if source else 'an in-memory model'}>")

    @property
    def input_names(self) -> list[str]:
        return [entry["name"] for entry in self.manifest["inputs"]]

    @property
    def output_names(self) -> list[str]:
        return [entry["name"] for entry in self.manifest["outputs"]]

    def run(self, feeds: Mapping[str, np.ndarray], emulator: str | None = None,
            threads: int | None = None, progress: bool = False,
            scalars: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
        """Run on the emulated device; outputs come back as float32 or their original integer dtype.

        `emulator` is "native" (the compiled execution core, the default) or "reference" (the Python emulator,
        the executable definition: the same bits, slower); `threads` the host threads of the native core
        (default: the machine's cores). The device (and the weights resident in its DRAM) persists across runs.
        `progress` draws a bar on stderr (one step per device program) when it is a terminal and the run takes
        over a second. The feeds are checked as onnxruntime checks them (names, ranks, shapes, element types:
        never cast). `scalars` gives the runtime scalars of a model compiled with device states (the `kv-cache`
        pass: the position its cache entries are written at).
        """
        from ttc.feeds import check_feeds, manifest_specs
        from ttc.progress import progress as progress_bar

        specs = self.__dict__.get("_input_specs")
        if specs is None:
            specs = self._input_specs = manifest_specs(self.manifest["inputs"])
        feeds = check_feeds(specs, feeds)

        executor = self.executor(emulator, threads)
        if progress:
            with progress_bar(int(self.manifest.get("programs", 0)), "run", "program", enabled=progress) as bar:
                outputs = executor.run(dict(feeds), on_program=bar.advance, scalars=scalars)
        else:
            outputs = executor.run(feeds, scalars=scalars)
        result = {}
        for entry in self.manifest["outputs"]:
            value = np.asarray(outputs[entry["name"]])
            dtype = np.dtype(entry["dtype"])
            result[entry["name"]] = value.astype(np.float32 if dtype.kind == "f" else dtype, copy=False)
        return result

    def executor(self, emulator: str | None = None, threads: int | None = None, *, share_with: Any = None) -> Any:
        """The executor of the emulated device this model runs on (made on first use; `emulator` and `threads` as
        in `run`). With `share_with` (another CompiledModel, on first use only), this model runs on that model's
        device, its DRAM above the other's, and device states of the same name are one buffer for both."""
        from ttc.runtime.executor import Executor

        if self._executor is None:
            device, base = None, 0
            if share_with is not None:
                other = share_with.executor(emulator, threads)
                device = other.device
                base = other.dram_base + dram_bank_peak(share_with.module, device.dram.banks, device.dram.alignment)
            self._executor = Executor(self.module, self.device_weights, emulator=emulator, threads=threads,
                                      device=device, dram_base=base)
        elif share_with is not None and self._executor.device is not share_with.executor().device:
            raise UserError("this model already runs on a device of its own")
        else:
            self._executor.configure(emulator, threads)
        return self._executor

    def write_state(self, name: str, array: np.ndarray) -> int:
        """Fill the device state `name` (a `kv-cache` cache, kept in device DRAM across runs) from the host;
        returns the bytes written."""
        return self.executor().write_state(name, array)

    def read_state(self, name: str) -> np.ndarray:
        """The device state `name` read back to the host."""
        return self.executor().read_state(name)

    @property
    def profile(self) -> list[Any]:
        return list(self._executor.profile) if self._executor is not None else []

    @property
    def emulator(self) -> tuple[str, int]:
        """The emulator of the last run and the native core's host threads."""
        if self._executor is None:
            from ttc.runtime.executor import DEFAULT_EMULATOR, default_threads

            return DEFAULT_EMULATOR, default_threads()
        return self._executor.emulator, self._executor.threads

    def save(self, path: str | Path) -> None:
        from ttc.artifact import write_artifact

        write_artifact(path, self)


def dram_bank_peak(module: Module, banks: int, alignment: int) -> int:
    """The bytes of every DRAM bank a module's allocation reaches (its high-water mark per bank, aligned)."""
    peak = -(-int(module.attributes.get("tt.dram_peak_bytes", 0)) // banks)
    return -(-peak // alignment) * alignment


_CLI_INPUT_SHAPE = re.compile(r"--input-shape (?P<name>[^\s=]+)=(?P<dims>[^\s:;,()]+)")


def api_spelling(message: str) -> str:
    """A message as a Python caller should read it: `input_shapes={'x': (1, 128)}` where the command line's
    `--input-shape x=1x128` would be named (the frontend words its messages for the CLI)."""

    def shapes(match: re.Match[str]) -> str:
        dims = match["dims"]
        parts = ["..."] if dims == "DIMS" else dims.split("x")
        return f"input_shapes={{{match['name']!r}: ({', '.join(parts)}{',' if len(parts) == 1 else ''})}}"

    message = _CLI_INPUT_SHAPE.sub(shapes, message)
    return message.replace("--input-shape names", "input_shapes= names").replace("--input-shape", "input_shapes=")


def compile_for_api(model: str | Path | onnx.ModelProto, options: CompileOptions) -> CompiledModel:
    """`compile_model` for the Python API: its user errors name `input_shapes=`, not a CLI flag."""
    try:
        return compile_model(model, options)
    except UserError as exc:
        exc.message = api_spelling(exc.message)
        exc.args = (exc.message,)
        raise
