"""`ttc generate` / `ttc.generate`: a tiny random GPT-2 exported with and without cache inputs
(export_gen.py), its greedy tokens against onnxruntime's, sampling, compile counts, device memory, the fit
check with the KV cache (decoder_shapes.py), the tokenizer path and the CLI's errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import ttc
from ttc.cli import main
from ttc.generation import (
    Generator,
    Sampling,
    kv_cache_bytes,
    lm_interface,
    parse_ids,
    parse_kv_names,
    sample,
    top2_gap,
)
from ttc.ir.diagnostics import UserError

NEAR_TIE = 0.05  # a step whose top-2 logit gap is below this ends a token-by-token comparison
PROMPTS = ([40, 32, 17, 19, 2, 4], [11], [34, 35, 59, 17, 52])


@pytest.fixture(scope="module")
def gen_models() -> tuple[Path, Path]:
    pytest.importorskip("torch", reason="exporting the test models needs the `models` extra")
    import export_gen

    return export_gen.export("gen-gpt2-tiny")


def _ort_greedy(full_path: Path, prompt: list[int], count: int) -> tuple[list[int], list[float]]:
    """onnxruntime's greedy decode of the uncached form in float32, and every step's top-2 gap."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(full_path))
    length = session.get_inputs()[0].shape[1]
    ids = np.zeros((1, length), np.int64)
    ids[0, : len(prompt)] = prompt
    tokens, gaps = [], []
    for filled in range(len(prompt), len(prompt) + count):
        logits = session.run(None, {"input_ids": ids})[0][0, filled - 1]
        tokens.append(int(np.argmax(logits)))
        gaps.append(top2_gap(logits))
        ids[0, filled] = tokens[-1]
    return tokens, gaps


def _compared(gaps: list[float], count: int) -> int:
    """Tokens compared: up to (and not including) the first near-tied step."""
    return next((i for i, gap in enumerate(gaps[:count]) if gap < NEAR_TIE), count)


@pytest.mark.parametrize("prompt", PROMPTS, ids=lambda p: f"prompt{len(p)}")
def test_greedy_matches_onnxruntime_in_both_modes(gen_models, prompt):
    kv_path, full_path = gen_models
    reference, gaps = _ort_greedy(full_path, prompt, 16)
    compared = _compared(gaps, 16)
    assert compared >= 8, f"the test model's logits are near-tied at step {compared} (gaps {gaps})"
    cached = ttc.generate(kv_path, prompt, 16, max_length=40)
    uncached = ttc.generate(full_path, prompt, 16)
    assert cached.mode == "cached" and uncached.mode == "uncached"
    assert cached.tokens[:compared] == reference[:compared]
    assert uncached.tokens[:compared] == reference[:compared]
    assert cached.tokens[:compared] == uncached.tokens[:compared]


def test_decode_logits_follow_onnxruntime_step_by_step(gen_models):
    """Not only the argmax: every decode step's logits track onnxruntime's run of the same cached model with a
    growing (unpadded) cache, so a cache filed in the wrong slot cannot hide behind a robust argmax."""
    import onnxruntime

    kv_path, _ = gen_models
    prompt = PROMPTS[0]
    result = ttc.generate(kv_path, prompt, 8, max_length=24)
    session = onnxruntime.InferenceSession(str(kv_path))
    face = lm_interface(onnx.load(str(kv_path), load_external_data=False))
    past = {p.past: np.zeros((1, 2, 0, 32), np.float32) for p in face.kv}
    sequence = list(prompt)
    generator = Generator(kv_path, max_length=24)
    logits_by_step = []
    original = generator._run

    def recording_run(compiled, feeds, kind, tokens, steps, **options):
        outputs = original(compiled, feeds, kind, tokens, steps, **options)
        logits_by_step.append(outputs["logits"][0, -1].copy())
        return outputs

    generator._run = recording_run  # type: ignore[method-assign]
    again = generator.generate(prompt, 8)
    assert again.tokens == result.tokens
    for step, token in enumerate(result.tokens):
        new = sequence[len(sequence) - (len(prompt) if step == 0 else 1):]
        start = len(sequence) - len(new)
        feeds = {"input_ids": np.array([new], np.int64), "position_ids": np.arange(start, len(sequence))[None],
                 "attention_mask": np.ones((1, len(sequence)), np.int64), **past}
        outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))
        past = {p.past: outputs[p.present] for p in face.kv}
        expected = outputs["logits"][0, -1]
        got = logits_by_step[step]
        assert np.corrcoef(expected, got)[0, 1] > 0.999, f"step {step}"
        assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 0.03, f"step {step}"
        sequence.append(token)


