"""The `ttc` command line.

    ttc import MODEL.onnx [-o OUT.mlir] [--input-shape NAME=1x128 ...] [--arch e150|e75]
    ttc opt FILE.mlir [--pipeline SPEC] [--print-ir-after-all] [--print-ir-after PASS] [--timing]
                      [--no-verify] [-o OUT.mlir]
    ttc opt --list-passes
    ttc compile MODEL.onnx [-o OUT.ttc] [compile options] [--dump-ir DIR] [--quiet]
    ttc run MODEL.ttc|MODEL.onnx [compile options] [--input NAME=FILE.npy | FILE.npz ...] [--seed N]
                      [--emulator native|reference] [--threads N] [--repeat N]
                      [--golden [--model M.onnx] [--per-op]] [--json FILE] [-o OUT.npz] [--quiet]
    ttc profile MODEL.ttc|MODEL.onnx [compile options] [--input ...] [--seed N] [--top N] [--static]
                      [--emulator native|reference] [--threads N] [--json FILE] [--trace FILE.json]
                      [--csv FILE.csv] [--quiet]
    ttc report MODEL.ttc|MODEL.onnx -o REPORT.html [compile options] [--golden [--model M.onnx]]
                      [--node-data OUT.json] [--top N]
    ttc inspect MODEL.ttc [--json]
    ttc completion bash|zsh

Diagnostics go to stderr, requested output to stdout or -o. Exit codes: 0 success, 1 golden check
failed, 2 user error, 3 device fault, 4 internal error (the only case that prints a traceback).
"""

from __future__ import annotations

import argparse
import difflib
import re
import shlex
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ttc import __version__
from ttc.ir.diagnostics import EXIT_INTERNAL_ERROR, EXIT_OK, TtcError, UserError

if TYPE_CHECKING:
    import numpy as np

