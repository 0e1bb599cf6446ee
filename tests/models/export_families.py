"""Export the model-family test models (issue 16) to ONNX: Hugging Face configs with random weights, and
hand-built torch CNNs (tests/models/families_torch.py, tests/models/cnn_torch.py). No hub access.

Usage: python tests/models/export_families.py [NAME ...] [--cache DIR] [--force] [--list]
       NAME from FAMILIES below (default: all)

Needs the `models` extra (torch 2.13.0 CPU, transformers 5.x, onnxscript): pip install -e '.[models]'.
Every export is torch.onnx.export(..., dynamo=True, opset_version=18, optimize=True) with external data,
its constant folding using ttc's reference overrides (export_folding.py), written to <cache>/families/NAME/
NAME.onnx (cache: --cache, else $TTC_MODEL_CACHE, else ~/.cache/ttc/models); a model already there is reused, and each file records the spec it was built from
(metadata_props "ttc.families.spec"), so a spec change is never served a stale file.

Each family has a full-size configuration (the published architecture, or for the "-style" decoders a
small but complete configuration) and a "-mini" variant of reduced depth (1 block per stage) at the same
width and input size, for fast tests. Tenstorrent's published e150 configurations are resnet50-b20
(ResNet-50, batch 20), bert-large-b12-s384 and vit-base-b8.

Determinism: torch's global seed is set before each model is built, then every parameter is redrawn or
perturbed from its own seeded generator (see `perturb` and cnn_torch.initialise), and the example inputs
are seeded, so the same spec gives the same weights. The perturbation matters: HF's default initialisation
leaves some models degenerate (EfficientNet-B0's logits are exactly zero at init, ConvNeXt's layer scale of
1e-6 makes every block an identity), and a golden check of a constant output passes vacuously.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

OPSET = 18
SPEC_KEY = "ttc.families.spec"
SEQ = 128  # the decoders' and T5's sequence length


@dataclass(frozen=True)
class Family:
    kind: str  # which builder
    depth: tuple[int, ...] = ()  # layers (transformers) or blocks per stage (CNNs)
    batch: int = 1
    seq: int = SEQ
    options: dict = field(default_factory=dict)  # builder-specific (width, window, ...)
    slow: bool = False  # full size: opt-in tests only

    def fingerprint(self) -> str:
        return json.dumps({"version": 1, **asdict(self)}, sort_keys=True)


# The classifier head of the deployed checkpoints (google/vit-base-patch16-224, facebook/deit-small-patch16-224,
# facebook/convnext-tiny-224: 1000 ImageNet classes) instead of HF's default config (num_labels=2). Two logits
# make the golden rule's relative L2 error a statistic of two numbers, which bf16 noise through 12 layers tips
# either way (DeiT-small's 2 logits: rel L2 0.054 in bf16, 0.047 with bounded f16; ViT-base's 0.021 and 0.031
# while its hidden state improves from 0.018 to 0.014).
IMAGENET_HEAD = {"num_labels": 1000}

FAMILIES: dict[str, Family] = {
    # vision transformers
    "vit-base": Family("vit", (12,), slow=True, options=IMAGENET_HEAD),
    "vit-base-mini": Family("vit", (1,), options=IMAGENET_HEAD),
    "deit-small": Family("deit", (12,), slow=True, options=IMAGENET_HEAD),
    "deit-small-mini": Family("deit", (1,), options=IMAGENET_HEAD),
    "swin-tiny": Family("swin", (2, 2, 6, 2), slow=True),
    "swin-tiny-mini": Family("swin", (1, 1)),
    # CNNs
    "convnext-tiny": Family("convnext", (3, 3, 9, 3), slow=True, options=IMAGENET_HEAD),
    "convnext-tiny-mini": Family("convnext", (1, 1, 1, 1), options=IMAGENET_HEAD),
    "efficientnet-b0": Family("efficientnet", (1, 2, 2, 3, 3, 4, 1), slow=True),
    "efficientnet-b0-mini": Family("efficientnet", (1, 1, 1)),
    "yolo": Family("yolo", (1, 2, 2, 1), slow=True),
    "yolo-mini": Family("yolo", (1, 1, 1, 1)),
    "dbnet": Family("dbnet", tuple(range(11)), slow=True),
    "dbnet-mini": Family("dbnet", (0, 1, 3, 8)),  # one block per stage
    "crnn": Family("crnn", (32, 64, 128, 128, 256, 256), slow=True),
    "crnn-mini": Family("crnn", (32, 64, 128, 128)),
    # speech and sequence-to-sequence
    "whisper-tiny-encoder": Family("whisper", (4,), slow=True),
    "whisper-tiny-encoder-mini": Family("whisper", (1,)),
    "t5-small-encoder": Family("t5-encoder", (6,), slow=True),
    "t5-small-encoder-mini": Family("t5-encoder", (1,)),
    "t5-small-decoder": Family("t5-decoder", (6,), slow=True),
    "t5-small-decoder-mini": Family("t5-decoder", (1,)),
    # decoders: GQA, RoPE, RMSNorm, SwiGLU; Mistral's sliding window (64) is shorter than the sequence (128)
    "mistral": Family("mistral", (4,), slow=True),
    "mistral-mini": Family("mistral", (1,)),
    "qwen2": Family("qwen2", (4,), slow=True),
    "qwen2-mini": Family("qwen2", (1,)),
    # Tenstorrent's published e150 configurations
    "resnet50-b20": Family("resnet50", (3, 4, 6, 3), batch=20, slow=True),
    "bert-large-b12-s384": Family("bert", (24,), batch=12, seq=384, slow=True),
    "vit-base-b8": Family("vit", (12,), batch=8, slow=True, options=IMAGENET_HEAD),
}
MINI = tuple(name for name, spec in FAMILIES.items() if name.endswith("-mini"))
SLIDING_WINDOW = 64


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    if override:
        return Path(override)
    env = os.environ.get("TTC_MODEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "ttc" / "models"


def model_path(name: str, cache: str | os.PathLike[str] | None = None) -> Path:
    return cache_dir(cache) / "families" / name / f"{name}.onnx"


# ------------------------------------------------------------------------------------------- weights


def perturb(model, seed: int, std: float = 0.02) -> None:
    """Add seeded N(0, std) noise to every parameter: zero biases, unit norm scales and tiny layer scales
    become distinct values (the exporter otherwise merges equal initializers and hides bias/scale bugs)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(std * torch.randn(param.shape, generator=generator))