def test_no_recompiles_and_flat_device_memory(gen_models):
    kv_path, full_path = gen_models
    for path, programs in ((kv_path, 2), (full_path, 1)):
        generator = Generator(path, max_length=40)
        result = generator.generate([1, 2, 3], 32)
        assert len(result.tokens) == 32
        assert result.compiles == programs, f"{path.name}: {result.compiles} compiles for 32 tokens"
        assert result.cache == ("device" if path == kv_path else None)
        decode = [step.dram_bytes for step in result.steps if step.kind == "decode"]
        assert len(decode) == 31 and decode[0] > 0
        assert len(set(decode)) == 1, f"{path.name}: device DRAM grew over the decode steps: {decode}"
        assert all(step.device_s > 0 for step in result.steps)


def test_the_cache_stays_in_device_dram(gen_models):
    """The decode program takes no cache input and returns no cache output: a step uploads the token, its
    position and the mask only, whatever the past, and gives the same tokens as the host-cache path."""
    kv_path, _ = gen_models
    uploads = {}
    for max_length in (40, 100):  # cache capacities 64 and 128 (whole tile rows)
        device = Generator(kv_path, max_length=max_length)
        result = device.generate(PROMPTS[0], 10)
        host = Generator(kv_path, max_length=max_length)
        host.cache = "host"  # the fallback path, forced
        hosted = host.generate(PROMPTS[0], 10)
        assert result.cache == "device" and hosted.cache == "host" and "cache in device DRAM" in result.summary()
        assert result.tokens == hosted.tokens
        decoder = device._device_decoder
        assert decoder.input_names == ["input_ids", "position_ids", "attention_mask"]
        assert decoder.output_names == ["logits"]
        assert sorted(decoder.executor().states) == sorted(p.present for p in device.interface.kv)
        steps = [s for s in result.steps if s.kind == "decode"]
        assert len({(s.to_device_bytes, s.to_host_bytes) for s in steps}) == 1  # flat over the positions
        capacity = device.capacity
        # the prefill runs on the decode program's device and writes the prompt's entries there: it uploads
        # the ids and positions (int32) and the mask, and reads back the logits only
        prefill = next(c for c in device._compiled.values() if c is not decoder)
        assert prefill.executor().device is decoder.executor().device
        assert prefill.output_names == ["logits"]
        t = len(PROMPTS[0])
        assert result.steps[0].to_device_bytes == 8 * t + capacity // 32 * 2048
        assert result.steps[0].to_host_bytes == 2 * 2048  # [1, t, 64] logits: two bf16 tiles
        # int32 token id and position (4 bytes each), the [1, capacity] mask as bf16 tiles: no cache bytes
        assert steps[0].to_device_bytes == 4 + 4 + capacity // 32 * 2048
        hosted_steps = [s for s in hosted.steps if s.kind == "decode"]
        cache = kv_cache_bytes(device.interface, max_length - 1, 1)
        assert hosted_steps[0].to_device_bytes - steps[0].to_device_bytes >= cache  # the padded past, each step
        uploads[capacity] = steps[0].to_device_bytes
    assert uploads[128] - uploads[64] == 2 * 2048  # a longer cache adds mask tiles only


