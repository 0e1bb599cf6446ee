"""One regression test per failure class of issue 17 (hostile input): each was a traceback, a hang, a silent
wrong result or a file read it should not have been; each must now be a clear error (exit 2 naming the
problem and its place) or a correct run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ttc.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fuzz"))

from fuzz_corpus import _model, _rehash, _set_external, _vi, _write_zip, _zip_members, base_models
from fuzz_harness import run_case


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return code, out, err


@pytest.fixture(scope="module")
def mlp(tmp_path_factory) -> tuple[Path, Path, dict]:
    """The fuzz corpus's MLP: its model, its artifact and the outputs of an untampered run."""
    folder = tmp_path_factory.mktemp("mlp")
    model = folder / "mlp.onnx"
    onnx.save(base_models()["mlp"], str(model))
    assert main(["compile", str(model), "-o", str(folder / "mlp.ttc"), "--quiet"]) == 0
    assert main(["run", str(folder / "mlp.ttc"), "--quiet", "--seed", "1", "-o", str(folder / "mlp.npz")]) == 0
    with np.load(folder / "mlp.npz") as data:
        outputs = {k: data[k] for k in data.files}
    return model, folder / "mlp.ttc", outputs


def _tampered(tmp_path: Path, artifact: Path, edit, rehash: bool = False) -> Path:
    members = edit(_zip_members(artifact))
    out = tmp_path / "tampered.ttc"
    _write_zip(out, _rehash(members) if rehash else members)
    return out


def _edit_member(name: str, change):
    def edit(members):
        return [(info, change(body) if info.filename == name else body) for info, body in members]
    return edit


def _edit_manifest(change):
    def body(data: bytes) -> bytes:
        manifest = json.loads(data)
        change(manifest)
        return json.dumps(manifest).encode()
    return _edit_member("manifest.json", body)


# ------------------------------------------------------------------------------------------- 1. hangs


def test_class1_batch_2_34_matmul_is_refused_in_under_a_second(tmp_path: Path, capsys) -> None:
    n = 1 << 34
    model = _model([helper.make_node("MatMul", ["a", "b"], ["y"], name="mm")],
                   [_vi("a", [n, 1, 32]), _vi("b", [n, 32, 1])], [_vi("y", [n, 1, 1])])
    onnx.save(model, str(tmp_path / "m.onnx"))
    argv = ["compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.ttc"), "--quiet"]
    run(argv, capsys)  # the first call pays for importing the compiler
    start = time.process_time()  # CPU time: what the refusal costs, not how loaded the machine is
    code, _, err = run(argv, capsys)
    assert code == 2 and "more than any Grayskull's DRAM holds" in err and "'a'" in err
    assert time.process_time() - start < 1.0


def test_class1_ir_with_a_2_34_dim_is_refused_by_the_verifier(tmp_path: Path, capsys) -> None:
    n = 1 << 34
    t = f"tensor<{n}x32x32xf32>"
    (tmp_path / "m.mlir").write_text(f'module {{\n  func.func @main(%arg0: {t}, %arg1: {t}) -> {t} {{\n'
                                     f'    %0 = "ttir.matmul"(%arg0, %arg1) : ({t}, {t}) -> {t} loc("mm")\n'
                                     f'    func.return %0 : {t} loc("r")\n  }}\n}}\n')
    code, _, err = run(["opt", str(tmp_path / "m.mlir"), "--pipeline", "decompose,canonicalize,tilize"], capsys)
    assert code == 2 and "bytes of device DRAM" in err and "m.mlir:3:" in err