ARCHES = ("e150", "e75")
PERF_PRESETS = ("published",)  # ttc.compiler.PERF_PRESETS' names (not imported here: the CLI starts light)


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that reports usage errors as TtcErrors (exit 2, one clean message naming the command, with a
    "did you mean" for a misspelt flag, command or choice)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{self.prog}: error: {_suggest(self, message)}\n{self.format_usage().rstrip()}")

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        """Unknown arguments are reported by the command they were given to, with its flags to suggest."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command = _subparser(self, getattr(parsed, "command", None)) or self
            command.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed


def _subparser(parser: argparse.ArgumentParser, name: str | None) -> argparse.ArgumentParser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            return action.choices[name]
    return None


_INVALID_CHOICE = re.compile(r"invalid choice: '(?P<given>[^']*)' \(choose from (?P<choices>.*)\)")


def _suggest(parser: argparse.ArgumentParser, message: str) -> str:
    """`message` with "did you mean ...?" for an unknown flag or a misspelt choice, when one is close."""
    if message.startswith("unrecognized arguments: "):
        flags = [option for action in parser._actions for option in action.option_strings]
        pairs = []  # (unknown flag, the known flag closest to it)
        for token in message.removeprefix("unrecognized arguments: ").split():
            flag = token.split("=", 1)[0]
            close = difflib.get_close_matches(flag, flags, n=1, cutoff=0.6) if flag.startswith("-") else []
            if close:
                pairs.append((flag, close[0]))
        if len(pairs) == 1:
            return f"{message}; did you mean {pairs[0][1]}?"
        if pairs:
            return f"{message}; did you mean " + ", ".join(f"{known} for {flag}" for flag, known in pairs) + "?"
        return message
    match = _INVALID_CHOICE.search(message)
    if match:
        choices = re.findall(r"'([^']*)'", match["choices"])
        close = difflib.get_close_matches(match["given"], choices, n=1, cutoff=0.5)
        if close:
            return f"{message}; did you mean '{close[0]}'?"
    return message


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
    _add_print_locations(parser)


def _add_print_locations(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--print-locations", action="store_true",
                        help="print each op's loc(...) (its ONNX nodes) in IR printed to the terminal, as MLIR's "
                             "--mlir-print-debuginfo; files written with -o or --dump-ir always keep them")


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog="ttc", description="An ONNX compiler for the Tenstorrent Grayskull.")
    parser.add_argument("--version", action="version", version=f"ttc {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_ArgumentParser)
    commands.required = True

    imp = commands.add_parser("import", help="import an ONNX model into ttir text",
                              description="Import an ONNX model; write ttir text (and OUT.weights.npz with -o).")
    imp.add_argument("model", metavar="MODEL.onnx")
    imp.add_argument("-o", "--output", metavar="OUT.mlir", help="write the IR here and its weights beside it")
    imp.add_argument("--input-shape", action="append", metavar="NAME=1x128",
                     help="static shape for an input with dynamic dimensions; repeatable")
    imp.add_argument("--arch", choices=ARCHES, default="e150", help="target card (default e150)")
    _add_print_locations(imp)
    imp.set_defaults(handler=cmd_import)

    opt = commands.add_parser("opt", help="parse, verify and transform IR text",
                              description="Parse and verify IR text, run a pass pipeline, print the result.")
    opt.add_argument("input", metavar="FILE.mlir", nargs="?",
                     help="IR text ('-' for stdin); FILE.weights.npz is read if present")
    opt.add_argument("--list-passes", action="store_true", help="list every pass, its options and what it does")
    opt.add_argument("--pipeline", metavar="SPEC", default="",
                     help="passes to run, e.g. 'canonicalize,decompose{keep-gemm=false}'")
    opt.add_argument("-o", "--output", metavar="OUT.mlir", help="write the IR here and its weights beside it")
    opt.add_argument("--print-program", type=int, metavar="N",
                     help="print only device program N (the index `ttc profile` and `ttc report` show) of the "
                          "result, with its attributes and reader/compute/writer kernels")
    _add_pass_options(opt)
    _add_quiet(opt)
    opt.set_defaults(handler=cmd_opt)

    comp = commands.add_parser("compile", help="compile an ONNX model to a .ttc artifact",
                               description="Compile an ONNX model for the emulated Grayskull into a .ttc artifact.")
    comp.add_argument("model", metavar="MODEL.onnx")
    comp.add_argument("-o", "--output", metavar="OUT.ttc", help="artifact path (default: MODEL.ttc beside the model)")
    _add_compile_options(comp)
    _add_quiet(comp)
    comp.set_defaults(handler=cmd_compile)

    run = commands.add_parser("run", help="run a model on the emulated device (optionally against onnxruntime)",
                              description="Run a .ttc artifact, or compile and run an .onnx model, on the "
                                          "emulated Grayskull.")
    run.add_argument("model", metavar="MODEL.ttc|MODEL.onnx")
    _add_compile_options(run)
    _add_input_options(run)
    run.add_argument("--golden", action="store_true",
                     help="run the source model once in onnxruntime on the same inputs and compare every output")
    run.add_argument("--repeat", type=int, metavar="N",
                     help="time N more runs (emulator, and onnxruntime with --golden) and report their medians "
                          "beside the first run's time")
    run.add_argument("--model", dest="golden_model", metavar="M.onnx",
                     help="the ONNX model to compare with (default: the artifact's source model)")
    run.add_argument("--pcc", type=float, default=0.99, help="golden PCC threshold (default 0.99)")
    run.add_argument("--rel-l2", type=float, default=0.05, help="golden relative L2 error threshold (default 0.05)")
    run.add_argument("--per-op", action="store_true",
                     help="with --golden: compare every device program with its last ONNX node and name the "
                          "first one below the thresholds")
    run.add_argument("--json", metavar="FILE",
                     help="write a JSON report (outputs, timings, memory, and the version, options, seed and "
                          "command line that produced it)")
    run.add_argument("-o", "--output", metavar="OUT.npz", help="write the outputs here")
    _add_quiet(run)
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
    prof.add_argument("--trace", metavar="FILE.json",
                      help="write Chrome/Perfetto trace events: one track per core, programs as slices with their "
                           "counts as args (open in ui.perfetto.dev or chrome://tracing)")
    prof.add_argument("--csv", metavar="FILE.csv", help="write one CSV row per program")
    _add_quiet(prof)
    prof.add_argument("--static", action="store_true",
                      help="count the compiled kernels without running them (the same figures, no execution)")
    prof.set_defaults(handler=cmd_profile)

    rep = commands.add_parser("report", help="a self-contained HTML report: programs, core grid, memory, accuracy",
                              description="Write one HTML file (no network, no server) about a compiled model: the "
                                          "per-program table, the core grid of the selected program, L1 and DRAM "
                                          "over program order, the slowest programs, time by kind and bound, the "
                                          "options and versions; with --golden, per-op PCC against onnxruntime.")
    rep.add_argument("model", metavar="MODEL.ttc|MODEL.onnx")
    rep.add_argument("-o", "--output", metavar="REPORT.html", help="the HTML file to write")
    _add_compile_options(rep)
    _add_input_options(rep)
    rep.add_argument("--golden", action="store_true",
                     help="run the per-op golden check (ttc run --golden --per-op) and show every program's PCC "
                          "and relative L2 error, the first failing node highlighted")
    rep.add_argument("--model", dest="golden_model", metavar="M.onnx",
                     help="the ONNX model to compare with and to key --node-data by (default: the source model)")
    rep.add_argument("--pcc", type=float, default=0.99, help="per-op PCC threshold (default 0.99)")
    rep.add_argument("--rel-l2", type=float, default=0.05, help="per-op relative L2 threshold (default 0.05)")
    rep.add_argument("--node-data", metavar="OUT.json",
                     help="write Model Explorer node data keyed by ONNX node name: modelled time per node to "
                          "OUT.json and, with --golden, per-op PCC to OUT.pcc.json (docs/report.md)")
    rep.add_argument("--top", type=int, default=10, metavar="N", help="slowest programs to list (default 10)")
    _add_quiet(rep)
    rep.set_defaults(handler=cmd_report)

    gen = commands.add_parser("generate", help="generate text with a causal LM (GPT-2 class) on the emulated device",
                              description="Generate tokens after a prompt with a causal language model: prefill, "
                                          "then one decode step per token, each a run of programs compiled once. "
                                          "A model with per-layer past key/value inputs runs in cached mode; one "
                                          "without runs in uncached mode (the whole padded sequence every step).")
    gen.add_argument("model", metavar="MODEL.onnx")
    prompt = gen.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt-ids", metavar="IDS", help="the prompt as token ids, e.g. 464,2068,7586")
    prompt.add_argument("--prompt", metavar="TEXT", help="the prompt as text (needs --tokenizer)")
    gen.add_argument("--tokenizer", metavar="FILE.json",
                     help="a local tokenizer.json (the `tokenizers` package): text in and out")
    gen.add_argument("--max-new-tokens", type=int, default=32, metavar="N", help="tokens to generate (default 32)")
    gen.add_argument("--max-length", type=int, metavar="N",
                     help="the longest sequence (prompt + new tokens) the programs are compiled for (default: "
                          "the model's fixed length, else prompt + --max-new-tokens)")
    gen.add_argument("--temperature", type=float, default=0.0,
                     help="sampling temperature (default 0: greedy)")
    gen.add_argument("--top-k", type=int, default=0, metavar="K", help="sample from the K likeliest tokens (0: all)")
    gen.add_argument("--top-p", type=float, default=1.0, metavar="P",
                     help="sample from the smallest set of tokens whose probability reaches P (default 1: all)")
    gen.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    gen.add_argument("--eos-id", type=int, metavar="ID", help="stop after this token id")
    gen.add_argument("--kv-names", action="append", default=[], metavar="PAST=PRESENT[,...]",
                     help="pair cache inputs with their outputs by name (default: past_key_values.N.key with "
                          "present.N.key and the like); repeatable")
    gen.add_argument("--batch", type=int, default=1, help="sequences generated at once, each from the prompt "
                     "(default 1; also what the fit check sizes the KV cache for)")
    gen.add_argument("--arch", choices=ARCHES, default="e150", help="target card (default e150)")
    gen.add_argument("--dtype", choices=("bf16", "bfp8_b"), default="bf16",
                     help="data format of matmul weights (activations stay bf16; default bf16)")
    gen.add_argument("--math-fidelity", choices=("lofi", "hifi2", "hifi3", "hifi4"), default="hifi4",
                     help="matmul math fidelity (default hifi4)")
    gen.add_argument("--emulator", choices=("native", "reference"), default=None,
                     help="who runs the kernel programs (default native)")
    gen.add_argument("--threads", type=int, metavar="N", help="host threads of the native core")
    gen.add_argument("--json", metavar="FILE", help="write the tokens, steps and rates as JSON")
    _add_quiet(gen)
    gen.set_defaults(handler=cmd_generate)

    insp = commands.add_parser("inspect", help="what a .ttc artifact holds, without running it",
                               description="Print a .ttc artifact's manifest: inputs, outputs, target and options, "
                                           "versions, the source model, memory, and every device program (kind, "
                                           "cores, circular buffers, ONNX nodes).")
    insp.add_argument("model", metavar="MODEL.ttc")
    insp.add_argument("--json", action="store_true", help="print it as JSON")
    insp.set_defaults(handler=cmd_inspect)

    comp_script = commands.add_parser("completion", help="print a shell completion script (bash or zsh)",
                                      description="Print a completion script for ttc; load it with "
                                                  "eval \"$(ttc completion bash)\" in ~/.bashrc, or "
                                                  "eval \"$(ttc completion zsh)\" in ~/.zshrc.")
    comp_script.add_argument("shell", choices=("bash", "zsh"))
    comp_script.set_defaults(handler=cmd_completion)
    return parser


def _add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bars and no summary or timing lines on stderr (errors still print)")


def _add_input_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy|FILE.npz",
                        help="an input from a .npy file, every input of a .npz archive by name, or NAME=FILE.npz "
                             "for one array of it; each must match the input's shape and element type (nothing "
                             "is cast); missing inputs are random (--seed); repeatable")
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
    parser.add_argument("--dtype", choices=("bf16", "bfp8_b"), default=None,
                        help="data format of matmul weights (activations stay bf16; default bf16)")
    parser.add_argument("--math-fidelity", choices=("lofi", "hifi2", "hifi3", "hifi4"), default=None,
                        help="matmul math fidelity (default hifi4)")
    parser.add_argument("--perf-preset", choices=tuple(PERF_PRESETS), default=None,
                        help="published: Tenstorrent's published settings, bfp8_b matmul weights and activations "
                             "(bf16 elsewhere, and for the operands HiFi2 reads in full within post-norm residual "
                             "blocks), HiFi2 matmuls, HiFi4 softmax and norm statistics (sets --dtype and "
                             "--math-fidelity; default: none, bf16 and hifi4)")
    parser.add_argument("--softmax-precision", choices=("f16", "bf16"), default="bf16",
                        help="format of a softmax whose probabilities are an output and of its logits (bf16: "
                             "like every other tensor, the default; f16: Float16, three more mantissa bits, a "
                             "device fault past 65504)")
    parser.add_argument("--f16-where-proven", action="store_true",
                        help="hold in Float16 (three more mantissa bits than bf16) every value whose range the "
                             "compiler proves below Float16's largest; bf16 elsewhere (default: bf16 everywhere, as "
                             "on the hardware)")
    parser.add_argument("--max-host-memory", metavar="SIZE",
                        help="host RAM the compile may use, e.g. 16G (default: the RAM available now); a model "
                             "needing more is refused before its weights are read")
    parser.add_argument("--pipeline", metavar="SPEC", help="override the pass pipeline")
    parser.add_argument("--dump-ir", metavar="DIR", help="write NN-passname.mlir after every pass, plus weights")
    _add_pass_options(parser)


def _compile(args: argparse.Namespace):
    from ttc.compiler import CompileOptions, Diagnostics, compile_model, preset_options

    options = CompileOptions(arch=args.arch, **preset_options(args.perf_preset, args.dtype, args.math_fidelity,
                                                              ("--perf-preset", "--dtype", "--math-fidelity")),
                             softmax_precision=args.softmax_precision, pipeline=args.pipeline,
                             f16_where_proven=args.f16_where_proven,
                             input_shapes=_input_shapes(args.input_shape),
                             max_host_memory=_host_memory(args.max_host_memory))
    diagnostics = Diagnostics(print_ir_after_all=args.print_ir_after_all, print_ir_after=tuple(args.print_ir_after),
                              dump_ir=args.dump_ir, timing=args.timing, verify=not args.no_verify,
                              stream=sys.stderr, progress=not args.quiet, print_locations=args.print_locations)
    return compile_model(args.model, options, diagnostics)


def _host_memory(text: str | None) -> int | None:
    if text is None:
        return None
    from ttc.fit import parse_size

    return parse_size(text)


def cmd_import(args: argparse.Namespace) -> int:
    from ttc.fileio import check_onnx_path
    from ttc.frontend import import_model
    from ttc.ir.verifier import verify

    check_onnx_path(args.model)
    module = import_model(args.model, input_shapes=_input_shapes(args.input_shape), arch=args.arch)
    verify(module)
    _emit(module, args.output, args.print_locations)
    return EXIT_OK


def cmd_opt(args: argparse.Namespace) -> int:
    from ttc.fileio import read_weights, weights_path
    from ttc.ir.parser import parse_file, parse_module
    from ttc.ir.verifier import verify
    from ttc.passes import PassManager, parse_pipeline

    if args.list_passes:
        print(_pass_list())
        return EXIT_OK
    if args.input is None:
        raise UserError("ttc opt: error: the following arguments are required: FILE.mlir (or --list-passes)")
    if args.print_program is not None and args.output:
        raise UserError("ttc opt: error: --print-program prints to the terminal; it does not combine with -o")
    if args.input == "-":
        module = parse_module(sys.stdin.read(), "<stdin>")
    else:
        if not Path(args.input).is_file():
            raise UserError(f"{args.input}: no such file")
        _check_ir_path(args.input)
        module = parse_file(args.input)
        weights = weights_path(args.input)
        if weights.is_file():
            module.weights = read_weights(weights)
    passes = parse_pipeline(args.pipeline) if args.pipeline.strip() else []
    if passes:
        from ttc.progress import progress

        with progress(len(passes), f"pass {passes[0].name}", "pass", enabled=not args.quiet) as bar:
            def after_pass(index: int, p: object, module: object) -> None:
                bar.advance(label=f"pass {passes[index].name}" if index < len(passes) else "done")

            manager = PassManager(passes, verify=not args.no_verify, print_ir_after_all=args.print_ir_after_all,
                                  print_ir_after=tuple(args.print_ir_after), timing=args.timing, stream=sys.stderr,
                                  after_pass=after_pass, print_locations=args.print_locations)
            manager.run(module)
    elif not args.no_verify:
        verify(module)
    if args.print_program is not None:
        sys.stdout.write(_program_text(module, args.print_program, args.print_locations))
        return EXIT_OK
    _emit(module, args.output, args.print_locations)
    return EXIT_OK


def _program_text(module, index: int, locations: bool) -> str:
    from ttc.ir.printer import print_program, program_count

    if not any(f.name == "main" for f in module.functions):
        raise UserError("--print-program: the module has no @main function")
    count = program_count(module)
    if count == 0:
        raise UserError("--print-program: the module has no device programs yet (they appear after the "
                        "lower-to-kernels pass; add --pipeline ...,lower-to-kernels,allocate or give a compiled dump)")
    if not 0 <= index < count:
        raise UserError(f"--print-program {index}: the module has {count} programs, numbered 0 to {count - 1}")
    return print_program(module, index, locations)


def cmd_compile(args: argparse.Namespace) -> int:
    compiled = _compile(args)
    output = Path(args.output) if args.output else Path(args.model).with_suffix(".ttc")
    compiled.save(output)
    if args.quiet:
        return EXIT_OK
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
    from ttc.golden import format_report, run_onnxruntime_timed
    from ttc.ir.diagnostics import EXIT_GOLDEN_FAILED

    if args.per_op and not args.golden:
        raise UserError("--per-op compares with onnxruntime: it needs --golden")
    if args.repeat is not None and args.repeat < 1:
        raise UserError(f"--repeat needs at least 1 run, not {args.repeat}")
    compiled, is_artifact = _load_or_compile(args)
    compile_s = None if is_artifact else compiled.compile_s
    golden_path = None
    if args.golden:
        golden_path = evaluate.source_model_path(compiled, args.golden_model) if is_artifact \
            else Path(args.golden_model or args.model)
    model_proto = onnx.load(str(golden_path or args.model), load_external_data=False) \
        if (golden_path or not is_artifact) else None
    given, sources = _input_files(args.input)
    feeds = evaluate.make_inputs(compiled, given, args.seed, model_proto, sources)
    outputs, emulator_timing = _timed_runs(compiled, feeds, args)
    if args.output:
        with atomic_output(args.output) as handle:
            import numpy as np

            np.savez(handle, **outputs)
    report: dict = {"outputs": [], "passed": True, "host_ops": compiled.manifest["host_ops"],
                    "memory": compiled.manifest["memory"]}
    ort_timing = None
    if args.golden:
        assert golden_path is not None
        reference = run_onnxruntime_timed(golden_path, feeds, compiled.output_names, repeat=args.repeat or 0)
        ort_timing = {"first_run_s": reference.first_s, "warm_median_s": reference.warm_median_s,
                      "warm_runs": reference.warm_runs}
        comparisons = evaluate.golden_compare(outputs, reference.outputs, compiled.manifest["options"]["dtype"],
                                              args.pcc, args.rel_l2)
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
                  f"mean {value.mean():.6g}" if value.size else f"{name}: shape {list(value.shape)} {value.dtype}")
    timings = {"compile_s": compile_s, "emulator": emulator_timing, "onnxruntime": ort_timing,
               "device": _device_timing(compiled)}
    report["timings"] = timings
    if not args.quiet:
        print(format_timings(timings), file=sys.stderr)
    if args.json:
        from ttc.fileio import write_text

        report["provenance"] = _provenance(args, compiled, sources)
        write_text(args.json, json.dumps(report, indent=2) + "\n")
    return EXIT_OK if report["passed"] else EXIT_GOLDEN_FAILED


def _input_files(specs: Sequence[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    from ttc.feeds import load_input_files

    return load_input_files(specs)


def _timed_runs(compiled, feeds: dict[str, np.ndarray], args: argparse.Namespace) -> tuple[dict[str, np.ndarray], dict]:
    """Run once (the outputs) and `--repeat` more times; the wall times of the first and the median of the rest."""
    import statistics

    progress = not args.quiet
    start = time.perf_counter()
    outputs = compiled.run(feeds, emulator=args.emulator, threads=args.threads, progress=progress)
    first = time.perf_counter() - start
    times = []
    for _ in range(args.repeat or 0):
        start = time.perf_counter()
        compiled.run(feeds, progress=progress)
        times.append(time.perf_counter() - start)
    emulator, threads = compiled.emulator
    return outputs, {"emulator": emulator, "threads": threads if emulator == "native" else 1, "first_run_s": first,
                     "warm_median_s": statistics.median(times) if times else None, "warm_runs": len(times)}


def _device_timing(compiled) -> dict:
    """The cost model's time of the last run's programs, one after another, on the artifact's card."""
    from ttc.ir.dialects.tt import DEVICE_ATTR_NAME, E150

    device = compiled.module.attributes.get(DEVICE_ATTR_NAME) or E150
    profile = compiled.profile
    return {"arch": device.arch, "modelled_s": sum(p.time_us for p in profile) * 1e-6, "programs": len(profile)}


