import random

import numpy as np

from editr1.tasks.shapes.scenes import instruction_text, make_sample, render
from editr1.tasks.shapes.corruptions import corrupted_edits
from editr1.tasks.shapes.verifier import verify_edit


def test_corruptions_are_wrong_edits_and_deterministic():
    scores = []
    for seed in range(40):
        rng = random.Random(seed)
        source, edit, _ = make_sample(rng, "train")
        images = corrupted_edits(random.Random(seed), source, edit, 5)
        again = corrupted_edits(random.Random(seed), source, edit, 5)
        assert len(images) == 5 and all(np.array_equal(a, b) for a, b in zip(images, again))
        assert np.array_equal(images[0], render(source))  # the unchanged copy is always one of them
        assert all(i.shape == (32, 32, 3) and i.dtype == np.uint8 for i in images)
        scores += [verify_edit(render(source), image, instruction_text(edit)) for image in images]
    scores = np.array(scores)
    assert (scores < 0.99).mean() > 0.9  # nearly all are wrong; a few noisy copies may pass the tolerance
    assert 0.05 < scores.mean() < 0.6  # and they span partial credit, not only zeros