def test_class1_tile_padding_counts_toward_the_card(tmp_path: Path, capsys) -> None:
    """[2^24, 1, 1] is 16 Mi elements but 16 Mi tiles: more than the card holds at any format, refused before
    any pass walks its batches."""
    n = 1 << 24
    model = _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [_vi("x", [n, 1, 1])], [_vi("y", [n, 1, 1])])
    onnx.save(model, str(tmp_path / "m.onnx"))
    start = time.process_time()
    code, _, err = run(["compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.ttc"), "--quiet"], capsys)
    # refused right after the import (`fit.check_activations_fit`), naming the tensor that does not fit
    assert code == 2 and "bytes of device DRAM" in err and "'y' [16777216, 1, 1]" in err
    assert time.process_time() - start < 10


def test_class1_divisors_are_found_without_walking_the_number() -> None:
    from ttc.passes.ops.geometry import divisors

    start = time.process_time()
    assert divisors(1 << 34) == [1 << k for k in range(35)]
    assert divisors(720720) == [d for d in range(1, 720721) if 720720 % d == 0]
    assert divisors(1) == [1] and divisors(49) == [1, 7, 49]
    assert time.process_time() - start < 1.0


# ------------------------------------------------------------------------------------------- 2. ONNX input


def _external_mlp(folder: Path, **entries: str) -> Path:
    model = base_models()["mlp"]
    tensor = next(t for t in model.graph.initializer if t.name == "w1")
    data = numpy_helper.to_array(tensor).tobytes()
    (folder / "w.bin").write_bytes(data)
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in {"location": "w.bin", "offset": "0", "length": str(len(data)), **entries}.items():
        _set_external(tensor, key, value)
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_class2_non_utf8_node_name_is_a_clear_error(tmp_path: Path, capsys) -> None:
    data = base_models()["mlp"].SerializeToString().replace(b"fc1", b"f\xff\xfe")
    (tmp_path / "m.onnx").write_bytes(data)
    code, _, err = run(["compile", str(tmp_path / "m.onnx"), "--quiet"], capsys)
    assert code == 2 and "not valid UTF-8" in err and "node[0].name" in err


@pytest.mark.parametrize(("entries", "message"), [
    ({"length": "12"}, "needs 8192 bytes but its external data length is 12"),
    ({"offset": "-64"}, "external-data offset '-64'"),
    ({"offset": "abc"}, "external-data offset 'abc'"),
    ({"offset": "4096"}, "that file has 8192 bytes"),
    ({"location": "w.bin\0x"}, "NUL"),
])
def test_class2_hostile_external_data_is_a_clear_error(tmp_path: Path, capsys, entries, message) -> None:
    path = _external_mlp(tmp_path, **entries)
    code, _, err = run(["compile", str(path), "--quiet"], capsys)
    assert code == 2 and message in err and "'w1'" in err


def test_class2_external_data_of_the_right_length_still_compiles(tmp_path: Path, capsys) -> None:
    path = _external_mlp(tmp_path)
    assert run(["compile", str(path), "-o", str(tmp_path / "m.ttc"), "--quiet"], capsys)[0] == 0


def test_class2_rank_64_input_is_refused_at_import(tmp_path: Path, capsys) -> None:
    model = _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [_vi("x", [1] * 64)], [_vi("y", [1] * 64)])
    onnx.save(model, str(tmp_path / "m.onnx"))
    code, _, err = run(["run", str(tmp_path / "m.onnx"), "--quiet"], capsys)
    assert code == 2 and "rank 64" in err and "'x'" in err


# ------------------------------------------------------------------------------------------- 3. --golden


def test_class3_onnxruntime_refusals_are_user_errors(tmp_path: Path) -> None:
    from ttc.golden import run_onnxruntime
    from ttc.ir.diagnostics import UserError

    model = base_models()["mlp"]
    model.opset_import[0].version = 999
    with pytest.raises(UserError, match="onnxruntime cannot load"):
        run_onnxruntime(model, {"x": np.zeros((1, 64), np.float32)}, ["y"])
    good = base_models()["mlp"]
    with pytest.raises(UserError, match="onnxruntime failed to run"):
        run_onnxruntime(good, {"x": np.zeros((2, 3), np.float32)}, ["y"])