def _seconds(value: float) -> str:
    """A duration with a unit that keeps three significant digits readable (µs, ms or s)."""
    if value < 1e-3:
        return f"{value * 1e6:.3g} µs"
    if value < 1.0:
        return f"{value * 1e3:.3g} ms"
    return f"{value:.3g} s"


def format_timings(timings: dict) -> str:
    """Each time with what it measures: host wall times (compile, emulator, onnxruntime on the CPU) beside the
    cost model's time for the card. The emulator's time says nothing about the device's speed."""
    rows: list[tuple[str, str, str]] = []
    if timings.get("compile_s") is not None:
        rows.append(("compile", _seconds(timings["compile_s"]), "ONNX to kernel programs, on this host"))

    def measured(t: dict, what: str) -> tuple[str, str]:
        if t["warm_median_s"] is None:
            return _seconds(t["first_run_s"]), f"{what}first run, with one-time set-up; --repeat N for warm runs"
        return (_seconds(t["warm_median_s"]),
                f"{what}median of {t['warm_runs']} warm runs (first run {_seconds(t['first_run_s'])})")

    emulator = timings["emulator"]
    where = (f"native core, {emulator['threads']} thread{'s' if emulator['threads'] != 1 else ''}, "
             if emulator["emulator"] == "native" else "reference emulator (Python), ")
    rows.append(("emulator wall time", *measured(emulator, where)))
    if timings.get("onnxruntime"):
        rows.append(("onnxruntime CPU time", *measured(timings["onnxruntime"], "wall time on this host, ")))
    device = timings["device"]
    rows.append((f"modelled {device['arch']} device time", _seconds(device["modelled_s"]),
                 f"cost model: {device['programs']} programs one after another"))
    width = max(len(label) for label, _, _ in rows)
    value_width = max(len(value) for _, value, _ in rows)
    return "timings:\n" + "\n".join(f"  {label:<{width}}  {value:>{value_width}}  {note}" for label, value, note in rows)


