"""Print and parse speed of the IR text format on transformer-sized modules (ttir after import).

Usage: python benchmarks/bench_ir_text.py
Prints a table: module, ops, text size, print time, parse time, parse + verify time (best of 3).
"""

from __future__ import annotations

import time

from ttc import zoo
from ttc.frontend import import_model
from ttc.ir import parse_module, print_module, verify

CONFIGS = {
    "encoder 1 layer, h256": {"layers": 1, "hidden": 256, "heads": 4, "ffn": 1024},
    "BERT-base size, 12 layers, h768": {"layers": 12, "hidden": 768, "heads": 12, "ffn": 3072},
}


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    print(f"{'module':36} {'ops':>6} {'KiB':>7} {'print s':>8} {'parse s':>8} {'parse+verify s':>15}")
    for name, config in CONFIGS.items():
        module = import_model(zoo.encoder_block(seq=128, **config))
        ops = sum(1 for _ in module.walk())
        text = print_module(module)
        t_print = best_of(3, lambda m=module: print_module(m))
        t_parse = best_of(3, lambda t=text: parse_module(t))
        t_both = best_of(3, lambda t=text: verify(parse_module(t)))
        print(f"{name:36} {ops:6d} {len(text) / 1024:7.1f} {t_print:8.3f} {t_parse:8.3f} {t_both:15.3f}")


if __name__ == "__main__":
    main()
