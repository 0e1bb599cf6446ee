"""The `ttc` command line.

    ttc import MODEL.onnx [-o OUT.mlir] [--input-shape NAME=1x128 ...] [--arch e150|e75]
    ttc opt FILE.mlir [--pipeline SPEC] [--print-ir-after-all] [--print-ir-after PASS] [--timing]
                      [--no-verify] [-o OUT.mlir]

Diagnostics go to stderr, requested output to stdout or -o. Exit codes: 0 success, 1 golden check
failed, 2 user error, 3 device fault, 4 internal error (the only case that prints a traceback).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

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
    return parser


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
