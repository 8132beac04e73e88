import pytest

from editr1.cli.demo import SHIPPED_BASE
from editr1.data.shapes import write_shapes_dataset


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory):
    """A small shapes dataset shared by the training tests."""
    folder = tmp_path_factory.mktemp("shapes")
    write_shapes_dataset(folder, n_train=40, n_test=16, seed=1)
    return folder


def tiny_nft_overrides(data, out, iterations=3):
    """A seconds-long NFT run from the shipped tiny base (it edits, so rewards vary): 2 groups x 4 edits."""
    return [
        f"model.path={SHIPPED_BASE}",
        f"data.train={data / 'train.jsonl'}", f"data.heldout={data / 'test.jsonl'}", f"output_dir={out}",
        f"iterations={iterations}", "rollout.groups_per_iteration=2", "rollout.group_size=4", "rollout.steps=3",
        "eval.samples=8", "eval.every=2", "eval.steps=3", "logging.grid_every=2", "logging.checkpoint_every=2",
        "model.lora.rank=4", "model.lora.alpha=8", "logging.progress=false", "logging.tensorboard=false",
        "optim.lr=1e-3", "optim.micro_batch=4",
    ]


@pytest.fixture(scope="session")
def tiny_judge_dir(tmp_path_factory):
    """A randomly initialised tiny Qwen2.5-VL judge saved in transformers format."""
    from editr1.rewards.tiny_judge import build_tiny_judge, save_judge

    folder = tmp_path_factory.mktemp("judge")
    save_judge(build_tiny_judge(["remove the red circle", "make the blue square green"], hidden=64, layers=2), folder)
    return folder