def test_class3_golden_of_a_model_onnxruntime_cannot_run_exits_2(tmp_path: Path, capsys) -> None:
    model = _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [_vi("x", [1, 8])], [_vi("y", [1, 8])],
                   opset=17)
    model.ir_version = 99  # beyond what onnxruntime reads; ttc's own reader takes it
    onnx.save(model, str(tmp_path / "m.onnx"))
    code = main(["run", str(tmp_path / "m.onnx"), "--golden", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err


# ------------------------------------------------------------------------------------------- 4. IR text

_IR = """module {
  func.func @main(%arg0: tensor<1x32xf32>) -> tensor<1x32xf32> {
    %0 = "ttir.relu"(%arg0) : (tensor<1x32xf32>) -> tensor<1x32xf32> loc("NAME")
    func.return %0 : tensor<1x32xf32> loc("r")
  }
}
"""


def _opt(tmp_path: Path, text: str, capsys, pipeline: str = "") -> tuple[int, str]:
    (tmp_path / "m.mlir").write_text(text)
    code, _, err = run(["opt", str(tmp_path / "m.mlir"), *(["--pipeline", pipeline] if pipeline else [])], capsys)
    return code, err


def test_class4_bad_string_escape_is_a_parse_error_with_line_and_column(tmp_path: Path, capsys) -> None:
    code, err = _opt(tmp_path, _IR.replace("NAME", "\\zz"), capsys)
    assert code == 2 and "m.mlir:3:" in err and "bad escape" in err


@pytest.mark.parametrize("kind", ["array", "dict"])
def test_class4_5000_deep_nesting_is_a_parse_error(tmp_path: Path, capsys, kind: str) -> None:
    deep = "[" * 5000 + "1" + "]" * 5000 if kind == "array" else "{a = " * 5000 + "1" + "}" * 5000
    code, err = _opt(tmp_path, _IR.replace("module {", f"module attributes {{deep = {deep}}} {{"), capsys)
    assert code == 2 and "nested more than" in err and "m.mlir:1:" in err


def _device_ir(**fields: str) -> str:
    from ttc.ir.dialects.tt import E150

    text = str(E150)
    for name, value in fields.items():
        text = re.sub(rf"\b{name} = [^,>]+", f"{name} = {value}", text, count=1)
    return _IR.replace("module {", f"module attributes {{tt.device = {text}}} {{")


@pytest.mark.parametrize(("fields", "message"), [
    ({"num_cbs": "0"}, "num_cbs = 0"), ({"dst_tiles": "0"}, "dst_tiles = 0"), ({"arch": "e999"}, "arch 'e999'"),
    ({"compute_grid": "100000x100000"}, "compute_grid"), ({"num_cbs": '"x"'}, "num_cbs = 'x'"),
    ({"clock_mhz": "0"}, "clock_mhz = 0"), ({"l1_reserved": str(1 << 40)}, "l1_reserved"),
])
def test_class4_device_fields_are_verified(tmp_path: Path, capsys, fields, message) -> None:
    code, err = _opt(tmp_path, _device_ir(**fields), capsys, "decompose,canonicalize,tilize,layout,grid")
    assert code == 2 and "#tt.device" in err and message in err


def test_class4_a_missing_device_field_is_a_parse_error(tmp_path: Path, capsys) -> None:
    text = re.sub(r"\bnum_cbs = [^,>]+, ", "", _device_ir())
    code, err = _opt(tmp_path, text, capsys)
    assert code == 2 and "m.mlir:1:" in err and "num_cbs" in err


def _conv_ir(**attrs: str) -> str:
    values = {"input_shape": "[1, 4, 4]", "strides": "[1, 1]", "pads": "[0, 0, 0, 0]", "dilations": "[1, 1]",
              **attrs}
    body = ", ".join(f"{k} = {v}" for k, v in values.items())
    return (f'module {{\n  func.func @main(%arg0: tensor<16x3xf32>, %arg1: tensor<2x3x1x1xf32>) -> tensor<16x2xf32> {{\n'
            f'    %0 = "ttir.conv2d"(%arg0, %arg1) {{{body}}} : (tensor<16x3xf32>, tensor<2x3x1x1xf32>) -> '
            f'tensor<16x2xf32> loc("conv")\n    func.return %0 : tensor<16x2xf32> loc("r")\n  }}\n}}\n')


@pytest.mark.parametrize(("attrs", "message"), [
    ({"strides": "[0, 1]"}, "'strides' must be 2 integers"), ({"dilations": "[1, 0]"}, "'dilations'"),
    ({"input_shape": "[16]"}, "'input_shape' must be 3 integers"), ({"pads": "[-1, 0, 0, 0]"}, "'pads'"),
])
def test_class4_window_attributes_are_verified(tmp_path: Path, capsys, attrs, message) -> None:
    code, err = _opt(tmp_path, _conv_ir(**attrs), capsys)
    assert code == 2 and message in err and "m.mlir:3:" in err
    assert _opt(tmp_path, _conv_ir(), capsys)[0] == 0  # the unmutated op verifies


def test_class4_duplicate_main_is_refused(tmp_path: Path, capsys) -> None:
    func = _IR[_IR.index("  func.func"):_IR.rindex("}")]
    code, err = _opt(tmp_path, _IR[:_IR.rindex("}")] + func + "}\n", capsys)
    assert code == 2 and "redefinition of symbol @main" in err


# ------------------------------------------------------------------------------------------- 5./6. artifacts


@pytest.mark.parametrize(("change", "message"), [
    (lambda m: m.pop("outputs"), "outputs is missing"),
    (lambda m: m.update(programs="3"), "programs has the wrong type"),
    (lambda m: m["inputs"][0].update(shape=[1 << 40, 1 << 20]), "larger than any device holds"),
    (lambda m: m["outputs"][0].update(dtype="float16"), "disagree with program.mlir"),
    (lambda m: m["inputs"][0].update(dtype="object"), "'object' is not a tensor element type"),
    (lambda m: m.update(format_version=3), "format version 3"),
    (lambda m: m.update(format_version=1), "format version 1"),
    (lambda m: m["memory"].update(dram_bytes=-1), "memory.dram_bytes is out of range"),
])
def test_class5_6_manifest_schema_and_signature(tmp_path: Path, capsys, mlp, change, message) -> None:
    path = _tampered(tmp_path, mlp[1], _edit_manifest(change))
    code, _, err = run(["run", str(path), "--quiet"], capsys)
    assert code == 2 and message in err


def test_class5_zip_bomb_stops_at_the_recorded_size(tmp_path: Path, capsys, mlp) -> None:
    path = _tampered(tmp_path, mlp[1], _edit_member("program.mlir", lambda b: b + b" " * (64 << 20)))
    assert path.stat().st_size < 1 << 20
    code, _, err = run(["run", str(path), "--quiet"], capsys)
    assert code == 2 and "member program.mlir inflates" in err and "recorded size" in err


def test_class5_npy_header_of_2_40_rows_is_refused_before_allocating(tmp_path: Path, capsys, mlp) -> None:
    def header(body: bytes) -> bytes:
        return re.sub(rb"'shape': \([^)]*\)", b"'shape': (1099511627776, 2)", body, count=1)

    def edit(members):
        first = next(info.filename for info, _ in members if info.filename.startswith("weights/"))
        return _edit_member(first, header)(members)

    path = _tampered(tmp_path, mlp[1], edit, rehash=True)
    code, _, err = run(["run", str(path), "--quiet"], capsys)
    assert code == 2 and "declares shape [1099511627776, 2]" in err


def test_class6_duplicate_zip_entries_are_refused(tmp_path: Path, capsys, mlp) -> None:
    path = _tampered(tmp_path, mlp[1], lambda members: [*members, next(m for m in members
                                                                      if m[0].filename.startswith("weights/"))])
    code, _, err = run(["run", str(path), "--quiet"], capsys)
    assert code == 2 and "members named twice" in err


def test_class6_unknown_members_are_refused(tmp_path: Path, capsys, mlp) -> None:
    path = _tampered(tmp_path, mlp[1], lambda members: [*members, (zipfile.ZipInfo("extra.py"), b"x = 1")])
    code, _, err = run(["run", str(path), "--quiet"], capsys)
    assert code == 2 and "unknown members extra.py" in err


def test_class6_a_member_in_a_compression_ttc_never_writes_is_refused(tmp_path: Path, capsys, mlp) -> None:
    """bzip2 is one zipfile could even read: the artifact is refused for being what ttc never writes."""
    def bzip2(members):
        out = []
        for info, body in members:
            again = zipfile.ZipInfo(info.filename, info.date_time)
            again.compress_type = zipfile.ZIP_BZIP2 if info.filename == "program.mlir" else info.compress_type
            out.append((again, body))
        return out

    path = _tampered(tmp_path, mlp[1], bzip2)
    code, _, err = run(["run", str(path), "--quiet"], capsys)
    assert code == 2 and "a compression ttc never writes (member program.mlir" in err


def test_class6_an_edited_weight_byte_is_refused(tmp_path: Path, capsys, mlp) -> None:
    def flip(body: bytes) -> bytes:
        return body[:-1] + bytes([body[-1] ^ 1])

    first = next(info.filename for info, _ in _zip_members(mlp[1]) if info.filename.startswith("weights/"))
    path = _tampered(tmp_path, mlp[1], _edit_member(first, flip))
    code, _, err = run(["run", str(path), "--quiet"], capsys)
    assert code == 2 and f"member {first} does not match its sha256" in err


@pytest.mark.parametrize("edit", ["runtime-args", "page-size", "op-name"])
def test_class6_edited_program_is_refused(tmp_path: Path, capsys, mlp, edit: str) -> None:
    def change(body: bytes) -> bytes:
        text = body.decode()
        if edit == "runtime-args":
            new = re.sub(r"(runtime_args = \[\s*\[\[)(\d+)", lambda m: f"{m[1]}{int(m[2]) + 1}", text, count=1)
        elif edit == "page-size":
            new = re.sub(r"(#ttmetal\.cb<\d+, page_size = )(\d+)", lambda m: m[1] + str(int(m[2]) * 2), text, count=1)
        else:
            new = text.replace('"ttkernel.matmul_tiles"', '"ttkernel.add_tiles"', 1)
        assert new != text
        return new.encode()

    path = _tampered(tmp_path, mlp[1], _edit_member("program.mlir", change))
    code, _, err = run(["run", str(path), "--quiet"], capsys)
    assert code == 2 and "member program.mlir does not match its sha256" in err


def test_class6_an_untampered_artifact_still_runs_to_the_same_outputs(tmp_path: Path, capsys, mlp) -> None:
    path = _tampered(tmp_path, mlp[1], lambda members: members)
    assert run(["run", str(path), "--quiet", "--seed", "1", "-o", str(tmp_path / "o.npz")], capsys)[0] == 0
    with np.load(tmp_path / "o.npz") as data:
        assert all(np.array_equal(data[k], v) for k, v in mlp[2].items())


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_class5_input_file_header_of_2_40_rows_is_refused(tmp_path: Path, capsys, mlp, suffix: str) -> None:
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.zeros((1, 64), np.float32))
    data = buffer.getvalue().replace(b"(1, 64)", b"(1099511627776, 64)")
    path = tmp_path / f"x{suffix}"
    if suffix == ".npy":
        path.write_bytes(data)
    else:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("x.npy", data)
    code, _, err = run(["run", str(mlp[1]), "--input", f"x={path}", "--quiet"], capsys)
    assert code == 2 and ("declares more data than the file holds" in err or "declares [1099511627776, 64]" in err)


# ------------------------------------------------------------------------------------------- 7. security


def test_class7_host_op_model_with_external_data_is_refused(tmp_path: Path, capsys) -> None:
    import base64

    model = _model([helper.make_node("ArgMax", ["x"], ["y"], name="argmax", axis=1, keepdims=0)],
                   [_vi("x", [2, 16])], [_vi("y", [2], TensorProto.INT64)])
    onnx.save(model, str(tmp_path / "h.onnx"))
    assert main(["compile", str(tmp_path / "h.onnx"), "-o", str(tmp_path / "h.ttc"), "--quiet"]) == 0
    evil = _model([helper.make_node("Add", ["a", "c"], ["b"])], [_vi("a", [4])], [_vi("b", [4])],
                  [numpy_helper.from_array(np.ones(4, np.float32), "c")])
    tensor = evil.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    _set_external(tensor, "location", "secret.bin")
    encoded = base64.b64encode(evil.SerializeToString()).decode()
    path = _tampered(tmp_path, tmp_path / "h.ttc", _edit_member(
        "program.mlir", lambda b: re.sub(r'model = "[^"]*"', f'model = "{encoded}"', b.decode(), count=1).encode()),
        rehash=True)
    code, _, err = run(["run", str(path), "--quiet"], capsys)
    assert code == 2 and "references external data" in err


def test_class7_golden_does_not_open_the_path_the_manifest_names(tmp_path: Path, mlp) -> None:
    path = _tampered(tmp_path, mlp[1], _edit_manifest(
        lambda m: m.update(source_model={"path": "/etc/passwd", "sha256": "0" * 64, "size": 7})))
    outcome = run_case(["run", path.name, "--golden", "--quiet"], tmp_path, timeout=60)
    assert outcome.exit_code == 2 and "size differs" in outcome.stderr
    assert outcome.outside == []


@pytest.mark.parametrize("which", ["artifact", "onnx", "golden"])
def test_class7_onnxruntime_is_imported_only_for_a_golden_check(mlp, which: str) -> None:
    code = ("import sys; from ttc.cli import main; rc = main(['run', *sys.argv[1:], '--quiet']); "
            "print('onnxruntime' in sys.modules, rc)")
    argv = {"artifact": [str(mlp[1])], "onnx": [str(mlp[0])], "golden": [str(mlp[0]), "--golden"]}[which]
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == ("True 0" if which == "golden" else "False 0")


# ------------------------------------------------------------------------------------------- 8. host memory


def _peak_rss(argv: list[str]) -> tuple[int, int, str]:
    """(exit code, peak RSS in bytes, stderr) of `ttc argv` in its own process, measured with
    resource.getrusage(RUSAGE_CHILDREN) by a small launcher (Linux keeps ru_maxrss across fork and exec, so the
    process must not descend from this large test process directly)."""
    launcher = ("import resource, subprocess, sys; run = subprocess.run([sys.executable, '-m', 'ttc', *sys.argv[1:]], "
                "stderr=subprocess.PIPE, text=True); sys.stderr.write(run.stderr); "
                "print(run.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", launcher, *argv], capture_output=True, text=True, timeout=600)
    rc, peak_kib = map(int, out.stdout.split()[-2:])
    return rc, peak_kib * 1024, out.stderr


