"""Every family's tiny preset launched on 2 CPU processes, under the shipped DDP and FSDP configs, trains like
one process (the comparison of `equivalence.py`); and the reward, in training and in held-out evaluation, is
shown every reference image of a sample. Families that take several references train on two per row.

The shipped base's family (Qwen-Image-Edit) has these launches, and more, in test_distributed.py and test_fsdp.py."""

import json

import pytest
from equivalence import (
    CONTINUOUS,
    REWARD_ATOL,
    assert_close,
    assert_same_first_rollouts,
    assert_same_gradients,
    gradients,
    rows,
    tensors,
    weight_tolerance,
)
from PIL import Image
from tiny_runs import launch_train, tiny_nft_overrides, tiny_presets

from editr1.config import TrainConfig, load_config
from editr1.data.images import image_to_tensor
from editr1.models.registry import adapter_class
from editr1.tasks.shapes import SHIPPED_BASE
from editr1.trainer.rl_trainer import run_rl

SHIPPED_FAMILY = json.loads((SHIPPED_BASE / "model_index.json").read_text())["_class_name"]
PRESETS = [p for p in tiny_presets() if adapter_class(p.removeprefix("tiny:")).pipeline_class != SHIPPED_FAMILY]


def _references_per_row(preset):
    return min(2, adapter_class(preset.removeprefix("tiny:")).inference.max_references)


def _overrides(preset, data, out, seen):
    seen.mkdir(parents=True)
    recording = ["reward.name=toy_plugin:RecordsReferences", f"reward.options={{folder: '{seen}'}}"]
    return tiny_nft_overrides(data, out, iterations=1) + [
        f"model.path={preset}", "eval.samples=4", "eval.every=1", "logging.checkpoint_every=1", "logging.grid_every=0",
        "rl.filter_rule=none",  # brightness of shapes scenes is ~0.99: the paper rule would drop every group
        *CONTINUOUS, *recording, "eval.reward.name=toy_plugin:RecordsReferences", f"eval.reward.options={{folder: '{seen}'}}",
    ]


def _seen(folder):
    return [json.loads(line) for path in sorted(folder.glob("seen-*.jsonl")) for line in path.read_text().splitlines()]


def _references(data):
    """Each row's reference images, as the reward gets them (their mean pixels)."""
    means = set()
    for split in ("train", "test"):
        for line in (data / f"{split}.jsonl").read_text().splitlines():
            images = json.loads(line)["image"]
            images = images if isinstance(images, list) else [str(data / images)]
            means.add(tuple(round(float(image_to_tensor(Image.open(path)).double().mean()), 6) for path in images))
    return means


@pytest.mark.parametrize("preset", PRESETS)
def test_ddp_and_fsdp_train_like_one_process_and_the_reward_sees_every_reference(preset, shapes_data,
                                                                                 two_reference_data, tmp_path):
    data = two_reference_data if _references_per_row(preset) == 2 else shapes_data
    runs = {name: (tmp_path / name, tmp_path / f"seen_{name}") for name in ("one", "ddp", "fsdp")}
    config = load_config(TrainConfig, None, _overrides(preset, data, *runs["one"]))
    run_rl(config)
    launch_train("ddp_1node.yaml", _overrides(preset, data, *runs["ddp"]))
    launch_train("fsdp_1node.yaml", _overrides(preset, data, *runs["fsdp"]), fsdp_on_cpu=True)

    one = runs["one"][0]
    tolerance = weight_tolerance(one, 1, config.optim.lr)
    for name in ("ddp", "fsdp"):
        launched = runs[name][0]
        assert_same_first_rollouts(launched, one)
        assert_same_gradients(gradients(launched, 1), gradients(one, 1))
        assert_close(tensors(launched, 1, "trained"), tensors(one, 1, "trained"), tolerance)
        # Held-out evaluation, each process editing its share, before and after the update.
        assert [step for step, _ in rows(launched, "heldout_reward")] == [0, 1]
        for (_, a), (_, b) in zip(rows(launched, "heldout_reward"), rows(one, "heldout_reward")):
            assert a == pytest.approx(b, abs=REWARD_ATOL)

    # Every sample the reward scored came with all its references, the data's own images.
    known = _references(data)
    for name, (_, seen) in runs.items():
        shown = _seen(seen)
        # One process: 2 groups x 4 rollouts, and 4 held-out edits twice; launched, the same across the processes.
        assert len(shown) == 2 * 4 + 2 * 4, name
        assert all(len(references) == _references_per_row(preset) for references in shown), name
        assert {tuple(round(mean, 6) for mean in references) for references in shown} <= known, name