def test_renamed_cache_pairs_fill_the_device_cache(gen_models):
    """Pairs named by --kv-names take the device path too, and a generation up to max_length (32, the cache's
    capacity) fills the cache: the last decode step writes slot 30, the last position whose token is fed back."""
    kv_path, _ = gen_models
    model = onnx.load(str(kv_path))
    renames = {}
    for value in [*model.graph.input, *model.graph.output]:
        for old, new in (("past_key_values.", "cache_in_"), ("present.", "cache_out_")):
            if value.name.startswith(old):
                renames[value.name] = value.name.replace(old, new).replace(".", "_")
    for value in [*model.graph.input, *model.graph.output]:
        value.name = renames.get(value.name, value.name)
    for node in model.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    pairs = {renames[f"past_key_values.{n}.{k}"]: renames[f"present.{n}.{k}"] for n in range(2) for k in ("key", "value")}
    prompt = PROMPTS[0]
    renamed = Generator(model, max_length=32, kv_names=pairs)
    result = renamed.generate(prompt, 32 - len(prompt))
    assert renamed.capacity == 32 and result.cache == "device" and result.stopped == "max-new-tokens"
    assert len(result.tokens) == 32 - len(prompt)
    assert result.tokens == Generator(kv_path, max_length=32).generate(prompt, 32 - len(prompt)).tokens


def test_the_decode_artifact_lists_its_states_and_scalar(gen_models, tmp_path):
    from ttc.artifact_info import artifact_info, format_info

    kv_path, _ = gen_models
    generator = Generator(kv_path, max_length=24)
    generator.generate([1, 2], 2)
    generator._device_decoder.save(tmp_path / "decode.ttc")
    info = artifact_info(tmp_path / "decode.ttc")
    assert sorted(info["device_states"]) == sorted(p.present for p in generator.interface.kv)
    assert info["runtime_scalars"] == ["kv_position"]
    assert "device states (kept in DRAM across runs): present.0.key" in format_info(info)
    loaded = ttc.load(tmp_path / "decode.ttc")
    feeds = {"input_ids": np.ones((1, 1), np.int64), "position_ids": np.ones((1, 1), np.int64),
             "attention_mask": np.ones((1, 32), np.int64)}
    with pytest.raises(UserError, match=r"runtime scalar.*'kv_position'"):
        loaded.run(feeds)
    assert loaded.run(feeds, scalars={"kv_position": 1})["logits"].shape == (1, 1, 64)


def test_a_prefill_that_cannot_share_the_device_copies_its_caches_over(gen_models, monkeypatch):
    """When the prefill and decode programs do not fit one device's DRAM together, the prefill runs on its own
    device and its caches are copied into the decode program's once: the same tokens, the copy counted."""
    import ttc.compiler

    kv_path, _ = gen_models
    reference = Generator(kv_path, max_length=24).generate(PROMPTS[0], 6)
    monkeypatch.setattr(ttc.compiler, "dram_bank_peak", lambda module, banks, alignment: 2**40)
    generator = Generator(kv_path, max_length=24)
    result = generator.generate(PROMPTS[0], 6)
    assert result.tokens == reference.tokens and result.cache == "device" and result.compiles == 2
    decoder = generator._device_decoder
    prefill = next(c for c in generator._compiled.values() if c is not decoder)
    assert prefill.executor().device is not decoder.executor().device
    caches = sum(decoder.executor().state_bytes(name) for name in decoder.executor().states)
    assert result.steps[0].to_device_bytes - reference.steps[0].to_device_bytes == caches
    assert result.steps[0].to_host_bytes - reference.steps[0].to_host_bytes == caches


def test_device_cache_generation_is_the_same_on_both_emulators(gen_models):
    kv_path, _ = gen_models
    tokens = {emulator: Generator(kv_path, max_length=24, emulator=emulator).generate(PROMPTS[2], 4).tokens
              for emulator in ("reference", "native")}
    assert tokens["reference"] == tokens["native"]


def test_an_unrecognised_cache_update_keeps_the_cache_on_the_host(capsys):
    result = Generator(_toy_lm(), max_length=8).generate([1, 2], 3)
    assert result.cache == "host" and len(result.tokens) == 3
    err = capsys.readouterr().err
    assert "the cache stays on the host" in err and "past_key_values.0.key" in err and "concat" in err