def _sparse_model(folder: Path, gib: float) -> Path:
    cols = 1 << 14
    rows = int(gib * (1 << 30)) // (cols * 4)
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [_vi("x", [1, rows])],
                   [_vi("y", [1, cols])], [numpy_helper.from_array(np.zeros((1, 1), np.float32), "w")])
    tensor = model.graph.initializer[0]
    del tensor.dims[:]
    tensor.dims.extend([rows, cols])
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    _set_external(tensor, "location", "w.bin")
    with open(folder / "w.bin", "wb") as handle:
        handle.truncate(rows * cols * 4)
    onnx.save(model, str(folder / "model.onnx"))
    return folder / "model.onnx"


def test_class8_host_memory_is_checked_before_reading_weights(tmp_path: Path) -> None:
    """A 2 GiB (sparse) weight under a 1 GiB limit: refused with the figure and a remedy, and the process's
    peak RSS stays far below the weight's size (nothing was read)."""
    path = _sparse_model(tmp_path, 2)
    rc, peak, stderr = _peak_rss(["compile", str(path), "--quiet", "--max-host-memory", "1G", "-o",
                                  str(tmp_path / "o.ttc")])
    assert rc == 2 and "needs about" in stderr and "GiB of host RAM" in stderr and "Try:" in stderr
    assert peak < (1 << 30) // 2, f"peak RSS {peak / 2**20:.0f} MiB"
    assert not (tmp_path / "o.ttc").exists()


