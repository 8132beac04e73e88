"""Where each edit of an iteration lives: G groups of K edits, edit j of group g at row g * K + j,
split over ranks by whole groups (rank i holds groups i * G_rank .. (i + 1) * G_rank - 1). Torch only."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GroupLayout:
    groups_per_rank: int
    group_size: int
    world: int = 1

    @classmethod
    def split(cls, total_groups: int, group_size: int, world: int) -> "GroupLayout":
        """The layout of `total_groups` groups per iteration shared by `world` ranks; ValueError unless
        they divide evenly (the global batch must not depend on the number of processes)."""
        if total_groups % world:
            raise ValueError(f"{total_groups} groups do not divide over {world} processes")
        return cls(total_groups // world, group_size, world)

    @property
    def total_groups(self) -> int:
        return self.groups_per_rank * self.world

    @property
    def total_rows(self) -> int:
        return self.total_groups * self.group_size

    def group_of_row(self, groups: int | None = None) -> torch.Tensor:
        """The group of every row, for `groups` groups (default: every rank's)."""
        return torch.arange(self.total_groups if groups is None else groups).repeat_interleave(self.group_size)

    def rank_groups(self, rank: int) -> slice:
        """The groups (indices into the global draw) that `rank` rolls out."""
        return slice(rank * self.groups_per_rank, (rank + 1) * self.groups_per_rank)

    def rank_rows(self, rank: int) -> slice:
        """The global rows of `rank`'s edits."""
        return slice(rank * self.groups_per_rank * self.group_size, (rank + 1) * self.groups_per_rank * self.group_size)

    def rows_of_group(self, group: int) -> slice:
        """The rows of one group's K edits (local to the rank that holds it)."""
        return slice(group * self.group_size, (group + 1) * self.group_size)