def test_sampling_is_seeded(gen_models):
    kv_path, _ = gen_models
    generator = Generator(kv_path, max_length=24)
    hot = Sampling(temperature=1.5, top_k=20, seed=7)
    first = generator.generate([5, 6], 12, hot).tokens
    assert generator.generate([5, 6], 12, hot).tokens == first
    other = generator.generate([5, 6], 12, Sampling(temperature=1.5, top_k=20, seed=8)).tokens
    assert other != first
    greedy = generator.generate([5, 6], 12).tokens
    assert generator.generate([5, 6], 12, Sampling(temperature=1.0, top_k=1, seed=3)).tokens == greedy
    assert generator.compiles == 2  # same prompt length: one prefill and one decode program for all runs


def test_batch_generates_independent_samples(gen_models):
    kv_path, _ = gen_models
    generator = Generator(kv_path, max_length=16, batch=3)
    result = generator.generate([5, 6], 8, Sampling(temperature=2.0, seed=1))
    assert len(result.batch_tokens) == 3 and all(len(row) == 8 for row in result.batch_tokens)
    assert len({tuple(row) for row in result.batch_tokens}) > 1
    greedy = generator.generate([5, 6], 8)
    assert all(row == greedy.tokens for row in greedy.batch_tokens)


def test_cli_generate_streams_tokens_and_rates(gen_models, tmp_path, capsys):
    kv_path, full_path = gen_models
    report = tmp_path / "gen.json"
    assert main(["generate", str(kv_path), "--prompt-ids", "40,32,17", "--max-new-tokens", "6",
                 "--json", str(report)]) == 0
    out, err = capsys.readouterr()
    data = json.loads(report.read_text())
    assert out.strip() == ",".join(map(str, data["tokens"])) and len(data["tokens"]) == 6
    assert "cached mode" in err and "prefill" in err and "decode" in err and "tokens/s" in err
    assert data["mode"] == "cached" and data["compiles"] == 2
    assert data["tokens_per_s"]["decode"]["modelled"] > 0 and data["tokens_per_s"]["prefill"]["emulated"] > 0
    assert main(["generate", str(full_path), "--prompt-ids", "40,32,17", "--max-new-tokens", "2"]) == 0
    assert "uncached mode" in capsys.readouterr().err


def test_tokenizer_text_in_and_out(gen_models, tmp_path, capsys):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    kv_path, _ = gen_models
    vocab = {f"w{i}": i for i in range(64)}
    tokenizer = tokenizers.Tokenizer(WordLevel(vocab, unk_token="w0"))
    tokenizer.pre_tokenizer = Whitespace()
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    assert main(["generate", str(kv_path), "--tokenizer", str(path), "--prompt", "w40 w32 w17",
                 "--max-new-tokens", "4", "-q"]) == 0
    out = capsys.readouterr().out
    expected = ttc.generate(kv_path, [40, 32, 17], 4).tokens
    assert out.split() == [f"w{t}" for t in expected]


def test_bigger_than_the_card_is_refused_before_reading_weights(tmp_path, capsys):
    import decoder_shapes

    large = decoder_shapes.write_decoder(tmp_path, "gpt2-large")
    assert main(["generate", str(large), "--prompt-ids", "1,2", "--max-length", "1024", "--batch", "64"]) == 2
    err = capsys.readouterr().err
    assert "does not fit the e150" in err and "KV cache at --max-length 1024 and batch 64" in err
    assert "shorter --max-length" in err and "at most" in err and "--dtype bfp8_b" in err
    assert "Traceback" not in err
    # The same model at batch 1 fits: the check passes (the weights, all zeros, are then never needed here).
    face = lm_interface(onnx.load(str(large), load_external_data=False))
    assert kv_cache_bytes(face, 1024, 64) == 64 * kv_cache_bytes(face, 1024, 1)
    falcon = decoder_shapes.write_decoder(tmp_path, "falcon-7b")
    assert main(["generate", str(falcon), "--prompt-ids", "1,2", "--max-length", "2048"]) == 2
    err = capsys.readouterr().err
    assert "weights (13.44 GiB)" in err and "bfp8_b" in err and "would fit" in err
    assert os.stat(tmp_path / "falcon-7b.weights").st_blocks == 0  # sparse, and nothing was written into it


# -- without the test models ----------------------------------------------------------------------------------

