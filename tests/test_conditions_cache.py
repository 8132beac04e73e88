"""Conditions off the GPU's critical path: `editr1 precompute` and `data.conditions_cache`, and
`model.offload_text_encoder` in a training run.

Both change no numbers: a tiny NFT run (2 iterations, held-out evaluations at steps 0 and 2) from the
cache, or with the text encoder offloaded, ends with bit-identical checkpoints and evaluations to the
same run encoding on the fly, and so does a tiny SFT run from the cache. That holds because training encodes each sample alone
(`EditModelAdapter.encode_each`) and the cache stores each sample as encoded alone, re-batched by the
family's `join_conditions`. The runs use true CFG (Qwen at evaluation, FLUX in rollouts too), so the
negative-prompt conditions go through the cache as well."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from offload_fakes import encoder_devices, fake_offload
from safetensors.torch import load_file
from tiny_runs import tiny_nft_overrides, tiny_presets
from torch import nn

import editr1.trainer.conditions_cache as cache_module
import editr1.trainer.rl_trainer as trainer_module
from editr1.cli.main import main
from editr1.config import TrainConfig, SFTConfig, load_config
from editr1.data.batching import source_images
from editr1.data.jsonl import read_edit_jsonl
from editr1.errors import EditR1Error
from editr1.models.base import EditModelAdapter
from editr1.models.registry import build_tiny
from editr1.rewards.base import Reward, RewardBatch
from editr1.rl.losses import nft
from editr1.tasks.shapes import SHIPPED_BASE
from editr1.tasks.shapes.scenes import write_shapes_dataset
from editr1.trainer.conditions_cache import MANIFEST, open_for_run, precompute_conditions
from editr1.trainer.metrics_log import read_metrics
from editr1.trainer.model_loading import build_model
from editr1.trainer.rl_trainer import RLTrainer, run_rl
from editr1.trainer.sft import run_sft


class Brightness(Reward):
    """Random tiny FLUX models score 0 on the shapes verifier; mean brightness varies."""

    name = "test_conditions_cache_brightness"

    def score(self, sources, edited, prompts, requirements):
        return RewardBatch(torch.stack([e.mean() for e in edited]).float(), torch.ones(len(edited), dtype=torch.bool))


FAMILIES = {
    "qwen-image-edit": ["eval.cfg_scale=2.0"],  # the shipped tiny Qwen-Image-Edit base
    "qwen-image-edit-2511": ["model.path=tiny:qwen-image-edit-2511", "eval.cfg_scale=2.0",
                             "reward.name=test_conditions_cache:Brightness", "eval.reward.name=test_conditions_cache:Brightness"],
    "flux-kontext": ["model.path=tiny:flux-kontext", "rollout.guidance=2.5", "rollout.cfg_scale=2.0", "eval.cfg_scale=2.0",
                     "reward.name=test_conditions_cache:Brightness", "eval.reward.name=test_conditions_cache:Brightness"],
    **{family: [f"model.path=tiny:{family}", "eval.cfg_scale=2.0", "reward.name=test_conditions_cache:Brightness",
                "eval.reward.name=test_conditions_cache:Brightness"]
       for family in ("qwen-image-edit-plus", "flux2-klein", "flux2-dev")},
}
OUTPUTS = ("checkpoints/step_000002/trained.safetensors", "checkpoints/step_000002/old.safetensors",
           "checkpoints/step_000002/optimizer.safetensors", "eval/step_000000.safetensors", "eval/step_000002.safetensors")


def _overrides(data, out, family, *extra):
    return tiny_nft_overrides(data, out, iterations=2) + FAMILIES[family] + list(extra)


@pytest.fixture(scope="module")
def baseline(shapes_data, tmp_path_factory):
    """The run of each family that encodes on the fly with the text encoder resident (made once)."""
    runs = {}

    def run(family):
        if family not in runs:
            out = tmp_path_factory.mktemp(f"baseline-{family}") / "run"
            run_rl(load_config(TrainConfig, None, _overrides(shapes_data, out, family)))
            runs[family] = out
        return runs[family]

    return run


def _assert_same_run(a, b):
    for name in OUTPUTS:
        first, second = load_file(a / name), load_file(b / name)
        assert first.keys() == second.keys(), name
        for key in first:
            assert torch.equal(first[key], second[key]), f"{name}: {key} differs"


@pytest.mark.parametrize("family", FAMILIES)
def test_the_precompute_cache_gives_the_same_trained_weights_as_encoding_on_the_fly(family, shapes_data, tmp_path,
                                                                                    baseline, monkeypatch):
    reference = baseline(family)  # before the patches below
    cache, out = tmp_path / "cache", tmp_path / "run"
    overrides = _overrides(shapes_data, out, family, f"data.conditions_cache={cache}")
    counts = precompute_conditions(load_config(TrainConfig, None, overrides))
    negatives = 40 + 16 if family == "flux-kontext" else 16  # rollouts with true CFG / evaluation only
    assert counts == {"conditions_cache": str(cache), "samples": 56, "encoded": 56 + negatives, "reused": 0}

    def no_encoding(self, *args, **kwargs):
        raise AssertionError("a run from the conditions cache ran encode_conditions")

    monkeypatch.setattr(EditModelAdapter, "_bring_text_encoders", no_encoding)
    run_rl(load_config(TrainConfig, None, overrides))
    _assert_same_run(reference, out)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_offloaded_encoder_is_on_the_cpu_during_the_nft_update(family, shapes_data, tmp_path, baseline, monkeypatch):
    """The meta device stands in for the CPU and the CPU for the GPU (`offload_fakes`): an encoder
    that stayed resident would read "cpu" at the update and fail this test; one used while offloaded
    would fail to compute; and the checkpoints equal the run without offload, bit for bit."""
    reference = baseline(family)  # before the patches below
    monkeypatch.setattr(EditModelAdapter, "offload_device", torch.device("meta"))
    seen = {"update": [], "velocity": [], "encoding": []}
    built = {}
    build_model = trainer_module.build_model

    def building(*args, **kwargs):
        adapter = build_model(*args, **kwargs)
        for module in adapter.text_encoders():
            fake_offload(module)
            module.get_input_embeddings().register_forward_pre_hook(lambda m, _: seen["encoding"].append(next(m.parameters()).device.type))
        built["adapter"] = adapter
        return adapter

    def recording_loss(**kwargs):
        seen["update"].append(encoder_devices(built["adapter"]))
        return nft(**kwargs)

    monkeypatch.setattr(trainer_module, "build_model", building)
    velocity = None

    def recording_velocity(self, *args, **kwargs):
        seen["velocity"].append(encoder_devices(self))
        return velocity(self, *args, **kwargs)

    out = tmp_path / "run"
    config = load_config(TrainConfig, None, _overrides(shapes_data, out, family, "model.offload_text_encoder=true"))
    trainer = RLTrainer(config)
    assert encoder_devices(trainer.adapter) == ["meta"] * len(trainer.adapter.text_encoders())  # `to` left them off
    velocity = type(trainer.adapter).velocity
    monkeypatch.setattr(type(trainer.adapter), "velocity", recording_velocity)
    trainer.algorithm.loss_fn = recording_loss
    trainer.run()
    count = len(built["adapter"].text_encoders())
    assert seen["update"] and all(devices == ["meta"] * count for devices in seen["update"])
    # Rollouts' and evaluations' sampling too; the encoders ran only on the "device".
    assert len(seen["velocity"]) > len(seen["update"]) and all(d == ["meta"] * count for d in seen["velocity"])
    assert seen["encoding"] and set(seen["encoding"]) == {"cpu"}
    _assert_same_run(reference, out)


@pytest.mark.parametrize("preset", tiny_presets())
def test_a_tiny_preset_is_a_function_of_its_corpus_and_seed(preset, shapes_data):
    """A cache keys a tiny preset by its name, seed and training prompts: two builds must encode alike."""
    samples = read_edit_jsonl(shapes_data / "train.jsonl")[:5]
    corpus = [s.prompt for s in samples]
    first, second = build_tiny(preset, corpus, 0), build_tiny(preset, corpus, 0)
    sources = [source_images(s, 32) for s in samples]
    a, b = first.encode_each(sources, corpus, 32, 32), second.encode_each(sources, corpus, 32, 32)
    for name, tensor in a.tensors.items():
        assert torch.equal(tensor, b.tensors[name]), name


@pytest.mark.parametrize("preset", tiny_presets())
def test_precompute_puts_only_the_text_encoders_and_the_codec_on_the_device(preset, small, tmp_path, monkeypatch):
    """The meta device stands in for the CPU and the CPU for the GPU (`offload_fakes`): the model is built
    "on the CPU" (meta); while it encodes, the text encoders and the codec must be on the "device" and the
    transformer still on the CPU (one moved to the device would read "cpu"), and all of it back on the CPU
    after. The cache holds what the whole model on the device encodes, bit for bit."""
    monkeypatch.setattr(EditModelAdapter, "offload_device", torch.device("meta"))
    placements, built = [], {}

    def codec_modules(adapter):
        return [m for m in vars(adapter.codec).values() if isinstance(m, nn.Module)]  # a VAE; none for the pixel codec

    def placement(adapter):
        return {"transformer": next(adapter.transformer.parameters()).device.type,
                "text encoders": set(encoder_devices(adapter)),
                "codec": {next(m.parameters()).device.type for m in codec_modules(adapter)}}

    def building(*args, **kwargs):
        adapter = build_model(*args, **kwargs)
        for module in [adapter.transformer, *adapter.text_encoders(), *codec_modules(adapter)]:
            fake_offload(module).to("meta")
        for module in adapter.text_encoders():
            module.get_input_embeddings().register_forward_pre_hook(lambda m, _: placements.append(placement(adapter)))
        built["adapter"] = adapter
        return adapter

    monkeypatch.setattr(cache_module, "build_model", building)
    data = small / "data"
    config = load_config(TrainConfig, None, tiny_nft_overrides(data, tmp_path / "run", iterations=1) + [
        f"model.path={preset}", "eval.samples=4", "eval.cfg_scale=2.0", f"data.conditions_cache={tmp_path / 'cache'}"])
    precompute_conditions(config)
    has_codec_weights = bool(codec_modules(built["adapter"]))
    encoding = {"transformer": "meta", "text encoders": {"cpu"}, "codec": {"cpu"} if has_codec_weights else set()}
    assert placements and all(p == encoding for p in placements), placements
    after = {"transformer": "meta", "text encoders": {"meta"}, "codec": {"meta"} if has_codec_weights else set()}
    assert placement(built["adapter"]) == after

    train, heldout = read_edit_jsonl(data / "train.jsonl"), read_edit_jsonl(data / "test.jsonl")
    corpus = [s.prompt for s in train]
    reference = build_model(config.model, corpus, seed=config.seed)  # whole, on the "device"; no fakes
    cache = open_for_run(config, reference, corpus, train, heldout)
    for role, samples, negative in (("train", train, False), ("heldout", heldout, False), ("heldout", heldout, True)):
        prompts = [reference.inference.negative_prompt if negative else s.prompt for s in samples]
        expected = reference.encode_each([source_images(s, 32) for s in samples], prompts, 32, 32)
        cached = cache.conditions(reference, role, samples, negative)
        assert cached.shared == expected.shared
        for name, tensor in expected.tensors.items():
            assert torch.equal(cached.tensors[name], tensor), (role, negative, name)


# ---- refusals -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """6 training and 4 held-out samples, and caches of them for the shipped base and a tiny preset."""
    root = tmp_path_factory.mktemp("small")
    write_shapes_dataset(root / "data", n_train=6, n_test=4, seed=2)
    for name, model in (("base", str(SHIPPED_BASE)), ("tiny", "tiny:qwen-image-edit")):
        precompute_conditions(load_config(TrainConfig, None, _small_overrides(root, root / "unused", name, model)))
    return root


def _small_overrides(root, out, cache="base", model=str(SHIPPED_BASE), data=None):
    data = root / "data" if data is None else data
    return tiny_nft_overrides(data, out, iterations=1) + [
        f"model.path={model}", "eval.samples=4", f"data.conditions_cache={root / cache}"]


def _refused(root, tmp_path, pattern, *extra, cache="base", model=str(SHIPPED_BASE), data=None):
    out = tmp_path / "run"
    config = load_config(TrainConfig, None, _small_overrides(root, out, cache, model, data) + list(extra))
    with pytest.raises(EditR1Error, match=pattern) as error:
        RLTrainer(config)
    assert "\n" not in str(error.value)
    assert not out.exists(), "a refused cache must stop the run before it writes anything"
    return str(error.value)


def _copy_data(root, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(root / "data", data)
    return data


def _edit_jsonl(path, change):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    change(rows)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_a_matching_cache_is_accepted_and_the_text_encoder_is_not_loaded(small, tmp_path, monkeypatch):
    from transformers import Qwen2_5_VLForConditionalGeneration

    def no_weights_read(*args, **kwargs):
        raise AssertionError("a LoRA run from a conditions cache read the text encoder's weights")

    monkeypatch.setattr(Qwen2_5_VLForConditionalGeneration, "from_pretrained", no_weights_read)
    trainer = RLTrainer(load_config(TrainConfig, None, _small_overrides(small, tmp_path / "run")))
    assert trainer.cache is not None and not trainer.adapter.text_encoders_loaded
    assert encoder_devices(trainer.adapter) == ["meta"]
    with pytest.raises(EditR1Error, match="cannot encode"):
        trainer.adapter.encode_conditions([[source_images(trainer.train_samples[0], 32)[0]]], ["edit"], 32, 32)
    # Full fine-tuning exports a whole model folder, text encoder included: it is loaded (and stays on the CPU).
    monkeypatch.undo()
    full = RLTrainer(load_config(TrainConfig, None, _small_overrides(small, tmp_path / "full") + ["model.train_mode=full"]))
    assert full.adapter.text_encoders_loaded and encoder_devices(full.adapter) == ["cpu"]


def test_a_cache_of_another_model_is_refused(small, tmp_path):
    message = _refused(small, tmp_path, r"^data\.conditions_cache: .* was built for another model \(.*model\.path",
                       model="tiny:qwen-image-edit")
    assert str(small / "base") in message
    _refused(small, tmp_path, r"was built for another model \(seed: 0 in the cache, 1 here\)",
             "seed=1", cache="tiny", model="tiny:qwen-image-edit")


def test_a_cache_of_other_settings_is_refused(small, tmp_path):
    _refused(small, tmp_path, r"was built with other conditioning settings \(model\.resolution: 32 in the cache, 64 here\)",
             "model.resolution=64")
    _refused(small, tmp_path, r"other conditioning settings \(model\.condition_area: None in the cache, 4096 here\)",
             "model.condition_area=4096")
    _refused(small, tmp_path, r"other conditioning settings \(data\.max_prompt_tokens: None in the cache, 64 here\)",
             "data.max_prompt_tokens=64")


def test_a_changed_or_missing_sample_is_refused(small, tmp_path):
    data = _copy_data(small, tmp_path)
    _edit_jsonl(data / "train.jsonl", lambda rows: rows[2].update(prompt=rows[2]["prompt"] + " now"))
    _refused(small, tmp_path, r"sample 'train-00002' \(.*train\.jsonl line 3\) changed \(its instruction or source images\) since",
             data=data)

    data = _copy_data(small, tmp_path / "image")
    image = data / json.loads((data / "test.jsonl").read_text().splitlines()[1])["image"]
    image.write_bytes((data / json.loads((data / "test.jsonl").read_text().splitlines()[0])["image"]).read_bytes())
    _refused(small, tmp_path, r"sample 'test-00001' \(.*test\.jsonl line 2\) changed", data=data)

    data = _copy_data(small, tmp_path / "missing")
    _edit_jsonl(data / "train.jsonl", lambda rows: rows.append({**rows[0], "id": "new"}))
    _refused(small, tmp_path, r"has no conditions for sample 'new' \(.*train\.jsonl line 7\); rerun `editr1 precompute`",
             data=data)


def test_negative_prompt_conditions_must_be_in_the_cache_for_true_cfg(small, tmp_path):
    _refused(small, tmp_path, r"holds no negative-prompt conditions for the heldout samples, which true CFG "
                              r"\(eval\.cfg_scale != 1\) needs", "eval.cfg_scale=2.0")
    _refused(small, tmp_path, r"holds no negative-prompt conditions for the train samples", "rollout.cfg_scale=2.0")


def test_no_cache_or_a_broken_one_is_refused(small, tmp_path):
    _refused(small, tmp_path, r"^data\.conditions_cache: .*nowhere: no conditions cache there \(no manifest\.json\); "
                              r"write it with `editr1 precompute CONFIG`", cache="nowhere")
    broken = tmp_path / "broken"
    shutil.copytree(small / "base", broken)
    for shard in broken.glob("shard-*"):
        shard.unlink()
    _refused(small, tmp_path, r"the conditions of sample 'train-00000' .* are missing from the cache", cache=broken)
    (broken / MANIFEST).write_text("{")
    _refused(small, tmp_path, r"manifest\.json: unreadable", cache=broken)


def test_precompute_reuses_unchanged_entries_and_drops_stale_shards(small, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(small / "base", cache)
    data = _copy_data(small, tmp_path)
    _edit_jsonl(data / "train.jsonl", lambda rows: rows[0].update(prompt="Make the red square blue"))
    overrides = tiny_nft_overrides(data, tmp_path / "run", iterations=1) + [
        f"model.path={SHIPPED_BASE}", "eval.samples=4", f"data.conditions_cache={cache}"]
    old_shards = set(cache.glob("shard-*"))
    counts = precompute_conditions(load_config(TrainConfig, None, overrides))
    assert counts["encoded"] == 1 and counts["reused"] == 9
    manifest = json.loads((cache / MANIFEST).read_text())
    used = {entry["shard"] for entry in manifest["entries"].values()}
    assert {p.name for p in cache.glob("shard-*")} == used and len(manifest["entries"]) == 10
    assert used & {p.name for p in old_shards}  # the unchanged samples stay where they were
    RLTrainer(load_config(TrainConfig, None, overrides))  # and the updated cache is accepted


def test_the_command_line(small, tmp_path, capsys):
    cache = tmp_path / "cache"
    args = ["--set", f"model.path={SHIPPED_BASE}", "--set", f"data.train={small / 'data' / 'train.jsonl'}",
            "--set", f"data.heldout={small / 'data' / 'test.jsonl'}", "--set", f"data.conditions_cache={cache}",
            "--set", f"output_dir={tmp_path / 'run'}", "--set", "eval.samples=4"]
    assert main(["precompute", *args]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{\n"):]) == {"conditions_cache": str(cache), "samples": 10, "encoded": 10, "reused": 0}
    assert (cache / MANIFEST).is_file()
    assert main(["train", *args, "--set", "model.resolution=64"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after transformers' loading progress
    assert error.startswith("editr1: error: data.conditions_cache: ") and "model.resolution: 32 in the cache" in error
    assert main(["precompute", "--set", f"data.train={small / 'data' / 'train.jsonl'}"]) == 2
    assert "data.conditions_cache: set the folder to write the conditions cache to" in capsys.readouterr().err


def _sft_overrides(data, out, *extra):
    return [f"data.train={data / 'train.jsonl'}", f"data.heldout={data / 'test.jsonl'}", f"output_dir={out}",
            "steps=4", "batch_size=4", "warmup_steps=1", "ema_decay=0.9", "eval.every=2", "eval.samples=4",
            "eval.steps=2", "eval.reward.name=shapes_verifier", "logging.checkpoint_every=2", "logging.progress=false",
            "logging.trackers=[]", *extra]


def _untimed(rows):
    return [{k: v for k, v in row.items() if not k.startswith("seconds")} for row in rows]


def test_an_sft_run_from_the_cache_equals_one_encoding_on_the_fly(shapes_data, tmp_path, monkeypatch, capsys):
    """Full fine-tuning of the tiny preset with true CFG at evaluation: the negative prompt's conditions come
    from the cache too. `editr1 precompute --sft` writes the cache from the same sft config."""
    cache, on_the_fly, from_cache = tmp_path / "cache", tmp_path / "on-the-fly", tmp_path / "from-cache"
    extra = ["eval.cfg_scale=2.0"]
    sets = [arg for field in _sft_overrides(shapes_data, from_cache, *extra, f"data.conditions_cache={cache}")
            for arg in ("--set", field)]
    assert main(["precompute", "--sft", *sets]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{\n"):]) == {"conditions_cache": str(cache), "samples": 56, "encoded": 56 + 16,
                                                  "reused": 0}
    expected = run_sft(load_config(SFTConfig, None, _sft_overrides(shapes_data, on_the_fly, *extra)))

    def no_encoding(self, *args, **kwargs):
        raise AssertionError("an sft run from the conditions cache ran encode_conditions")

    monkeypatch.setattr(EditModelAdapter, "_bring_text_encoders", no_encoding)
    summary = run_sft(load_config(SFTConfig, None, _sft_overrides(shapes_data, from_cache, *extra,
                                                                  f"data.conditions_cache={cache}")))
    assert {**summary, "model": None} == {**expected, "model": None}
    assert _untimed(read_metrics(from_cache)) == _untimed(read_metrics(on_the_fly))
    weights = sorted(p.relative_to(on_the_fly) for p in on_the_fly.rglob("*.safetensors"))
    assert Path("eval/final.safetensors") in weights and Path("checkpoints/step_000004/trained.safetensors") in weights
    assert any(p.parts[0] == "model" for p in weights)
    assert sorted(p.relative_to(from_cache) for p in from_cache.rglob("*.safetensors")) == weights
    for name in weights:
        first, second = load_file(on_the_fly / name), load_file(from_cache / name)
        assert first.keys() == second.keys(), name
        for key in first:
            assert torch.equal(first[key], second[key]), f"{name}: {key} differs"


def _sft_refused(root, tmp_path, pattern, *extra):
    out = tmp_path / "sft"
    config = load_config(SFTConfig, None, _sft_overrides(root / "data", out, f"model.path={SHIPPED_BASE}",
                                                         f"data.conditions_cache={root / 'base'}", *extra))
    with pytest.raises(EditR1Error, match=pattern) as error:
        run_sft(config)
    assert "\n" not in str(error.value)
    assert not out.exists(), "a refused cache must stop the run before it writes anything"


def test_sft_refuses_a_cache_for_other_settings_or_samples(small, tmp_path):
    _sft_refused(small, tmp_path, r"^data\.conditions_cache: .* was built with other conditioning settings "
                                  r"\(model\.resolution: 32 in the cache, 64 here\); rerun `editr1 precompute`",
                 "model.resolution=64")
    _sft_refused(small, tmp_path, r"holds no negative-prompt conditions for the heldout samples, which true CFG "
                                  r"\(eval\.cfg_scale != 1\) needs", "eval.cfg_scale=2.0")
    data = _copy_data(small, tmp_path)
    _edit_jsonl(data / "train.jsonl", lambda rows: rows.append({**rows[0], "id": "new"}))
    _sft_refused(small, tmp_path, r"has no conditions for sample 'new' \(.*train\.jsonl line 7\)", f"data.train={data / 'train.jsonl'}")


def test_a_lora_sft_run_from_the_cache_does_not_load_the_text_encoder(small, tmp_path, monkeypatch):
    from transformers import Qwen2_5_VLForConditionalGeneration

    def no_weights_read(*args, **kwargs):
        raise AssertionError("a LoRA sft run from a conditions cache read the text encoder's weights")

    monkeypatch.setattr(Qwen2_5_VLForConditionalGeneration, "from_pretrained", no_weights_read)
    out = tmp_path / "sft"
    run_sft(load_config(SFTConfig, None, _sft_overrides(small / "data", out, f"model.path={SHIPPED_BASE}",
                                                        f"data.conditions_cache={small / 'base'}", "model.train_mode=lora",
                                                        "model.lora.rank=4", "model.lora.alpha=8", "steps=2")))
    assert (out / "model" / "lora" / "pytorch_lora_weights.safetensors").is_file()