def _provenance(args: argparse.Namespace, compiled, sources: dict[str, str]) -> dict:
    """What produced a run report: ttc's version, the target and options, the seed, the inputs, the command."""
    emulator, threads = compiled.emulator
    argv = getattr(args, "argv", None) or sys.argv[1:]
    return {"ttc_version": __version__, "arch": compiled.manifest["arch"], "options": compiled.manifest["options"],
            "seed": args.seed, "emulator": emulator, "threads": threads,
            "inputs": {name: sources.get(name, f"random (seed {args.seed})") for name in compiled.input_names},
            "model": str(args.model), "command_line": shlex.join(["ttc", *argv])}


def _load_or_compile(args: argparse.Namespace):
    """The artifact args.model names, or the compiled ONNX model; and whether it was an artifact (judged by the
    file's contents, not its name)."""
    from ttc.fileio import ARTIFACT, file_kind, not_onnx_message

    kind = file_kind(args.model) if Path(args.model).is_file() else None
    if kind == ARTIFACT or (kind is None and args.model.endswith(".ttc")):
        from ttc.artifact import read_artifact

        return read_artifact(args.model), True
    if kind is not None:
        raise UserError(not_onnx_message(args.model, kind).replace("not an ONNX model", "not a .ttc artifact or an "
                                                                                       "ONNX model"))
    return _compile(args), False