def he_init(model, seed: int) -> None:
    """cnn_torch.initialise's recipe for the HF CNNs (He-normal convs and linears, perturbed batch norms)
    plus LayerNorm scales ~1 and biases ~0 with noise; ConvNeXt's layer scale stays small but not 1e-6."""
    import cnn_torch
    import torch

    cnn_torch.initialise(model, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("layer_scale_parameter"):
                param.copy_(0.1 + 0.05 * torch.randn(param.shape, generator=generator))
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm) and module.weight is not None:
                module.weight.copy_(1.0 + 0.1 * torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))


# ------------------------------------------------------------------------------------------- builders


def _vision(model, hidden_of, outputs=("hidden", "logits")):
    import torch

    class Vision(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            out = self.model(pixel_values=pixel_values, output_hidden_states=True)
            return hidden_of(out), out.logits

    return Vision().eval(), list(outputs)


def build(name: str, spec: Family):
    """(module, example args, input names, output names) of family `name`, weights seeded."""
    import torch
    import transformers

    torch.manual_seed(0)
    image = torch.randn((spec.batch, 3, 224, 224), generator=torch.Generator().manual_seed(0))
    kind = spec.kind
    if kind == "vit":
        config = transformers.ViTConfig(num_hidden_layers=spec.depth[0], attn_implementation="eager",
                                        num_labels=spec.options.get("num_labels", 2))
        model = transformers.ViTForImageClassification(config)
        perturb(model, 1)
        module, outs = _vision(model, lambda o: o.hidden_states[-1])
        return module, (image,), ["pixel_values"], outs
    if kind == "deit":
        config = transformers.DeiTConfig(num_hidden_layers=spec.depth[0], hidden_size=384, num_attention_heads=6,
                                         intermediate_size=1536, attn_implementation="eager",
                                         num_labels=spec.options.get("num_labels", 2))
        model = transformers.DeiTForImageClassificationWithTeacher(config)  # CLS + distillation tokens
        perturb(model, 1)
        module, outs = _vision(model, lambda o: o.hidden_states[-1])
        return module, (image,), ["pixel_values"], outs
    if kind == "swin":
        stages = len(spec.depth)
        config = transformers.SwinConfig(image_size=224, patch_size=4, embed_dim=96, depths=list(spec.depth),
                                         num_heads=[3, 6, 12, 24][:stages], window_size=7,
                                         attn_implementation="eager")
        model = transformers.SwinForImageClassification(config)
        perturb(model, 1)
        module, outs = _vision(model, lambda o: o.last_hidden_state if hasattr(o, "last_hidden_state")
                               else o.hidden_states[-1])
        return module, (image,), ["pixel_values"], outs
    if kind == "convnext":
        config = transformers.ConvNextConfig(depths=list(spec.depth), hidden_sizes=[96, 192, 384, 768],
                                             num_labels=spec.options.get("num_labels", 2))
        model = transformers.ConvNextForImageClassification(config)
        he_init(model, 1)
        perturb(model, 2)
        module, outs = _vision(model, lambda o: o.hidden_states[-1])
        return module, (image,), ["pixel_values"], outs
    if kind == "efficientnet":
        stages = len(spec.depth)
        base = transformers.EfficientNetConfig()
        config = transformers.EfficientNetConfig(
            width_coefficient=1.0, depth_coefficient=1.0, image_size=224, hidden_dim=1280,
            kernel_sizes=list(base.kernel_sizes[:stages]), in_channels=list(base.in_channels[:stages]),
            out_channels=list(base.out_channels[:stages]), strides=list(base.strides[:stages]),
            num_block_repeats=list(spec.depth), expand_ratios=list(base.expand_ratios[:stages]))
        model = transformers.EfficientNetForImageClassification(config)
        he_init(model, 1)
        perturb(model, 2)
        module, outs = _vision(model, lambda o: o.hidden_states[-1])
        return module, (image,), ["pixel_values"], outs
    if kind in ("yolo", "dbnet", "crnn", "resnet50"):
        return _build_cnn(spec)
    if kind == "whisper":
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        config = transformers.WhisperConfig(d_model=384, encoder_layers=spec.depth[0], encoder_attention_heads=6,
                                            encoder_ffn_dim=1536, num_mel_bins=80, max_source_positions=1500,
                                            attn_implementation="eager")
        model = WhisperEncoder(config)
        perturb(model, 1)
        features = torch.randn((spec.batch, 80, 3000), generator=torch.Generator().manual_seed(0))

        class Encoder(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, input_features):
                return self.model(input_features=input_features).last_hidden_state

        return Encoder().eval(), (features,), ["input_features"], ["last_hidden_state"]
    if kind in ("t5-encoder", "t5-decoder"):
        config = transformers.T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_heads=8,
                                       num_layers=spec.depth[0], num_decoder_layers=spec.depth[0],
                                       feed_forward_proj="relu", use_cache=False, attn_implementation="eager")
        ids = torch.randint(0, config.vocab_size, (spec.batch, spec.seq),
                            generator=torch.Generator().manual_seed(0))
        if kind == "t5-encoder":
            model = transformers.T5EncoderModel(config)
            perturb(model, 1)

            class T5Encoder(torch.nn.Module):
                def __init__(self) -> None:
                    super().__init__()
                    self.model = model

                def forward(self, input_ids):
                    return self.model(input_ids=input_ids).last_hidden_state

            return T5Encoder().eval(), (ids,), ["input_ids"], ["last_hidden_state"]
        model = transformers.T5ForConditionalGeneration(config)
        perturb(model, 1)
        hidden = torch.randn((spec.batch, spec.seq, 512), generator=torch.Generator().manual_seed(1))

        class T5Decoder(torch.nn.Module):
            """The decoder stack and LM head without a cache: causal self-attention with relative position
            buckets, cross-attention to given encoder states."""

            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, decoder_input_ids, encoder_hidden_states):
                return self.model(encoder_outputs=(encoder_hidden_states,), decoder_input_ids=decoder_input_ids,
                                  use_cache=False).logits

        return T5Decoder().eval(), (ids, hidden), ["decoder_input_ids", "encoder_hidden_states"], ["logits"]
    if kind in ("mistral", "qwen2"):
        common = dict(vocab_size=32000, hidden_size=512, intermediate_size=1536, num_hidden_layers=spec.depth[0],
                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4 * spec.seq,
                      tie_word_embeddings=False, use_cache=False, attn_implementation="eager")
        if kind == "mistral":
            config = transformers.MistralConfig(sliding_window=SLIDING_WINDOW, **common)
            model = transformers.MistralForCausalLM(config)
        else:
            config = transformers.Qwen2Config(use_sliding_window=False, **common)
            model = transformers.Qwen2ForCausalLM(config)
        perturb(model, 1)
        ids = torch.randint(0, 32000, (spec.batch, spec.seq), generator=torch.Generator().manual_seed(0))

        class Logits(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, input_ids):
                return self.model(input_ids=input_ids, use_cache=False).logits

        wrapper = Logits().eval()
        if kind == "mistral":
            _check_window_matters(wrapper, ids)
        return wrapper, (ids,), ["input_ids"], ["logits"]
    if kind == "bert":
        config = transformers.BertConfig(num_hidden_layers=spec.depth[0], hidden_size=1024, num_attention_heads=16,
                                         intermediate_size=4096, vocab_size=30522, max_position_embeddings=512,
                                         attn_implementation="eager")
        model = transformers.BertModel(config, add_pooling_layer=False)
        perturb(model, 1)

        class Hidden(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, input_ids, attention_mask):
                return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

        ids = torch.randint(0, 30522, (spec.batch, spec.seq), generator=torch.Generator().manual_seed(0))
        mask = torch.ones((spec.batch, spec.seq), dtype=torch.int64)
        return Hidden().eval(), (ids, mask), ["input_ids", "attention_mask"], ["last_hidden_state"]
    raise ValueError(f"unknown family kind '{kind}'")


