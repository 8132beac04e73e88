import pytest
import torch

from editr1.tasks.shapes.scenes import Edit, Scene, Shape, apply_edit, instruction_text, render
from editr1.errors import EditR1Error
from editr1.rewards.registry import REWARDS, build_reward


def test_verifier_is_registered_and_scores_through_the_contract():
    assert "shapes_verifier" in REWARDS
    reward = build_reward("shapes_verifier")
    scene = Scene((Shape("circle", "red", 0), Shape("square", "blue", 4)))
    edit = Edit("remove", "circle", "red")
    as_tensor = lambda a: torch.from_numpy(a).permute(2, 0, 1).float() / 255  # noqa: E731
    batch = reward.score([[as_tensor(render(scene))]] * 2, [as_tensor(render(apply_edit(scene, edit))), as_tensor(render(scene))],
                         [instruction_text(edit)] * 2, [None, None])
    assert batch.valid.all()
    assert batch.scores.tolist() == pytest.approx([1.0, 0.0])
    reward.check_ready()  # the base hook: nothing to wait for


def test_the_old_one_image_per_sample_contract_is_a_clear_error():
    reward = build_reward("shapes_verifier")
    image = torch.zeros(3, 32, 32)
    with pytest.raises(ValueError, match=r"sources\[0\]: expected a non-empty list .* got Tensor"):
        reward.score([image], [image], ["x"], [None])
    with pytest.raises(ValueError, match=r"sources\[0\]: expected a non-empty list"):
        reward.score([[]], [image], ["x"], [None])
    with pytest.raises(ValueError, match=r"sources\[0\]\[1\]: expected a \(3, H, W\) image tensor, got \(32, 32\)"):
        reward.score([[image, image[0]]], [image], ["x"], [None])


def test_unknown_reward_and_bad_options():
    with pytest.raises(EditR1Error, match="unknown reward 'nope'.*shapes_verifier"):
        build_reward("nope")
    with pytest.raises(EditR1Error, match="reward.options"):
        build_reward("shapes_verifier", {"temperature": 2})