def cmd_profile(args: argparse.Namespace) -> int:
    import json

    import onnx

    from ttc import evaluate
    from ttc.fileio import write_text
    from ttc.ir.dialects.tt import DEVICE_ATTR_NAME, E150
    from ttc.profile import (
        format_profile,
        program_json,
        program_ops,
        settings_line,
        static_profile,
        summarize,
    )

    if args.top is not None and args.top < 1:
        raise UserError(f"--top needs a positive number of programs, not {args.top}")
    compiled, is_artifact = _load_or_compile(args)
    if args.static:
        profile = static_profile(compiled.module, compiled.device_weights)
    else:
        model_proto = None if is_artifact else onnx.load(args.model, load_external_data=False)
        given, sources = _input_files(args.input)
        feeds = evaluate.make_inputs(compiled, given, args.seed, model_proto, sources)
        compiled.run(feeds, emulator=args.emulator, threads=args.threads, progress=not args.quiet)
        profile = compiled.profile
    device = compiled.module.attributes.get(DEVICE_ATTR_NAME) or E150
    print(format_profile(profile, device, args.top, compiled.module))
    if args.json:
        ops = program_ops(compiled.module)
        report = {"device": device.arch, "summary": summarize(profile, device).to_json(),
                  "settings": settings_line(compiled.module, profile),
                  "programs": [program_json(i, p, op) for i, (p, op) in enumerate(zip(profile, ops, strict=True))]}
        write_text(args.json, json.dumps(report, indent=2) + "\n")
    if args.trace:
        from ttc.profile import trace_events

        write_text(args.trace, json.dumps(trace_events(compiled.module, profile, device)) + "\n")
    if args.csv:
        from ttc.profile import profile_csv

        write_text(args.csv, profile_csv(compiled.module, profile))
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    import json

    import onnx

    from ttc import evaluate
    from ttc.fileio import write_text
    from ttc.ir.dialects.tt import DEVICE_ATTR_NAME, E150
    from ttc.profile import static_profile_with_loads
    from ttc.report import gather, node_data, render_html, summary_lines

    if not args.output and not args.node_data:
        raise UserError("ttc report: error: give -o REPORT.html (and/or --node-data OUT.json)")
    if args.top < 1:
        raise UserError(f"--top needs a positive number of programs, not {args.top}")
    if args.output and Path(args.output).is_dir():
        raise UserError(f"{args.output}: is a directory; -o names the HTML file to write")
    compiled, is_artifact = _load_or_compile(args)
    device = compiled.module.attributes.get(DEVICE_ATTR_NAME) or E150
    counted = static_profile_with_loads(compiled.module, compiled.device_weights)
    profile = [p for p, _ in counted]
    source = None
    if args.golden or args.node_data:
        source = evaluate.source_model_path(compiled, args.golden_model) if is_artifact \
            else Path(args.golden_model or args.model)
    checks = None
    if args.golden:
        from ttc.per_op import check_per_op

        assert source is not None
        model_proto = onnx.load(str(source), load_external_data=False)
        given, sources = _input_files(args.input)
        feeds = evaluate.make_inputs(compiled, given, args.seed, model_proto, sources)
        checks = check_per_op(compiled, source, feeds, args.pcc, args.rel_l2)
    data = gather(compiled, profile, device, Path(args.model).name, checks, args.top, [w for _, w in counted])
    if args.output:
        write_text(args.output, render_html(data))
    if args.node_data:
        assert source is not None
        files = node_data(data, source)
        write_text(args.node_data, json.dumps(files["time"], indent=2) + "\n")
        if "pcc" in files:
            write_text(_beside(args.node_data, ".pcc.json"), json.dumps(files["pcc"], indent=2) + "\n")
    if not args.quiet:
        for line in summary_lines(data):
            print(line, file=sys.stderr)
        written = [p for p in (args.output, args.node_data) if p]
        if args.node_data and checks is not None:
            written.append(str(_beside(args.node_data, ".pcc.json")))
        print("wrote " + ", ".join(written), file=sys.stderr)
    return EXIT_OK


