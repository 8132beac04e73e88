import torch

from editr1.rl.group_layout import GroupLayout


def test_rows_groups_and_ranks_agree():
    layout = GroupLayout(groups_per_rank=2, group_size=3, world=2)
    assert (layout.total_groups, layout.total_rows) == (4, 12)
    assert layout.group_of_row().tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert layout.group_of_row(2).tolist() == [0, 0, 0, 1, 1, 1]
    rows = torch.arange(layout.total_rows)
    for rank in range(2):
        own = rows[layout.rank_rows(rank)]
        assert (layout.group_of_row()[own] == torch.arange(4)[layout.rank_groups(rank)].repeat_interleave(3)).all()
    assert rows[layout.rows_of_group(1)].tolist() == [3, 4, 5]


def test_the_global_group_count_is_split_over_ranks_or_refused():
    assert GroupLayout.split(24, 12, 4) == GroupLayout(groups_per_rank=6, group_size=12, world=4)
    assert GroupLayout.split(24, 12, 1).total_groups == 24
    import pytest

    with pytest.raises(ValueError, match="24 groups do not divide over 5 processes"):
        GroupLayout.split(24, 12, 5)