def _compile_peak_rss(path: Path, out: Path) -> int:
    """Peak RSS (bytes) of a process that compiles `path`."""
    rc, peak, stderr = _peak_rss(["compile", str(path), "--quiet", "-o", str(out)])
    assert rc == 0, stderr
    return peak


def _baseline_rss(tmp_path: Path) -> int:
    folder = tmp_path / "small"
    folder.mkdir()
    return _compile_peak_rss(_sparse_model(folder, 1 / 64), folder / "o.ttc")


def test_class8_external_weights_are_mapped_and_packed_in_bands(tmp_path: Path) -> None:
    """A 256 MiB external weight: mapped, not read into the protobuf and copied; packed a band at a time. The
    compile's peak RSS grows by under twice the weight's bytes (a 64 MiB band is a quarter of it; reading the
    weight into the protobuf and copying it cost over three times)."""
    weight = 256 << 20
    peak = _compile_peak_rss(_sparse_model(tmp_path, 0.25), tmp_path / "o.ttc")
    assert peak - _baseline_rss(tmp_path) < 2 * weight, f"peak RSS {peak / 2**20:.0f} MiB"


@pytest.mark.slow
def test_class8_a_2_gib_weight_compiles_within_twice_its_bytes(tmp_path: Path) -> None:
    weight = 2 << 30
    peak = _compile_peak_rss(_sparse_model(tmp_path, 2), tmp_path / "o.ttc")
    assert peak - _baseline_rss(tmp_path) < 1.75 * weight, f"peak RSS {peak / 2**30:.2f} GiB"