def _beside(path: str, suffix: str) -> Path:
    """OUT.json -> OUT<suffix> (OUT.pcc.json)."""
    p = Path(path)
    return p.with_name((p.name[:-5] if p.name.endswith(".json") else p.name) + suffix)


def cmd_generate(args: argparse.Namespace) -> int:
    import json

    from ttc.fileio import write_text
    from ttc.generation import Generator, Sampling, load_tokenizer, parse_ids, parse_kv_names, stream_printer

    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
    if args.prompt is not None:
        if tokenizer is None:
            raise UserError("--prompt takes text and needs --tokenizer FILE.json; or give --prompt-ids")
        prompt = tokenizer.encode(args.prompt).ids
    else:
        prompt = parse_ids(args.prompt_ids)
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be at least 1, not {args.max_new_tokens}")
    sampling = Sampling(args.temperature, args.top_k, args.top_p, args.seed)
    max_length = args.max_length
    generator = Generator(args.model, max_length=max_length, kv_names=parse_kv_names(args.kv_names),
                          arch=args.arch, dtype=args.dtype, math_fidelity=args.math_fidelity,
                          emulator=args.emulator, threads=args.threads, batch=args.batch,
                          default_length=len(prompt) + args.max_new_tokens)
    if not args.quiet:
        if generator.mode == "uncached":
            print(f"ttc: {args.model} has no cache inputs: uncached mode, every step reruns the whole sequence "
                  f"padded to {generator.max_length} tokens", file=sys.stderr)
        else:
            print(f"ttc: cached mode: {len(generator.interface.kv)} cache tensors for up to {generator.max_length} "
                  f"tokens; {sampling.describe()}", file=sys.stderr)
    result = generator.generate(prompt, args.max_new_tokens, sampling, args.eos_id, on_token=stream_printer(tokenizer))
    print()
    if tokenizer is not None:
        result.text = tokenizer.decode(result.tokens)
    if not args.quiet:
        print(result.summary(), file=sys.stderr)
    if args.json:
        write_text(args.json, json.dumps(result.to_json(), indent=2) + "\n")
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    import json

    from ttc.artifact_info import artifact_info, format_info
    from ttc.fileio import ARTIFACT, file_kind

    path = Path(args.model)
    if path.is_file():
        kind = file_kind(path)
        if kind != ARTIFACT:
            what = f"this is {kind}" if kind else "this is not a .ttc artifact (an ONNX model? compile it first)"
            raise UserError(f"{path}: {what}; `ttc inspect` reads .ttc artifacts")
    info = artifact_info(path)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return EXIT_OK


