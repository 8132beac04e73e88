import pytest

from editr1.tasks.shapes.scenes import write_shapes_dataset


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory):
    """A small shapes dataset shared by the training tests."""
    folder = tmp_path_factory.mktemp("shapes")
    write_shapes_dataset(folder, n_train=40, n_test=16, seed=1)
    return folder


@pytest.fixture(scope="session")
def tiny_judge_dir(tmp_path_factory):
    """A randomly initialised tiny Qwen2.5-VL judge saved in transformers format."""
    from editr1.rewards.tiny_judge import build_tiny_judge, save_judge

    folder = tmp_path_factory.mktemp("judge")
    save_judge(build_tiny_judge(["remove the red circle", "make the blue square green"], hidden=64, layers=2), folder)
    return folder
