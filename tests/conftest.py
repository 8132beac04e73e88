import pytest

from editr1.tasks.shapes.scenes import write_shapes_dataset


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory):
    """A small shapes dataset shared by the training tests."""
    folder = tmp_path_factory.mktemp("shapes")
    write_shapes_dataset(folder, n_train=40, n_test=16, seed=1)
    return folder


@pytest.fixture(scope="session")
def two_reference_data(shapes_data, tmp_path_factory):
    """The shapes dataset with two reference images per row: its own source, then the next row's."""
    import json

    folder = tmp_path_factory.mktemp("two_references")
    for split in ("train", "test"):
        rows = [json.loads(line) for line in (shapes_data / f"{split}.jsonl").read_text().splitlines()]
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as handle:
            for row, following in zip(rows, rows[1:] + rows[:1]):
                images = [str(shapes_data / row["image"]), str(shapes_data / following["image"])]
                handle.write(json.dumps({**row, "image": images, "target": str(shapes_data / row["target"])}) + "\n")
    return folder


@pytest.fixture(scope="session")
def tiny_judge_dir(tmp_path_factory):
    """A randomly initialised tiny Qwen2.5-VL judge saved in transformers format."""
    from editr1.rewards.tiny_judge import build_tiny_judge, save_judge

    folder = tmp_path_factory.mktemp("judge")
    save_judge(build_tiny_judge(["remove the red circle", "make the blue square green"], hidden=64, layers=2), folder)
    return folder