def cmd_completion(args: argparse.Namespace) -> int:
    from ttc.completion import completion_script

    sys.stdout.write(completion_script(build_parser(), args.shell))
    return EXIT_OK


def _pass_list() -> str:
    """One line per registered pass: its name with its options and their defaults, then what it does."""
    from ttc.passes import registered_passes

    rows = []
    for name, cls in registered_passes().items():
        options = " ".join(f"{key}={_option_default(field.default)}" for key, field in cls.options().items())
        head = f"{name}{{{options}}}" if options else name
        doc = " ".join((cls.__doc__ or "").strip().split("\n\n", 1)[0].split())
        sentence = re.split(r"(?<=[.;])\s", doc, maxsplit=1)[0].rstrip(".;")
        rows.append((head, sentence))
    width = max(len(head) for head, _ in rows)
    return "\n".join(f"{head:<{width}}  {sentence}" for head, sentence in rows)


def _option_default(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, str) and (not value or " " in value) else str(value)


def _check_ir_path(path: str) -> None:
    """IR text is UTF-8 text; name the file type of anything else (an ONNX model, an artifact, an array)."""
    from ttc.fileio import IR_TEXT, file_kind

    kind = file_kind(path)
    if kind is not None and kind != IR_TEXT:
        raise UserError(f"{path}: this is {kind}, not IR text; `ttc opt` reads the text `ttc import` writes")
    try:
        with open(path, "rb") as handle:
            handle.read().decode("utf-8")
    except UnicodeDecodeError:
        import onnx

        try:
            model = onnx.load(path, load_external_data=False)
            is_onnx = model.HasField("graph")
        except Exception:  # protobuf's DecodeError and the like
            is_onnx = False
        what = "an ONNX model, not IR text: `ttc import` it first" if is_onnx else "a binary file, not IR text"
        raise UserError(f"{path}: this is {what}") from None


