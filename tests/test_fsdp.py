"""Sharded training: two processes under accelerate's FSDP2 (gloo on the CPU, through `fsdp_on_cpu.py`;
see there for the one decision it changes) train like one process, evaluate, export, and resume."""

import shutil
from pathlib import Path

import pytest
from equivalence import (
    CONTINUOUS,
    REWARD_ATOL,
    REWARD_ATOL_BF16,
    assert_close,
    assert_equal,
    assert_same_first_rollouts,
    assert_same_gradients,
    assert_same_rows,
    gradients,
    rows,
    tensors,
    weight_tolerance,
)
from safetensors.torch import load_file
from tiny_runs import launch_train, tiny_nft_overrides

from editr1.config import TrainConfig, load_config
from editr1.trainer.rl_trainer import run_rl



def _overrides(data, out, iterations=2, extra=()):
    """Compared with other launches, so with a continuous reward and a Lipschitz optimizer step (equivalence.py)."""
    return tiny_nft_overrides(data, out, iterations=iterations) + [
        "rollout.groups_per_iteration=2", "eval.every=2", "logging.checkpoint_every=1", *CONTINUOUS, *extra,
    ]


def _launch_fsdp(overrides, resume=False):
    """`editr1 train` on 2 CPU processes under the shipped FSDP config (8 GPUs there, 2 processes here)."""
    return launch_train("fsdp_1node.yaml", overrides, resume=resume, fsdp_on_cpu=True)


def test_fsdp_lora_trains_like_one_process_evaluates_exports_and_resumes(shapes_data, tmp_path):
    sharded, single = tmp_path / "fsdp", tmp_path / "one"
    launched = _launch_fsdp(_overrides(shapes_data, sharded))
    assert "DistributedDataParallel" not in launched.stderr
    config = load_config(TrainConfig, None, _overrides(shapes_data, single))
    run_rl(config)

    # The same rollouts and held-out edits, the same first gradients, and weights that agree up to the order of
    # float sums (as with DDP: see test_distributed.py).
    assert_same_first_rollouts(sharded, single)
    assert [step for step, _ in rows(sharded, "heldout_reward")] == [0, 2]
    assert rows(sharded, "heldout_reward")[0] == pytest.approx(rows(single, "heldout_reward")[0], abs=REWARD_ATOL)
    # Sample by sample: each process edited its share, and the main process put them back in order.
    step0 = "eval/step_000000.safetensors"
    assert_close({"scores": load_file(sharded / step0)["scores"]}, {"scores": load_file(single / step0)["scores"]},
                 REWARD_ATOL)
    assert_same_gradients(gradients(sharded, 1), gradients(single, 1))
    tolerance = weight_tolerance(single, 2, config.optim.lr)
    for name in ("trained", "old"):
        assert_close(tensors(sharded, 2, name), tensors(single, 2, name), tolerance)
    # The checkpoint holds whole tensors, and the exported LoRA is the same file an unsharded run writes.
    lora = "final/pytorch_lora_weights.safetensors"
    assert_close(load_file(sharded / lora), load_file(single / lora), tolerance)

    # Killed after iteration 1 (its checkpoint kept, what came after it lost), resumed on 2 processes:
    # the same run, bit for bit.
    resumed = tmp_path / "resumed"
    shutil.copytree(sharded, resumed, ignore=shutil.ignore_patterns("step_000002", "final", "summary.json"))
    (resumed / "checkpoints" / "latest").write_text("step_000001")
    _launch_fsdp(_overrides(shapes_data, resumed), resume=True)
    for name in ("trained", "old", "optimizer"):
        assert_equal(tensors(resumed, 2, name), tensors(sharded, 2, name))
    assert rows(resumed, "heldout_reward") == rows(sharded, "heldout_reward")

    # The checkpoint does not depend on the launch: one process resumes it too (one update in another order).
    alone = tmp_path / "alone"
    shutil.copytree(resumed, alone, ignore=shutil.ignore_patterns("step_000002", "final", "summary.json"))
    (alone / "checkpoints" / "latest").write_text("step_000001")
    run_rl(load_config(TrainConfig, None, _overrides(shapes_data, alone)), resume=True)
    assert_close(tensors(alone, 2, "trained"), tensors(sharded, 2, "trained"), weight_tolerance(single, 1, config.optim.lr))


