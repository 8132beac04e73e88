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
