"""The `ttc` command line.

    ttc import MODEL.onnx [-o OUT.mlir] [--input-shape NAME=1x128 ...] [--arch e150|e75]
    ttc opt FILE.mlir [--pipeline SPEC] [--print-ir-after-all] [--print-ir-after PASS] [--timing]
                      [--no-verify] [-o OUT.mlir]
    ttc compile MODEL.onnx [-o OUT.ttc] [compile options] [--dump-ir DIR]
    ttc run MODEL.ttc|MODEL.onnx [compile options] [--input NAME=FILE.npy ...] [--seed N]
                      [--emulator native|reference] [--threads N]
                      [--golden [--model M.onnx] [--per-op]] [--json FILE] [-o OUT.npz]
    ttc profile MODEL.ttc|MODEL.onnx [compile options] [--input NAME=FILE.npy ...] [--seed N] [--top N] [--static]
                      [--emulator native|reference] [--threads N] [--json FILE]

Diagnostics go to stderr, requested output to stdout or -o. Exit codes: 0 success, 1 golden check
failed, 2 user error, 3 device fault, 4 internal error (the only case that prints a traceback).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ttc.ir.diagnostics import EXIT_INTERNAL_ERROR, EXIT_OK, TtcError, UserError

ARCHES = ("e150", "e75")


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that reports usage errors as TtcErrors (exit 2, one clean message)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{self.prog}: {message}\n{self.format_usage().rstrip()}")


def _input_shapes(values: Sequence[str] | None) -> dict[str, tuple[int, ...]]:
    from ttc.frontend import parse_input_shape

    shapes: dict[str, tuple[int, ...]] = {}
    for text in values or ():
        name, shape = parse_input_shape(text)
        if name in shapes:
            raise UserError(f"--input-shape given twice for input '{name}'")
        shapes[name] = shape
    return shapes


def _add_pass_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--print-ir-after-all", action="store_true", help="print the IR after every pass (stderr)")
    parser.add_argument("--print-ir-after", action="append", metavar="PASS", default=[],
                        help="print the IR after the named pass (stderr); repeatable")
    parser.add_argument("--timing", action="store_true", help="print a per-pass wall-time table (stderr)")
    parser.add_argument("--no-verify", action="store_true", help="skip the verifier between passes")


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog="ttc", description="An ONNX compiler for the Tenstorrent Grayskull.")
    parser.add_argument("--version", action="version", version=f"ttc {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_ArgumentParser)
    commands.required = True

    imp = commands.add_parser("import", help="import an ONNX model into ttir text",
                              description="Import an ONNX model; write ttir text (and OUT.weights.npz with -o).")
    imp.add_argument("model", metavar="MODEL.onnx")
    imp.add_argument("-o", "--output", metavar="OUT.mlir", help="write the IR here and its weights beside it")
    imp.add_argument("--input-shape", action="append", metavar="NAME=1x128",
                     help="static shape for an input with dynamic dimensions; repeatable")
    imp.add_argument("--arch", choices=ARCHES, default="e150", help="target card (default e150)")
    imp.set_defaults(handler=cmd_import)

    opt = commands.add_parser("opt", help="parse, verify and transform IR text",
                              description="Parse and verify IR text, run a pass pipeline, print the result.")
    opt.add_argument("input", metavar="FILE.mlir", help="IR text ('-' for stdin); FILE.weights.npz is read if present")
    opt.add_argument("--pipeline", metavar="SPEC", default="",
                     help="passes to run, e.g. 'canonicalize,decompose{keep-gemm=false}'")
    opt.add_argument("-o", "--output", metavar="OUT.mlir", help="write the IR here and its weights beside it")
    _add_pass_options(opt)
    opt.set_defaults(handler=cmd_opt)

    comp = commands.add_parser("compile", help="compile an ONNX model to a .ttc artifact",
                               description="Compile an ONNX model for the emulated Grayskull into a .ttc artifact.")
    comp.add_argument("model", metavar="MODEL.onnx")
    comp.add_argument("-o", "--output", metavar="OUT.ttc", help="artifact path (default: MODEL.ttc beside the model)")
    _add_compile_options(comp)
    comp.set_defaults(handler=cmd_compile)

    run = commands.add_parser("run", help="run a model on the emulated device (optionally against onnxruntime)",
                              description="Run a .ttc artifact, or compile and run an .onnx model, on the "
                                          "emulated Grayskull.")
    run.add_argument("model", metavar="MODEL.ttc|MODEL.onnx")
    _add_compile_options(run)
    _add_input_options(run)
    run.add_argument("--golden", action="store_true", help="compare every output with onnxruntime")
    run.add_argument("--model", dest="golden_model", metavar="M.onnx",
                     help="the ONNX model to compare with (default: the artifact's source model)")
    run.add_argument("--pcc", type=float, default=0.99, help="golden PCC threshold (default 0.99)")
    run.add_argument("--rel-l2", type=float, default=0.05, help="golden relative L2 error threshold (default 0.05)")
    run.add_argument("--per-op", action="store_true",
                     help="with --golden: compare every device program with its last ONNX node and name the "
                          "first one below the thresholds")
    run.add_argument("--json", metavar="FILE", help="write a JSON report (outputs, timings, memory)")
    run.add_argument("-o", "--output", metavar="OUT.npz", help="write the outputs here")
    run.set_defaults(handler=cmd_run)

    prof = commands.add_parser("profile", help="the modelled device time of a model, program by program",
                               description="Run a .ttc artifact, or compile and run an .onnx model, once on the "
                                           "emulated Grayskull and print the cost model's time of every program "
                                           "(cores, bound, cycles, DRAM and NoC traffic, ONNX node) and the sums.")
    prof.add_argument("model", metavar="MODEL.ttc|MODEL.onnx")
    _add_compile_options(prof)
    _add_input_options(prof)
    prof.add_argument("--top", type=int, metavar="N", help="list only the N slowest programs")
    prof.add_argument("--json", metavar="FILE", help="write every program's figures and the sums as JSON")
    prof.add_argument("--static", action="store_true",
                      help="count the compiled kernels without running them (the same figures, no execution)")
    prof.set_defaults(handler=cmd_profile)
    return parser


def _add_input_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                        help="an input from a .npy file; missing inputs are random (--seed); repeatable")
    parser.add_argument("--seed", type=int, default=0, help="seed for random inputs (default 0)")
    parser.add_argument("--emulator", choices=("native", "reference"), default=None,
                        help="who runs the kernel programs: the compiled core (native, the default) or the "
                             "Python emulator that defines it (reference: the same bits, slower)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="host threads of the native core (default: the machine's cores; results never "
                             "depend on it)")


def _add_compile_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input-shape", action="append", metavar="NAME=1x128",
                        help="static shape for an input with dynamic dimensions; repeatable")
    parser.add_argument("--arch", choices=ARCHES, default="e150", help="target card (default e150)")
    parser.add_argument("--dtype", choices=("bf16", "bfp8_b"), default="bf16",
                        help="data format of matmul weights (activations stay bf16; default bf16)")
    parser.add_argument("--math-fidelity", choices=("lofi", "hifi2", "hifi3", "hifi4"), default="hifi4",
                        help="matmul math fidelity (default hifi4)")
    parser.add_argument("--softmax-precision", choices=("f16", "bf16"), default="bf16",
                        help="format of a softmax whose probabilities are an output and of its logits (bf16: "
                             "like every other tensor, the default; f16: Float16, three more mantissa bits, a "
                             "device fault past 65504)")
    parser.add_argument("--pipeline", metavar="SPEC", help="override the pass pipeline")
    parser.add_argument("--dump-ir", metavar="DIR", help="write NN-passname.mlir after every pass, plus weights")
    _add_pass_options(parser)


def _compile(args: argparse.Namespace):
    from ttc.compiler import CompileOptions, Diagnostics, compile_model

    options = CompileOptions(arch=args.arch, dtype=args.dtype, math_fidelity=args.math_fidelity,
                             softmax_precision=args.softmax_precision, pipeline=args.pipeline,
                             input_shapes=_input_shapes(args.input_shape))
    diagnostics = Diagnostics(print_ir_after_all=args.print_ir_after_all, print_ir_after=tuple(args.print_ir_after),
                              dump_ir=args.dump_ir, timing=args.timing, verify=not args.no_verify,
                              stream=sys.stderr)
    return compile_model(args.model, options, diagnostics)


def cmd_import(args: argparse.Namespace) -> int:
    from ttc.frontend import import_model
    from ttc.ir.verifier import verify

    module = import_model(args.model, input_shapes=_input_shapes(args.input_shape), arch=args.arch)
    verify(module)
    _emit(module, args.output)
    return EXIT_OK


def cmd_opt(args: argparse.Namespace) -> int:
    from ttc.fileio import read_weights, weights_path
    from ttc.ir.parser import parse_file, parse_module
    from ttc.ir.verifier import verify
    from ttc.passes import PassManager, parse_pipeline

    if args.input == "-":
        module = parse_module(sys.stdin.read(), "<stdin>")
    else:
        if not Path(args.input).is_file():
            raise UserError(f"{args.input}: no such file")
        module = parse_file(args.input)
        weights = weights_path(args.input)
        if weights.is_file():
            module.weights = read_weights(weights)
    passes = parse_pipeline(args.pipeline) if args.pipeline.strip() else []
    if passes:
        manager = PassManager(passes, verify=not args.no_verify, print_ir_after_all=args.print_ir_after_all,
                              print_ir_after=tuple(args.print_ir_after), timing=args.timing, stream=sys.stderr)
        manager.run(module)
    elif not args.no_verify:
        verify(module)
    _emit(module, args.output)
    return EXIT_OK


def cmd_compile(args: argparse.Namespace) -> int:
    compiled = _compile(args)
    output = Path(args.output) if args.output else Path(args.model).with_suffix(".ttc")
    compiled.save(output)
    memory = compiled.manifest["memory"]
    print(f"wrote {output}: {compiled.manifest['programs']} programs, host ops {compiled.manifest['host_ops']}, "
          f"DRAM {memory['dram_bytes'] / 2**20:.2f} MiB "
          f"({'weights resident' if memory.get('resident_weights') else 'weights written every run'}), peak L1 {memory['l1_peak_bytes'] / 1024:.1f} KiB per core, "
          f"compiled in {compiled.compile_s:.2f} s", file=sys.stderr)
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    import json

    import onnx

    from ttc import evaluate
    from ttc.fileio import atomic_output
    from ttc.golden import format_report
    from ttc.ir.diagnostics import EXIT_GOLDEN_FAILED

    if args.per_op and not args.golden:
        raise UserError("--per-op compares with onnxruntime: it needs --golden")
    compiled, is_artifact = _load_or_compile(args)
    compile_s = None if is_artifact else compiled.compile_s
    golden_path = None
    if args.golden:
        golden_path = evaluate.source_model_path(compiled, args.golden_model) if is_artifact \
            else Path(args.golden_model or args.model)
    model_proto = onnx.load(str(golden_path or args.model), load_external_data=False) \
        if (golden_path or not is_artifact) else None
    feeds = evaluate.make_inputs(compiled, evaluate.load_input_files(args.input), args.seed, model_proto)
    outputs = compiled.run(feeds, emulator=args.emulator, threads=args.threads)
    if args.output:
        with atomic_output(args.output) as handle:
            np.savez(handle, **outputs)
    report: dict = {"outputs": [], "passed": True, "host_ops": compiled.manifest["host_ops"],
                    "memory": compiled.manifest["memory"]}
    timings = {"compile_s": compile_s, "run_s": None, "ort_s": None}
    if args.golden or args.json:
        timings["run_s"] = evaluate.median_seconds(lambda: compiled.run(feeds))
    if args.golden:
        reference = evaluate.reference_outputs(golden_path, feeds, compiled.output_names)
        comparisons = evaluate.golden_compare(outputs, reference, compiled.manifest["options"]["dtype"],
                                              args.pcc, args.rel_l2)
        timings["ort_s"] = evaluate.time_reference(golden_path, feeds)
        report["outputs"] = [c.to_json() for c in comparisons]
        report["passed"] = all(c.passed for c in comparisons)
        print(format_report(comparisons))
        hints = evaluate.softmax_hints(compiled, golden_path, feeds, comparisons, args.pcc, args.rel_l2)
        for hint in hints:
            print(hint)
        if hints:
            report["notes"] = hints
        if args.per_op:
            from ttc.per_op import check_per_op, first_failure, format_per_op

            checks = check_per_op(compiled, golden_path, feeds, args.pcc, args.rel_l2)
            print(format_per_op(checks))
            failed = first_failure(checks)
            report["per_op"] = {"checks": [c.to_json() for c in checks],
                                "first_failure": failed.node if failed else None}
    else:
        for name, value in outputs.items():
            print(f"{name}: shape {list(value.shape)} {value.dtype}, min {value.min():.6g}, max {value.max():.6g}, "
                  f"mean {value.mean():.6g}")
    report["timings"] = timings
    _print_timings(timings)
    if args.json:
        from ttc.fileio import write_text

        write_text(args.json, json.dumps(report, indent=2) + "\n")
    return EXIT_OK if report["passed"] else EXIT_GOLDEN_FAILED


def _load_or_compile(args: argparse.Namespace):
    """The artifact args.model names, or the compiled ONNX model; and whether it was an artifact."""
    if args.model.endswith(".ttc"):
        from ttc.artifact import read_artifact

        return read_artifact(args.model), True
    return _compile(args), False


def cmd_profile(args: argparse.Namespace) -> int:
    import json

    import onnx

    from ttc import evaluate
    from ttc.fileio import write_text
    from ttc.ir.dialects.tt import DEVICE_ATTR_NAME, E150
    from ttc.profile import format_profile, program_json, static_profile, summarize

    if args.top is not None and args.top < 1:
        raise UserError(f"--top needs a positive number of programs, not {args.top}")
    compiled, is_artifact = _load_or_compile(args)
    if args.static:
        profile = static_profile(compiled.module, compiled.device_weights)
    else:
        model_proto = None if is_artifact else onnx.load(args.model, load_external_data=False)
        feeds = evaluate.make_inputs(compiled, evaluate.load_input_files(args.input), args.seed, model_proto)
        compiled.run(feeds, emulator=args.emulator, threads=args.threads)
        profile = compiled.profile
    device = compiled.module.attributes.get(DEVICE_ATTR_NAME) or E150
    print(format_profile(profile, device, args.top))
    if args.json:
        report = {"device": device.arch, "summary": summarize(profile, device).to_json(),
                  "programs": [program_json(i, p) for i, p in enumerate(profile)]}
        write_text(args.json, json.dumps(report, indent=2) + "\n")
    return EXIT_OK


def _print_timings(timings: dict) -> None:
    parts = [f"{k} {v:.3g}" for k, v in timings.items() if v is not None]  # 3 significant digits: ort_s may be µs
    if timings.get("run_s") and timings.get("ort_s"):
        parts.append(f"run/ort {timings['run_s'] / timings['ort_s']:.1f}x")
    if parts:
        print("timings: " + ", ".join(parts), file=sys.stderr)


def _emit(module: object, output: str | None) -> None:
    from ttc.fileio import write_module

    if output:
        write_module(output, module)  # type: ignore[arg-type]
    else:
        sys.stdout.write(str(module))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ttc")
    except PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (the console script exits with it)."""
    try:
        args = build_parser().parse_args(argv)
        return args.handler(args)
    except TtcError as exc:
        print(_error_text(exc), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception:
        traceback.print_exc()
        print("ttc: internal error: this is a bug in ttc, please report it with the command line and "
              "the model", file=sys.stderr)
        return EXIT_INTERNAL_ERROR


def _error_text(exc: TtcError) -> str:
    message = exc.message
    first = message.split("\n", 1)[0]
    # Diagnostics that already say "error:" (file:line:col: error: ...) print as they are.
    return message if "error:" in first else f"ttc: error: {message}"


if __name__ == "__main__":
    sys.exit(main())