def test_fsdp_full_fine_tuning_with_a_reference_trains_like_one_process(shapes_data, tmp_path):
    """Full fine-tuning shards the old and reference copies too, and resumes. The old copy is only ever run forward:
    after its in-place update the whole parameters FSDP kept from the last forward must be dropped, or
    the second iteration's rollouts use stale weights (they did, before `drop_gathered`)."""
    extra = ("model.train_mode=full", "optim.lr=1e-4", "rl.kl_coef=0.1", "data.heldout=null", "eval.every=0",
             "logging.checkpoint_every=1")
    sharded, single = tmp_path / "fsdp", tmp_path / "one"
    _launch_fsdp(_overrides(shapes_data, sharded, extra=extra))
    config = load_config(TrainConfig, None, _overrides(shapes_data, single, extra=extra))
    run_rl(config)
    assert_same_first_rollouts(sharded, single)
    assert_same_gradients(gradients(sharded, 1), gradients(single, 1))
    for name in ("trained", "old"):
        assert_close(tensors(sharded, 2, name), tensors(single, 2, name), weight_tolerance(single, 2, config.optim.lr))
    # The final folder is a whole diffusers model.
    exported = load_file(sharded / "final" / "transformer" / "diffusion_pytorch_model.safetensors")
    assert_equal(exported, tensors(sharded, 2, "trained"))
    assert (sharded / "final" / "transformer" / "config.json").read_text() == \
        (single / "final" / "transformer" / "config.json").read_text()
    # Resumed from iteration 1 on 2 processes: the whole weights, old copy and moments sliced again, bit for bit.
    resumed = tmp_path / "resumed"
    shutil.copytree(sharded, resumed, ignore=shutil.ignore_patterns("step_000002", "final", "summary.json"))
    (resumed / "checkpoints" / "latest").write_text("step_000001")
    _launch_fsdp(_overrides(shapes_data, resumed, extra=extra), resume=True)
    for name in ("trained", "old", "optimizer"):
        assert_equal(tensors(resumed, 2, name), tensors(sharded, 2, name))


def test_a_sharded_run_refuses_what_it_cannot_do(shapes_data, tmp_path):
    from types import SimpleNamespace

    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy

    from editr1.errors import EditR1Error
    from editr1.trainer.rl_trainer import check_sharding

    config = load_config(TrainConfig, None, _overrides(shapes_data, tmp_path / "x"))
    shipped = dict(fsdp_version=2, activation_checkpointing=False, cpu_offload=OffloadPolicy(),
                   cpu_ram_efficient_loading=False, reshard_after_forward=True)
    check_sharding(config, SimpleNamespace(**shipped), "no", "NO")
    with pytest.raises(EditR1Error, match="fsdp_version 1"):
        check_sharding(config, SimpleNamespace(**{**shipped, "fsdp_version": 1}), "no", "NO")
    with pytest.raises(EditR1Error, match="mixed_precision, dynamo_backend, fsdp_activation_checkpointing, "
                                          "fsdp_offload_params, fsdp_cpu_ram_efficient_loading, fsdp_reshard_after_forward"):
        check_sharding(config, SimpleNamespace(fsdp_version=2, activation_checkpointing=True, cpu_offload=CPUOffloadPolicy(),
                                               cpu_ram_efficient_loading=True, reshard_after_forward=False),
                       "bf16", "INDUCTOR")
    config.rollout.merge_old_adapter = True
    with pytest.raises(EditR1Error, match="rollout.merge_old_adapter"):
        check_sharding(config, SimpleNamespace(**shipped), "no", "NO")


def test_fsdp_over_a_bf16_base_with_checkpointing_trains_like_ddp(shapes_data, tmp_path):
    """The real-scale setting: a bf16 base (its all-gathers mix bf16 weights and float32 LoRA) with gradient
    checkpointing, true CFG, and held-out edits in several chunks. bf16 results depend on how rows are
    batched, so the comparison is with DDP on the same 2 processes, which batches them the same way; the held-out
    rewards agree within a few bf16 roundings, the float32 LoRA's first gradients within float32's."""
    extra = ("model.dtype=bfloat16", "model.gradient_checkpointing=true", "eval.every=1", "eval.batch_size=3",
             "rollout.cfg_scale=2.0", "eval.cfg_scale=2.0")
    sharded, replicated = tmp_path / "fsdp", tmp_path / "ddp"
    _launch_fsdp(_overrides(shapes_data, sharded, extra=extra))
    launch_train("ddp_1node.yaml", _overrides(shapes_data, replicated, extra=extra))
    assert [step for step, _ in rows(sharded, "heldout_reward")] == [0, 1, 2]
    assert_same_rows(sharded, replicated, "heldout_reward", REWARD_ATOL_BF16)
    assert_same_gradients(gradients(sharded, 1), gradients(replicated, 1))


def test_sharded_training_refuses_data_that_would_make_uneven_transformer_calls():
    """Qwen-Image-Edit-2509 runs one transformer call per reference layout in a batch: with mixed reference
    counts two processes could make different numbers of calls, and a sharded forward would wait forever."""
    from editr1.data.jsonl import EditSample
    from editr1.errors import EditR1Error
    from editr1.models.registry import build_tiny
    from editr1.trainer.rl_trainer import check_sharded_data

    def samples(*counts):
        return [EditSample(str(i), tuple(Path(f"{i}_{r}.png") for r in range(n)), "edit", None, None, i + 1)
                for i, n in enumerate(counts)]

    plus = build_tiny("tiny:qwen-image-edit-plus", ["edit"], 0)
    check_sharded_data(plus, {"data.train": samples(2, 2, 2)})
    with pytest.raises(EditR1Error, match=r"data.train: cannot train sharded .* 1 or 2 reference images"):
        check_sharded_data(plus, {"data.train": samples(2, 1, 2)})
    plus.condition_area = 1024 * 1024
    with pytest.raises(EditR1Error, match="model.condition_area"):
        check_sharded_data(plus, {"data.train": samples(1, 1)})
    # One call per batch whatever the data: the other families.
    check_sharded_data(build_tiny("tiny:flux-kontext", ["edit"], 0), {"data.train": samples(1, 1)})
