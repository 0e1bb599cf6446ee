"""Export GPT-2-class causal LMs for `ttc generate`, in both forms it accepts (random weights, no hub access).

Usage: python tests/models/export_gen.py [NAME ...] [--cache DIR] [--force]

Every model is written twice into the model cache ($TTC_MODEL_CACHE or ~/.cache/ttc/models):

- `NAME-kv`: the cached form (batch, sequence and past lengths dynamic). Inputs `input_ids` [batch, seq], `position_ids` [batch, seq],
  `attention_mask` [batch, past + seq] (1 = a real token, 0 = masked) and, per layer N,
  `past_key_values.N.key` / `past_key_values.N.value` [batch, heads, past, head_dim]; outputs `logits`
  [batch, seq, vocab] and `present.N.key` / `present.N.value` [batch, heads, past + seq, head_dim], the past
  with this call's keys and values appended.
- `NAME-full`: the uncached form, one input `input_ids` [1, SEQ] at a fixed length and one output `logits`,
  causal attention only (a generator pads the tail and reads the logits of the last real token).

Hugging Face's GPT-2 keeps its cache in a `DynamicCache` object that torch.export does not trace, so the
wrapper below runs the Hugging Face model's own modules (embeddings, layer norms, attention and MLP
projections, LM head) but does the attention itself with explicit per-layer key/value tensors. Both forms
share the weights, so their logits agree.

Weights: GPT-2's default initialisation (std 0.02) gives near-tied logits, so greedy decoding flips on
rounding noise; and with the LM head tied to the token embeddings a random model mostly repeats its last
token. So the LM head is untied and scaled up (top logits well apart, a varied greedy sequence); every
parameter gets a seeded nudge as in export_hf.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from export_hf import cache_dir

OPSET = 18
FULL_SEQ = 64  # the uncached form's fixed length (prompt + generated tokens)


@dataclass(frozen=True)
class GenSpec:
    layers: int
    hidden: int
    heads: int
    vocab: int
    positions: int
    full_seq: int = FULL_SEQ
    logit_scale: float = 6.0  # the (untied) LM head times this


SPECS = {
    "gen-gpt2-tiny": GenSpec(layers=2, hidden=64, heads=2, vocab=64, positions=128, logit_scale=7.0),
    "gen-gpt2-small": GenSpec(layers=12, hidden=768, heads=12, vocab=50257, positions=1024, full_seq=128,
                              logit_scale=2.0),
}


def model_path(name: str, form: str, cache: str | os.PathLike[str] | None = None) -> Path:
    """The cached file of `name` in `form` ("kv" or "full")."""
    full = f"{name}-{form}"
    return cache_dir(cache) / full / f"{full}.onnx"


def _hf_model(spec: GenSpec):
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=spec.layers, n_embd=spec.hidden, n_head=spec.heads,
                                     vocab_size=spec.vocab, n_positions=spec.positions, use_cache=False,
                                     bos_token_id=0, eos_token_id=0, tie_word_embeddings=False,
                                     attn_implementation="eager")
    model = transformers.GPT2LMHeadModel(config).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.02 * torch.randn(param.shape, generator=generator))
        model.lm_head.weight.mul_(spec.logit_scale)  # logits spread out
    return model


class KVDecoder:
    """Builds the torch module of both forms over one Hugging Face GPT-2."""

    def __init__(self, spec: GenSpec) -> None:
        self.spec = spec
        self.model = _hf_model(spec)

    def _attend(self, block, x, past_k, past_v, bias):
        import torch

        spec = self.spec
        heads, hd = spec.heads, spec.hidden // spec.heads
        batch, seq, _ = x.shape
        qkv = block.attn.c_attn(block.ln_1(x))
        q, k, v = qkv.split(spec.hidden, dim=2)
        q = q.view(batch, seq, heads, hd).transpose(1, 2)
        k = k.view(batch, seq, heads, hd).transpose(1, 2)
        v = v.view(batch, seq, heads, hd).transpose(1, 2)
        if past_k is not None:
            k = torch.cat([past_k, k], dim=2)
            v = torch.cat([past_v, v], dim=2)
        scores = torch.matmul(q, k.transpose(-1, -2)) * (hd ** -0.5) + bias
        context = torch.matmul(torch.softmax(scores, dim=-1), v)
        context = context.transpose(1, 2).reshape(batch, seq, spec.hidden)
        x = x + block.attn.c_proj(context)
        x = x + block.mlp(block.ln_2(x))
        return x, k, v

    def kv_module(self):
        import torch

        outer = self

        class Cached(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = outer.model

            def forward(self, input_ids, position_ids, attention_mask, *past):
                transformer = self.model.transformer
                seq = input_ids.shape[1]
                total = attention_mask.shape[1]
                x = transformer.wte(input_ids) + transformer.wpe(position_ids)
                # Query i (absolute slot total - seq + i) sees key j when j <= that slot and the mask allows j.
                query = torch.arange(seq).unsqueeze(1) + (total - seq)
                key = torch.arange(total).unsqueeze(0)
                allowed = (key <= query).unsqueeze(0).unsqueeze(0) & (attention_mask[:, None, None, :] > 0)
                bias = torch.where(allowed, 0.0, -1e4)
                presents = []
                for n, block in enumerate(transformer.h):
                    x, k, v = outer._attend(block, x, past[2 * n], past[2 * n + 1], bias)
                    presents += [k, v]
                return (self.model.lm_head(transformer.ln_f(x)), *presents)

        return Cached().eval()

    def full_module(self):
        import torch

        outer = self

        class Full(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = outer.model

            def forward(self, input_ids):
                transformer = self.model.transformer
                seq = input_ids.shape[1]
                positions = torch.arange(seq).unsqueeze(0)
                x = transformer.wte(input_ids) + transformer.wpe(positions)
                causal = torch.arange(seq).unsqueeze(0) <= torch.arange(seq).unsqueeze(1)
                bias = torch.where(causal, 0.0, -1e4)
                for block in transformer.h:
                    x, _, _ = outer._attend(block, x, None, None, bias)
                return self.model.lm_head(transformer.ln_f(x))

        return Full().eval()


def _kv_names(layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{n}.{kind}" for n in range(layers) for kind in ("key", "value")]
    present = [f"present.{n}.{kind}" for n in range(layers) for kind in ("key", "value")]
    return past, present


def _save(program, path: Path) -> None:
    """Write an export atomically: a half-written model never looks finished."""
    import shutil

    partial = path.parent.with_name(path.parent.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    program.save(str(partial / path.name), external_data=True)
    if path.parent.exists():
        shutil.rmtree(path.parent)
    partial.rename(path.parent)


def export(name: str, cache: str | os.PathLike[str] | None = None, force: bool = False) -> tuple[Path, Path]:
    """Export both forms of `name`; returns (kv path, full path)."""
    import torch

    kv_path, full_path = model_path(name, "kv", cache), model_path(name, "full", cache)
    if kv_path.exists() and full_path.exists() and not force:
        return kv_path, full_path
    spec = SPECS[name]
    decoder = KVDecoder(spec)
    heads, hd = spec.heads, spec.hidden // spec.heads
    past_names, present_names = _kv_names(spec.layers)
    batch, seq, past = 2, 3, 5  # batch 2: a sample of 1 would fix the batch dim to 1
    ids = torch.randint(0, spec.vocab, (batch, seq), dtype=torch.int64)
    positions = torch.arange(past, past + seq).unsqueeze(0).expand(batch, seq)
    mask = torch.ones((batch, past + seq), dtype=torch.int64)
    cache_kv = [torch.randn(batch, heads, past, hd) for _ in past_names]
    auto = torch.export.Dim.AUTO  # the exporter relates the lengths itself (mask = past + seq)
    shapes = {"input_ids": {0: auto, 1: auto}, "position_ids": {0: auto, 1: auto},
              "attention_mask": {0: auto, 1: auto}, "past": tuple({0: auto, 2: auto} for _ in past_names)}
    with torch.no_grad():
        program = torch.onnx.export(decoder.kv_module(), (ids, positions, mask, *cache_kv), dynamo=True,
                                    opset_version=OPSET, dynamic_shapes=shapes,
                                    input_names=["input_ids", "position_ids", "attention_mask", *past_names],
                                    output_names=["logits", *present_names], external_data=True, optimize=True)
    _save(program, kv_path)
    full_ids = torch.randint(0, spec.vocab, (1, spec.full_seq), dtype=torch.int64)
    with torch.no_grad():
        program = torch.onnx.export(decoder.full_module(), (full_ids,), dynamo=True, opset_version=OPSET,
                                    input_names=["input_ids"], output_names=["logits"], external_data=True,
                                    optimize=True)
    _save(program, full_path)
    return kv_path, full_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help=f"models to export (default gen-gpt2-tiny; known: {', '.join(SPECS)})")
    parser.add_argument("--cache", help="output folder (default $TTC_MODEL_CACHE or ~/.cache/ttc/models)")
    parser.add_argument("--force", action="store_true", help="export again even if the model exists")
    args = parser.parse_args(argv)
    for name in args.names or ["gen-gpt2-tiny"]:
        if name not in SPECS:
            parser.error(f"unknown model {name!r} (known: {', '.join(SPECS)})")
        for path in export(name, args.cache, args.force):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
