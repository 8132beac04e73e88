"""A plugin outside editr1, written as a user would (docs/extending.md): a model family, a reward and a loss
that configs use by their dotted paths, `toy_plugin:ToyEditAdapter`, `toy_plugin:Brightness` and
`toy_plugin:nft_with_velocity_penalty`. Importable
because pytest puts tests/ on sys.path; a user's own package would be installed or on PYTHONPATH."""

import torch

from editr1.models.qwen_image_edit import QwenImageEditAdapter
from editr1.rewards.base import Reward, RewardBatch, check_batch
from editr1.rl.losses import nft


class ToyEditAdapter(QwenImageEditAdapter):
    """Qwen-Image-Edit's architecture under a pipeline class of its own, as a fork's would be: it inherits
    the whole adapter contract, including `build_tiny` (`model.path: tiny:toy_plugin:ToyEditAdapter`)."""

    family = "toy-edit"
    pipeline_class = "ToyEditPipeline"


class Brightness(Reward):
    """1 for an edit whose mean brightness is `target`, falling linearly to 0 one unit away."""

    name = "toy_brightness"

    def __init__(self, target: float = 0.5):
        self.target = target

    def score(self, sources, edited, prompts, requirements):
        check_batch(sources, edited, prompts, requirements)
        means = torch.stack([image.float().mean() for image in edited])
        return RewardBatch((1 - (means - self.target).abs()).clamp(0, 1), torch.ones(len(edited), dtype=torch.bool))


def nft_with_velocity_penalty(*, v_theta, penalty=1e-3, **nft_inputs):
    """The NFT loss plus a small penalty on the trained velocity's magnitude, logged as its own metric."""
    loss, metrics = nft(v_theta=v_theta, **nft_inputs)
    magnitude = v_theta.float().pow(2).mean()
    return loss + penalty * magnitude, {**metrics, "velocity_magnitude": magnitude.detach()}


class DownJudge(Reward):
    """A judge that is down: every score is an error (an `EditR1Error`, as a judge client raises)."""

    name = "toy_down_judge"

    def score(self, sources, edited, prompts, requirements):
        from editr1.errors import EditR1Error

        raise EditR1Error("the judge at http://127.0.0.1:9/v1 is down (toy_plugin:DownJudge)")


class FailsOnProcess(Brightness):
    """Brightness, except on process `rank` of a launch, where scoring is a bug (a RuntimeError)."""

    name = "toy_fails_on_process"

    def __init__(self, rank: int = 1):
        super().__init__()
        self.rank = rank

    def score(self, sources, edited, prompts, requirements):
        import os

        if int(os.environ.get("RANK", "0")) == self.rank:
            raise RuntimeError(f"toy_plugin:FailsOnProcess: a bug on process {self.rank}")
        return super().score(sources, edited, prompts, requirements)


class Raises(Brightness):
    """Brightness whose scoring is a bug (a ZeroDivisionError) from its `fail_from`-th call on."""

    name = "toy_raises"

    def __init__(self, fail_from: int = 1):
        super().__init__()
        self.fail_from, self.calls = fail_from, 0

    def score(self, sources, edited, prompts, requirements):
        self.calls += 1
        if self.calls >= self.fail_from:
            raise ZeroDivisionError("division by zero")
        return super().score(sources, edited, prompts, requirements)


class BreaksContract(Brightness):
    """Brightness whose answer breaks the reward contract on the batch's last sample, as `breach` says:
    "nan" (a NaN score marked valid), "seven" (a score of 7.0) or "short" (one score and flag fewer)."""

    name = "toy_breaks_contract"

    def __init__(self, breach: str = "nan"):
        super().__init__()
        self.breach = breach

    def score(self, sources, edited, prompts, requirements):
        batch = super().score(sources, edited, prompts, requirements)
        if self.breach == "short":
            return RewardBatch(batch.scores[:-1], batch.valid[:-1])
        scores = batch.scores.clone()
        scores[-1] = {"nan": float("nan"), "seven": 7.0}[self.breach]
        return RewardBatch(scores, batch.valid)


class RecordsReferences(Brightness):
    """Brightness, recording what it was shown: each sample's reference images (their count and mean pixels)
    are appended to `<folder>/seen-<pid>.jsonl`, one file per process."""

    name = "toy_records_references"

    def __init__(self, folder: str, target: float = 0.5):
        super().__init__(target)
        self.folder = folder

    def score(self, sources, edited, prompts, requirements):
        import json
        import os

        with open(os.path.join(self.folder, f"seen-{os.getpid()}.jsonl"), "a", encoding="utf-8") as handle:
            for references in sources:
                handle.write(json.dumps([float(image.double().mean()) for image in references]) + "\n")
        return super().score(sources, edited, prompts, requirements)


class SkipsDark(Brightness):
    """Brightness that cannot score an edit darker than `below` (mean pixel): it is marked unscored."""

    name = "toy_skips_dark"

    def __init__(self, below: float = 0.5, target: float = 0.5):
        super().__init__(target)
        self.below = below

    def score(self, sources, edited, prompts, requirements):
        batch = super().score(sources, edited, prompts, requirements)
        dark = torch.stack([image.float().mean() < self.below for image in edited])
        failures = {i: "too dark to judge" for i in dark.nonzero().flatten().tolist()}
        return RewardBatch(torch.where(dark, float("nan"), batch.scores), ~dark, failures=failures)


class Constant(Reward):
    """The same score for every edit: a reward that ties every pair."""

    name = "toy_constant"

    def __init__(self, value: float = 0.5):
        self.value = value

    def score(self, sources, edited, prompts, requirements):
        check_batch(sources, edited, prompts, requirements)
        return RewardBatch(torch.full((len(edited),), float(self.value)), torch.ones(len(edited), dtype=torch.bool))
