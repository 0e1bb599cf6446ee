"""Export the Hugging Face transformer test models to ONNX, from configs with random weights (no hub access).

Usage: python tests/models/export_hf.py [NAME ...] [--cache DIR] [--force]
       NAME in gpt2, bert, gpt2-tiny, bert-tiny (default: all)

Needs the `models` extra (torch 2.13.0 CPU, transformers, onnxscript): pip install -e '.[models]'.
Models are written to the cache folder (default $TTC_MODEL_CACHE or ~/.cache/ttc/models), never into git;
a model already there is reused. Each export is torch.onnx.export(..., dynamo=True) at opset 18 with a
fixed sequence length of 128 and batch 1, and returns one output: the logits (GPT-2) or the last hidden
state (BERT).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

SEQ = 128
OPSET = 18


@dataclass(frozen=True)
class Spec:
    family: str  # "gpt2" or "bert"
    layers: int
    hidden: int
    heads: int
    vocab: int


SPECS = {
    "gpt2": Spec("gpt2", layers=12, hidden=768, heads=12, vocab=50257),
    "bert": Spec("bert", layers=12, hidden=768, heads=12, vocab=30522),
    "gpt2-tiny": Spec("gpt2", layers=2, hidden=128, heads=2, vocab=1000),
    "bert-tiny": Spec("bert", layers=2, hidden=128, heads=2, vocab=1000),
}


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    if override:
        return Path(override)
    env = os.environ.get("TTC_MODEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "ttc" / "models"


def model_path(name: str, cache: str | os.PathLike[str] | None = None) -> Path:
    return cache_dir(cache) / name / f"{name}.onnx"


def _perturb(model) -> None:
    """Fresh configs start with zero biases and unit LayerNorm scales, which the exporter's optimizer then
    merges into one shared initializer and which hide bias/scale bugs; nudge every parameter."""
    import torch

    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.02 * torch.randn(param.shape, generator=generator))


def _build(spec: Spec):
    import torch
    import transformers

    torch.manual_seed(0)
    if spec.family == "gpt2":
        config = transformers.GPT2Config(n_layer=spec.layers, n_embd=spec.hidden, n_head=spec.heads,
                                         vocab_size=spec.vocab, n_positions=max(SEQ, 1024), use_cache=False,
                                         attn_implementation="eager")
        model = transformers.GPT2LMHeadModel(config)
        _perturb(model)

        class Logits(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, input_ids):
                return self.model(input_ids=input_ids, use_cache=False).logits

        wrapper = Logits()
        ids = torch.randint(0, spec.vocab, (1, SEQ), dtype=torch.int64)
        return wrapper.eval(), (ids,), ["input_ids"], ["logits"]

    config = transformers.BertConfig(num_hidden_layers=spec.layers, hidden_size=spec.hidden,
                                     num_attention_heads=spec.heads, intermediate_size=4 * spec.hidden,
                                     vocab_size=spec.vocab, max_position_embeddings=512,
                                     attn_implementation="eager")
    model = transformers.BertModel(config, add_pooling_layer=False)
    _perturb(model)

    class Hidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    wrapper = Hidden()
    ids = torch.randint(0, spec.vocab, (1, SEQ), dtype=torch.int64)
    mask = torch.ones((1, SEQ), dtype=torch.int64)
    return wrapper.eval(), (ids, mask), ["input_ids", "attention_mask"], ["last_hidden_state"]


def export(name: str, cache: str | os.PathLike[str] | None = None, force: bool = False) -> Path:
    """Export model `name` into the cache (atomically: a half-written export never looks finished)."""
    import torch
    from export_folding import exact_folding

    path = model_path(name, cache)
    if path.exists() and not force:
        return path
    module, args, input_names, output_names = _build(SPECS[name])
    partial = path.parent.with_name(path.parent.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), exact_folding():
        program = torch.onnx.export(module, args, dynamo=True, opset_version=OPSET, input_names=input_names,
                                    output_names=output_names, external_data=True, optimize=True)
    program.save(str(partial / path.name), external_data=True)
    if path.parent.exists():
        import shutil

        shutil.rmtree(path.parent)
    partial.rename(path.parent)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", choices=[*SPECS, []], default=list(SPECS))
    parser.add_argument("--cache", help="output folder (default $TTC_MODEL_CACHE or ~/.cache/ttc/models)")
    parser.add_argument("--force", action="store_true", help="export again even if the model exists")
    args = parser.parse_args(argv)
    for name in args.names or SPECS:
        print(export(name, args.cache, args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
