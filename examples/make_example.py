"""Write examples/mlp.onnx: a small MLP (784 -> 128 -> 10, batch 1) from the ttc model zoo.

Run from anywhere: ``python examples/make_example.py``. The output is deterministic (seed 0).
"""

from pathlib import Path

from ttc import zoo

OUT = Path(__file__).resolve().parent / "mlp.onnx"


def main() -> None:
    zoo.save(zoo.mlp(batch=1, sizes=(784, 128, 10)), OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