def test_class8_fit_hint_never_suggests_what_the_host_cannot_do(tmp_path: Path, capsys) -> None:
    """20 GiB of float32 weights: bfp8_b would fit the card, but packing needs more RAM than allowed, so the
    hint says so instead of suggesting it plainly."""
    path = _sparse_model(tmp_path, 20)
    argv = ["compile", str(path), "--quiet", "--max-host-memory", "4G"]
    run(argv, capsys)  # the first call pays for importing the compiler
    start = time.process_time()
    code, _, err = run(argv, capsys)
    assert code == 2 and "does not fit the e150" in err
    assert "would fit the card, but this host cannot pack it" in err
    assert time.process_time() - start < 1.0
    from ttc.fit import host_memory_needed

    assert host_memory_needed(onnx.load(str(path), load_external_data=False)) > 20 * (1 << 30)


# ------------------------------------------------------------------------------------------- exit 4


def test_internal_errors_apologise_and_never_blame_the_user(tmp_path: Path, capsys, monkeypatch, mlp) -> None:
    import ttc.compiler

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a ttc bug")

    monkeypatch.setattr(ttc.compiler, "pack_device_weights", broken)
    code = main(["compile", str(mlp[0]), "-o", str(tmp_path / "x.ttc"), "--quiet"])
    err = capsys.readouterr().err
    first = err.splitlines()[0]
    assert code == 4 and "this is a bug in ttc" in first and "not a problem with your input" in first
    assert "Traceback" in err and "ZeroDivisionError: a ttc bug" in err
