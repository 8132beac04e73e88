"""Each process of a launch edits its share of the held-out samples (`rank_share`): the shares are equal in
size (so every process makes the same transformer calls) and, in rank order with the padding dropped, are
the samples in order."""

import pytest

from editr1.eval.heldout import rank_share


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7, 8])
@pytest.mark.parametrize("count", [1, 2, 3, 5, 8, 13, 64])
def test_shares_are_equal_and_give_back_every_sample_in_order(count, world):
    shares = [rank_share(count, world, rank) for rank in range(world)]
    assert len({len(share) for share in shares}) == 1
    size = len(shares[0])
    assert size == -(-count // world)
    joined = [index for share in shares for index in share]
    assert joined[:count] == list(range(count))
    # The padding repeats real samples (a padded row needs a real sample's conditions).
    assert all(0 <= index < count for index in joined)


def test_a_share_past_the_last_sample_repeats_the_last_one():
    assert [rank_share(3, 4, rank) for rank in range(4)] == [[0], [1], [2], [2]]
    assert [rank_share(7, 2, rank) for rank in range(2)] == [[0, 1, 2, 3], [4, 5, 6, 6]]