def _check_window_matters(wrapper, ids) -> None:
    """Mistral's sliding window must change the output at this sequence length (else the test model would
    not exercise it): the last position's logits differ from full causal attention's."""
    import torch

    config = wrapper.model.config
    with torch.no_grad():
        windowed = wrapper(ids)
        config.sliding_window = None
        try:
            full = wrapper(ids)
        finally:
            config.sliding_window = SLIDING_WINDOW
    if torch.allclose(windowed[:, -1], full[:, -1], atol=1e-4):
        raise AssertionError("mistral: the sliding window does not change the logits")
    if not torch.allclose(windowed[:, :SLIDING_WINDOW], full[:, :SLIDING_WINDOW], atol=1e-4):
        raise AssertionError("mistral: positions inside the window differ from full causal attention")


def _build_cnn(spec: Family):
    import cnn_torch
    import families_torch
    import torch

    kind = spec.kind
    if kind == "resnet50":
        network = cnn_torch.ResNet50(stages=spec.depth)
        cnn_torch.initialise(network, 0, residual_branch_scale=0.2)  # as tests/models/cnn_models.py
        image = torch.randn((spec.batch, 3, 224, 224), generator=torch.Generator().manual_seed(0))
        return network, (image,), ["input"], ["logits"]
    if kind == "yolo":
        network = families_torch.YoloStyle(depths=spec.depth)
        cnn_torch.initialise(network, 1)
        image = torch.randn((spec.batch, 3, 640, 640), generator=torch.Generator().manual_seed(0))
        return network, (image,), ["image"], ["boxes"]
    if kind == "dbnet":
        network = families_torch.DbNetStyle(blocks=spec.depth)
        cnn_torch.initialise(network, 1)
        image = torch.randn((spec.batch, 3, 640, 640), generator=torch.Generator().manual_seed(0))
        return network, (image,), ["image"], ["probability"]
    network = families_torch.CrnnStyle(widths=spec.depth)
    cnn_torch.initialise(network, 1)
    families_torch.init_recurrent(network, 2)
    image = torch.randn((spec.batch, 3, 48, 320), generator=torch.Generator().manual_seed(0))
    return network, (image,), ["image"], ["probabilities"]