def _emit(module: object, output: str | None, locations: bool = False) -> None:
    """To a file (with its weights beside it; locations always kept), or to stdout: locations only with
    --print-locations, as MLIR prints debug info only when asked."""
    from ttc.fileio import write_module
    from ttc.ir.printer import print_module

    if output:
        write_module(output, module)  # type: ignore[arg-type]
    else:
        sys.stdout.write(print_module(module, locations=locations))  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (the console script exits with it)."""
    try:
        args = build_parser().parse_args(argv)
        args.argv = list(argv) if argv is not None else sys.argv[1:]
        return args.handler(args)
    except TtcError as exc:
        print(_error_text(exc), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:
        # Never the user's fault: one line saying so and where to report it, then the traceback for the report.
        print(f"ttc: internal error ({type(exc).__name__}): this is a bug in ttc, not a problem with your input; "
              f"please report it to the ttc maintainers (the project's issue tracker) with the command line, the "
              f"model and the traceback below", file=sys.stderr)
        traceback.print_exc()
        return EXIT_INTERNAL_ERROR


def _error_text(exc: TtcError) -> str:
    message = exc.message
    first = message.split("\n", 1)[0]
    # Diagnostics that already say "error:" (file:line:col: error: ...) print as they are.
    return message if "error:" in first else f"ttc: error: {message}"


if __name__ == "__main__":
    sys.exit(main())
