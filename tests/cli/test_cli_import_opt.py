"""`ttc import` and `ttc opt`: outputs, exit codes and messages (diagnostics on stderr, no tracebacks)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from ttc import zoo
from ttc.cli import main
from ttc.ir import parse_module, verify


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.fixture
def mlp_path(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.onnx"
    zoo.save(zoo.mlp(sizes=(64, 32, 10)), path)
    return path


def test_import_prints_ttir(mlp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """On the terminal without locations (MLIR's default), with them under --print-locations; the device
    descriptor once, as the alias #device; both forms parse."""
    code, out, err = run(["import", str(mlp_path)], capsys)
    assert code == 0 and err == ""
    assert '"ttir.gemm"' in out and 'loc(' not in out and '#tt.weight<"fc1.weight">' in out
    assert out.startswith("#device = #tt.device<") and "tt.device = #device" in out and out.count("#tt.device<") == 1
    verify(parse_module(out))
    code, located, err = run(["import", str(mlp_path), "--print-locations"], capsys)
    assert code == 0 and 'loc("/fc1/Gemm")' in located
    module = parse_module(located)
    verify(module)
    assert str(module) == located


def test_import_writes_ir_and_weights(mlp_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_path = tmp_path / "out" / "m.mlir"
    code, out, _ = run(["import", str(mlp_path), "-o", str(out_path)], capsys)
    assert code == 0 and out == ""
    weights = np.load(tmp_path / "out" / "m.weights.npz")
    assert weights["fc1.weight"].shape == (32, 64)
    assert sorted(p.name for p in out_path.parent.iterdir()) == ["m.mlir", "m.weights.npz"]


def test_opt_runs_a_pipeline_with_weights(mlp_path: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    ir_path = tmp_path / "m.mlir"
    assert main(["import", str(mlp_path), "-o", str(ir_path)]) == 0
    code, out, err = run(["opt", str(ir_path), "--pipeline", "decompose,canonicalize", "--print-ir-after",
                          "decompose", "--timing"], capsys)
    assert code == 0
    assert '"ttir.gemm"' not in out and out.count('"ttir.matmul"') == 2
    assert "// -----// IR Dump After Decompose (decompose) //----- //" in err
    assert "Execution time report" in err and "Canonicalize" in err


def test_opt_without_pipeline_parses_verifies_and_prints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = ('module {\n  func.func @main(%arg0: tensor<2xf32>) -> tensor<2xf32> {\n'
            '    %0 = "ttir.relu"(%arg0) : (tensor<2xf32>) -> tensor<2xf32> loc("r")\n'
            '    func.return %0 : tensor<2xf32> loc("ret")\n  }\n}\n')
    path = tmp_path / "a.mlir"
    path.write_text(text)
    code, out, _ = run(["opt", str(path), "--print-locations"], capsys)
    assert code == 0 and out == text
    code, out, _ = run(["opt", str(path)], capsys)
    assert code == 0 and out == text.replace(' loc("r")', "").replace(' loc("ret")', "")


@pytest.mark.parametrize(("text", "message"), [
    ('module {\n  func.func @main() {\n    func.return loc("r")\n  }\n', "a.mlir:4:4: error: unexpected end of input"),
    ('module {\n  func.func @main(%arg0: tensor<2xf32>) -> tensor<2xf32> {\n'
     '    %0 = "ttir.relu"(%arg0) : (tensor<2xf32>) -> tensor<3xf32> loc("r")\n'
     '    func.return %arg0 : tensor<2xf32> loc("ret")\n  }\n}\n',
     "a.mlir:3:5: error: 'ttir.relu' result shape 3 should be 2"),
])
def test_opt_reports_bad_ir_with_line_and_column(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 text: str, message: str) -> None:
    path = tmp_path / "a.mlir"
    path.write_text(text)
    code, out, err = run(["opt", str(path)], capsys)
    assert code == 2 and out == ""
    assert err.startswith(str(tmp_path / message)) or err.startswith(message.replace("a.mlir", str(path)))
    assert "^" in err


def test_malformed_onnx_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"\x08\x07garbage that is not a protobuf \xff\xff")
    code, _, err = run(["import", str(path)], capsys)
    assert code == 2 and str(path) in err and err.startswith("ttc: error:")


def test_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["import", str(tmp_path / "nope.onnx")], capsys)
    assert code == 2 and "nope.onnx" in err


def _external_model(tmp_path: Path, location: str) -> Path:
    model = zoo.mlp(sizes=(64, 32, 10))
    folder = tmp_path / "model"
    folder.mkdir()
    path = folder / "m.onnx"
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin",
                    size_threshold=0)
    if location != "w.bin":
        proto = onnx.load(path, load_external_data=False)
        for tensor in proto.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        onnx.save_model(proto, path)
    return path


def test_missing_external_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _external_model(tmp_path, "w.bin")
    (path.parent / "w.bin").unlink()
    code, _, err = run(["import", str(path)], capsys)
    assert code == 2 and "w.bin" in err


def test_external_data_outside_the_model_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _external_model(tmp_path, "../secret.bin")
    (tmp_path / "secret.bin").write_bytes(b"\0" * 64)
    code, _, err = run(["import", str(path)], capsys)
    assert code == 2 and "../secret.bin" in err and "outside" in err


def test_unsupported_ops_listed_together(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("Det", ["x"], ["a"], name="c1"), helper.make_node("Bernoulli", ["a"], ["b"], name="s1"),
             helper.make_node("Det", ["b"], ["y"], name="c2")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "u.onnx"
    onnx.save(model, path)
    code, _, err = run(["import", str(path)], capsys)
    assert code == 2
    assert "Det (nodes: c1, c2)" in err and "Bernoulli (node: s1)" in err and err.count("error") == 1


def test_dynamic_dims_need_input_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="r")], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "d.onnx"
    onnx.save(model, path)
    code, _, err = run(["import", str(path)], capsys)
    assert code == 2 and "'x'" in err and "'batch'" in err and "--input-shape x=" in err
    code, out, _ = run(["import", str(path), "--input-shape", "x=3x4"], capsys)
    assert code == 0 and "tensor<3x4xf32>" in out
    code, _, err = run(["import", str(path), "--input-shape", "x=3xq"], capsys)
    assert code == 2 and "x=3xq" in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["frobnicate"], capsys)
    assert code == 2 and "invalid choice" in err
    code, _, err = run(["opt", "x.mlir", "--pipeline", "nosuchpass"], capsys)
    assert code == 2


def test_console_script_exit_code_and_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"not onnx")
    result = subprocess.run([sys.executable, "-m", "ttc", "import", str(path)], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "bad.onnx" in result.stderr