def _toy_lm(past_names=("past_key_values.0.key",), present_names=("present.0.key",)) -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "s"]),
              helper.make_tensor_value_info("position_ids", TensorProto.INT64, [1, "s"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [1, "t"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "s", 8])]
    nodes = [helper.make_node("Cast", ["input_ids"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["f", "axes"], ["logits0"]),
             helper.make_node("Expand", ["logits0", "shape"], ["logits"])]
    inits = [helper.make_tensor("axes", TensorProto.INT64, [1], [2]),
             helper.make_tensor("shape", TensorProto.INT64, [3], [1, 1, 8])]
    for past, present in zip(past_names, present_names, strict=True):
        inputs.append(helper.make_tensor_value_info(past, TensorProto.FLOAT, [1, 2, "p", 4]))
        outputs.append(helper.make_tensor_value_info(present, TensorProto.FLOAT, [1, 2, "t", 4]))
        nodes.append(helper.make_node("Identity", [past], [present]))
    return helper.make_model(helper.make_graph(nodes, "toy", inputs, outputs, inits))


def test_interface_pairs_caches_by_name_and_override():
    face = lm_interface(_toy_lm())
    assert face.input_ids == "input_ids" and face.logits == "logits"
    assert [(p.past, p.present, p.axis) for p in face.kv] == [("past_key_values.0.key", "present.0.key", 2)]
    odd = _toy_lm(("cache_in_0",), ("cache_out_0",))
    with pytest.raises(UserError, match=r"cache_in_0.*neither token ids.*--kv-names"):
        lm_interface(odd)
    face = lm_interface(odd, parse_kv_names(["cache_in_0=cache_out_0"]))
    assert face.kv[0].present == "cache_out_0"
    with pytest.raises(UserError, match="no output 'nope'"):
        lm_interface(odd, {"cache_in_0": "nope"})
    with pytest.raises(UserError, match=r"no output pairs with it"):
        lm_interface(_toy_lm(("past_key_values.0.key",), ("kv_out",)))


def test_argument_parsing_errors():
    assert parse_ids("464, 2068,7586") == [464, 2068, 7586]
    with pytest.raises(UserError, match="comma-separated token ids"):
        parse_ids("464,two")
    with pytest.raises(UserError, match="PAST_INPUT=PRESENT_OUTPUT"):
        parse_kv_names(["a:b"])
    for bad in (dict(temperature=-1), dict(top_k=-2), dict(top_p=0), dict(top_p=1.5)):
        with pytest.raises(UserError):
            Sampling(**bad)


def test_sampling_filters():
    rng = np.random.default_rng(0)
    logits = np.array([0.0, 5.0, 4.9, -3.0, 1.0])
    assert sample(logits, Sampling(), rng) == 1
    picks = {sample(logits, Sampling(temperature=1.0, top_k=2, seed=0), rng) for _ in range(200)}
    assert picks == {1, 2}
    # top-p 0.5: token 1 alone holds about half the mass, so the nucleus is tokens 1 and 2.
    picks = {sample(logits, Sampling(temperature=1.0, top_p=0.5), rng) for _ in range(200)}
    assert picks <= {1, 2} and 1 in picks
    with pytest.raises(UserError, match="non-finite"):
        sample(np.array([1.0, np.nan]), Sampling(), rng)
    assert top2_gap(logits) == pytest.approx(0.1)


def test_cli_generate_user_errors(tmp_path, capsys):
    model = tmp_path / "toy.onnx"
    onnx.save(_toy_lm(), model)
    assert main(["generate", str(model), "--prompt", "hello"]) == 2
    assert "needs --tokenizer" in capsys.readouterr().err
    assert main(["generate", str(model), "--prompt-ids", "1", "--tokenizer", str(tmp_path / "none.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["generate", str(model), "--prompt-ids", "1,99", "--max-new-tokens", "2"]) == 2
    assert "outside the vocabulary [0, 8)" in capsys.readouterr().err
    assert main(["generate", str(model), "--prompt-ids", "1", "--max-new-tokens", "0"]) == 2
    assert "at least 1" in capsys.readouterr().err
