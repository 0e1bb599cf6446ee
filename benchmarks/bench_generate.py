"""`ttc generate` throughput: a GPT-2-class model exported both ways (tests/models/export_gen.py), greedy.

Usage: python benchmarks/bench_generate.py [NAME] [--prompt N] [--new N] [--modes device,host,uncached]
       NAME: gen-gpt2-small (default) or gen-gpt2-tiny

Needs the `models` extra for the export (random weights, cached like the other exports). Per mode: compiles,
compile seconds, and for the prefill and the decode steps the emulated tokens/s (wall time of the runs on this
host, after a 2-token warm-up generation has compiled the programs and written their weights to the emulated
DRAM; also from the median decode step) and the modelled e150 tokens/s (the cost model's device time of the programs each
step runs), plus the bytes a decode step moves to and from the device. The emulated figures depend on the host
and its load; the modelled ones do not. Modes: `device` (cached, the cache in device DRAM),
`host` (cached, the cache forced onto the host: the fallback path) and `uncached` (the fixed-length export,
the whole sequence rerun per token).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "models"))
from export_gen import export

from ttc.generation import Generator


def run(path: Path, mode: str, prompt: list[int], new: int) -> dict[str, object]:
    max_length = len(prompt) + new
    generator = Generator(path, max_length=max_length if mode != "uncached" else None,
                          default_length=max_length)
    if mode == "host":
        generator.cache = "host"
    start = time.perf_counter()
    warm = generator.generate(prompt, 2)  # compiles, and the first runs' one-time costs (weights into DRAM)
    total = time.perf_counter() - start
    run_wall = sum(s.wall_s for s in warm.steps)
    result = generator.generate(prompt, new)
    (pe, pd), (de, dd) = result.prefill_tokens_per_s, result.decode_tokens_per_s
    decode = [s for s in result.steps if s.kind == "decode"]
    return {"mode": mode, "tokens": len(result.tokens), "compiles": result.compiles,
            "compile_s": total - run_wall, "prefill_emulated": pe, "prefill_modelled": pd,
            "decode_emulated": de, "decode_modelled": dd,
            "decode_median": 1 / statistics.median(s.wall_s for s in decode) if decode else float("nan"),
            "decode_up_bytes": decode[0].to_device_bytes if decode else 0,
            "decode_down_bytes": decode[0].to_host_bytes if decode else 0, "first": result.tokens[:8]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("name", nargs="?", default="gen-gpt2-small")
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    parser.add_argument("--new", type=int, default=64, help="new tokens")
    parser.add_argument("--modes", default="device,host,uncached")
    args = parser.parse_args()
    kv_path, full_path = export(args.name)
    prompt = [(7 * i + 3) % 500 for i in range(args.prompt)]
    print(f"{args.name}: prompt {args.prompt} tokens, {args.new} new tokens, greedy, e150, bf16 hifi4")
    header = (f"{'mode':10}{'compiles':>9}{'compile s':>10}{'prefill emu':>12}{'prefill model':>14}"
              f"{'decode emu':>11}{'(median)':>9}{'decode model':>13}{'step up B':>11}{'step down B':>12}")
    print(header)
    results = []
    for mode in args.modes.split(","):
        r = run(full_path if mode == "uncached" else kv_path, mode, prompt, args.new)
        results.append(r)
        print(f"{mode:10}{r['compiles']:>9}{r['compile_s']:>10.1f}{r['prefill_emulated']:>12.1f}"
              f"{r['prefill_modelled']:>14.1f}{r['decode_emulated']:>11.2f}{r['decode_median']:>9.2f}"
              f"{r['decode_modelled']:>13.1f}"
              f"{r['decode_up_bytes']:>11}{r['decode_down_bytes']:>12}", flush=True)
    firsts = {r["mode"]: r["first"] for r in results}
    print("first tokens:", firsts)


if __name__ == "__main__":
    main()