# ------------------------------------------------------------------------------------------- export


def _recorded_spec(path: Path) -> str | None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((p.value for p in model.metadata_props if p.key == SPEC_KEY), None)


def export(name: str, cache: str | os.PathLike[str] | None = None, force: bool = False) -> Path:
    """Export family `name` into the cache, unless a file built from the same spec is there; atomically (a
    half-written export never looks finished)."""
    if name not in FAMILIES:
        raise ValueError(f"unknown family model '{name}'; expected one of {', '.join(FAMILIES)}")
    spec = FAMILIES[name]
    path = model_path(name, cache)
    if path.exists() and not force and _recorded_spec(path) == spec.fingerprint():
        return path
    import onnx
    import torch
    from export_folding import exact_folding

    module, args, input_names, output_names = build(name, spec)
    module.eval()
    partial = path.parent.with_name(f"{path.parent.name}.{os.getpid()}.partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    with torch.no_grad(), warnings.catch_warnings(), exact_folding():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, args, dynamo=True, opset_version=OPSET, input_names=input_names,
                                    output_names=output_names, external_data=True, optimize=True,
                                    verbose=False)
    program.save(str(partial / path.name), external_data=True)
    proto = onnx.load(str(partial / path.name), load_external_data=False)
    entry = proto.metadata_props.add()
    entry.key, entry.value = SPEC_KEY, spec.fingerprint()
    onnx.save(proto, str(partial / path.name))  # the graph only: the weights stay in the .data file
    if path.parent.exists():
        shutil.rmtree(path.parent)
    partial.rename(path.parent)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help="family models (default: all)")
    parser.add_argument("--cache", help="cache folder (default $TTC_MODEL_CACHE or ~/.cache/ttc/models)")
    parser.add_argument("--force", action="store_true", help="export again even if the model exists")
    parser.add_argument("--list", action="store_true", help="print the family models and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, spec in FAMILIES.items():
            print(f"{name:28} {spec.kind:12} depth={list(spec.depth)} batch={spec.batch}")
        return 0
    unknown = [name for name in args.names if name not in FAMILIES]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; expected any of {', '.join(FAMILIES)}")
    for name in args.names or FAMILIES:
        print(export(name, args.cache, args.force), flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
