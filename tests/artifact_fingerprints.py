"""Fingerprints of the compiled test models: the sha256 of each model's `.ttc` artifact (manifest, final IR
text, device weights; the zip is byte-identical across runs) and of its final IR text alone.

A refactoring of the compiler that must not change behaviour keeps every fingerprint:
tests/test_artifact_fingerprints.py compiles the models again and compares them with
tests/data/artifact_fingerprints.json, written by this script on the commit before the refactoring.

    python tests/artifact_fingerprints.py --write     # record the fingerprints (and the compile times)
    python tests/artifact_fingerprints.py             # compare, print the compile times

The models: the zoo models of tests/e2e/test_golden_models.py (always at hand) and the small models of the
model cache ($TTC_MODEL_CACHE or ~/.cache/ttc/models; a model missing there is skipped).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import onnx

import ttc
from ttc import zoo
from ttc.ir.diagnostics import UserError
from ttc.ir.printer import print_module

FINGERPRINTS = Path(__file__).parent / "data" / "artifact_fingerprints.json"

ZOO: dict[str, Callable[[], onnx.ModelProto]] = {
    "mlp_b1": lambda: zoo.mlp(batch=1),
    "mlp_b32": lambda: zoo.mlp(batch=32),
    "encoder_block": lambda: zoo.encoder_block(),
    "odd_shapes": zoo.odd_shapes,
    "elementwise_broadcast": zoo.elementwise_broadcast,
    "encoder_seq100": lambda: zoo.encoder_block(seq=96, hidden=128, heads=4, ffn=256),
}
# The cached models that compile in seconds (the full-size ones take minutes each).
CACHED = ("dbnet-mini", "light_squeezenet", "light_shufflenet", "mobilenet_v3", "efficientnet-b0-mini",
          "swin-tiny-mini", "yolo-mini", "crnn-mini", "deit-small-mini", "whisper-tiny-encoder-mini",
          "vit-base-mini", "convnext-tiny-mini", "qwen2-mini", "t5-small-encoder-mini")


def cache_dir() -> Path:
    return Path(os.environ.get("TTC_MODEL_CACHE") or Path.home() / ".cache" / "ttc" / "models")


def cached_path(name: str) -> Path:
    """<cache>/NAME/NAME.onnx, or <cache>/families/NAME/NAME.onnx where tests/models/test_families.py exports."""
    plain = cache_dir() / name / f"{name}.onnx"
    family = cache_dir() / "families" / name / f"{name}.onnx"
    return family if not plain.is_file() and family.is_file() else plain


def model_names() -> list[str]:
    return [*ZOO, *CACHED]


def compile_one(name: str) -> ttc.compiler.CompiledModel:
    if name in ZOO:
        return ttc.compile(ZOO[name]())
    path = cached_path(name)
    if not path.is_file():
        raise FileNotFoundError(path)
    # The manifest records the source path: the fingerprint names the model by its cache-relative place.
    return ttc.compile(str(path))


def fingerprint(compiled: ttc.compiler.CompiledModel) -> dict[str, str]:
    """sha256 of the artifact (with the source path made cache-relative) and of the final IR text."""
    source = compiled.manifest.get("source_model") or {}
    if source.get("path"):
        source["path"] = os.path.relpath(source["path"], cache_dir())
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.ttc"
        compiled.save(path)
        artifact = hashlib.sha256(path.read_bytes()).hexdigest()
    ir = hashlib.sha256(print_module(compiled.module).encode()).hexdigest()
    return {"artifact": artifact, "ir": ir}


def measure(names: list[str]) -> tuple[dict[str, dict[str, str]], dict[str, float]]:
    prints, seconds = {}, {}
    for name in names:
        start = time.perf_counter()
        try:
            compiled = compile_one(name)
        except FileNotFoundError:
            continue
        except UserError as error:  # a model the compiler rejects: its message is part of the behaviour
            seconds[name] = time.perf_counter() - start
            prints[name] = {"error": hashlib.sha256(str(error).encode()).hexdigest()}
            continue
        seconds[name] = time.perf_counter() - start
        prints[name] = fingerprint(compiled)
    return prints, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="record the fingerprints in " + str(FINGERPRINTS))
    parser.add_argument("models", nargs="*", help="models (default: all)")
    args = parser.parse_args(argv)
    names = args.models or model_names()
    prints, seconds = measure(names)
    for name in names:
        if name in seconds:
            digest = prints[name].get("artifact") or "error " + prints[name]["error"]
            print(f"{name:28s} compile {seconds[name]:7.2f} s  {digest[:22]}")
        else:
            print(f"{name:28s} not in the model cache")
    print(f"total compile {sum(seconds.values()):.2f} s over {len(seconds)} models")
    if args.write:  # models not in this cache keep their recorded fingerprints
        FINGERPRINTS.parent.mkdir(parents=True, exist_ok=True)
        kept = json.loads(FINGERPRINTS.read_text()) if FINGERPRINTS.exists() else {}
        FINGERPRINTS.write_text(json.dumps(kept | prints, indent=2, sort_keys=True) + "\n")
        return 0
    recorded = json.loads(FINGERPRINTS.read_text())
    changed = [name for name in prints if name in recorded and recorded[name] != prints[name]]
    for name in changed:
        print(f"CHANGED: {name}")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
