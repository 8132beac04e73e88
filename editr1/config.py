"""YAML configs validated into typed dataclasses, with `--set a.b=value` overrides.

Every error names the file and the dotted field, e.g.
`configs/demo.yaml: rollout.group_size: expected int, got 'eight'`.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from editr1.errors import EditR1Error

T = TypeVar("T")


class ConfigError(EditR1Error):
    pass


# Numeric bounds checked at load time: (section class, field) -> (minimum, maximum, exclusive minimum).
_BOUNDS: dict[tuple[str, str], tuple[float | None, float | None, bool]] = {}


def register_bounds(cls_name: str, **fields: tuple) -> None:
    """Numeric bounds of the fields of config section `cls_name` (a dataclass's name), checked by
    `load_config`: `field=(minimum, maximum)` or `(minimum, maximum, True)` for an exclusive minimum;
    None: unbounded. A task's own config sections register theirs the same way."""
    for name, spec in fields.items():
        low, high, *exclusive = spec
        _BOUNDS[(cls_name, name)] = (low, high, bool(exclusive and exclusive[0]))


@dataclass
class LoraConfig:
    rank: int = 32
    alpha: float = 64.0
    #: None: the adapter's default attention projections.
    target_modules: list[str] | None = None


@dataclass
class ModelConfig:
    #: A diffusers-format folder, a hub id, or `tiny:<family>` (e.g. `tiny:qwen-image-edit`) to build that
    #: family's tiny preset.
    path: str = field(default="tiny:qwen-image-edit", metadata={"path": "if_exists"})
    #: A family name of `editr1.models.registry.FAMILIES` or an adapter's dotted path `package.module:Class`
    #: (docs/extending.md); null: the family of the pipeline class in the model's `model_index.json`.
    family: str | None = None
    resolution: int = 32
    #: Source-image pixel area for conditioning; null: the training resolution. Qwen-Image-Edit's
    #: diffusers pipeline uses 1048576 (1024^2): set that to condition exactly as it does at inference.
    condition_area: int | None = None
    #: Weights dtype of the base model; trainable LoRA/optimizer math stays float32 at the loss.
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    train_mode: Literal["lora", "full"] = "lora"
    lora: LoraConfig = field(default_factory=LoraConfig)
    #: Recompute activations in the backward pass (memory for time); turns cuDNN attention off (a known crash).
    gradient_checkpointing: bool = False
    #: `torch.compile` the transformer (GPU: faster steps after a compile of a few minutes).
    compile: bool = False
    #: Keep the text encoder(s) (Qwen2.5-VL; CLIP and T5) on the CPU, moved to the training device only
    #: while they encode (`editr1 train`): frees their GPU memory during rollouts and the update. Changes
    #: no numbers; each encoding pays two host-device copies of the encoder.
    offload_text_encoder: bool = False


@dataclass
class DataConfig:
    train: str = field(default="data/shapes/train.jsonl", metadata={"path": "always"})
    heldout: str | None = field(default="data/shapes/test.jsonl", metadata={"path": "always"})
    max_pixels: int = 64 * 1024 * 1024
    #: Longest instruction in text-encoder tokens; null: the model family's own limit.
    max_prompt_tokens: int | None = None
    #: What a longer instruction does, decided when the data is loaded: an error naming file and
    #: line, or truncation to `max_prompt_tokens` (reported once, with the count).
    prompt_overflow: Literal["error", "truncate"] = "error"
    #: A folder of precomputed conditions (`editr1 precompute CONFIG` writes it): `editr1 train` and `editr1 sft`
    #: read each sample's encoded instruction and source images from it and never run the text encoder (kept on
    #: the CPU). Refused if built for another model, other settings, or other samples. null: encode while
    #: training.
    conditions_cache: str | None = field(default=None, metadata={"path": "always"})


@dataclass
class NamedRewardConfig:
    """A reward by name and options (an evaluation-only reward of `eval.rewards`)."""

    #: A reward name of `editr1.rewards.registry.REWARDS` or a reward's dotted path `package.module:Name`.
    name: str
    #: Keyword arguments of the reward; a string naming a file or folder beside the config is a path.
    options: dict[str, Any] = field(default_factory=dict, metadata={"path": "options"})
    #: How metrics, plots and the report name it (letters, digits, _ and -); null: its name, with _2, _3... on
    #: repeats.
    label: str | None = None

    @staticmethod
    def from_raw(value: Any, where: str) -> Any:
        """A label must fit in a metric's name (`reward_<label>_mean`)."""
        label = value.get("label") if isinstance(value, dict) else None
        if isinstance(label, str) and not LABEL.fullmatch(label):
            raise ConfigError(f"{where}.label: {label!r}: use letters, digits, _ and - (starting with a letter or "
                              "digit)")
        return value


#: What a reward's label may hold.
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def refuse_repeated_labels(entries: Any, where: str) -> None:
    """ConfigError naming `<where>[i].label` where a list of rewards gives one label twice."""
    if not isinstance(entries, list):
        return
    seen = set()
    for i, entry in enumerate(entries):
        label = entry.get("label") if isinstance(entry, dict) else None
        if label is not None and label in seen:
            raise ConfigError(f"{where}[{i}].label: {label!r} names another reward too")
        seen.add(label)


@dataclass
class RewardTermConfig(NamedRewardConfig):
    """One reward of several (`reward:` given as a list)."""

    #: Relative weight: the combined score is the weighted mean of the rewards' scores.
    weight: float = 1.0


@dataclass
class RewardConfig:
    """One reward (`name`, `options`), or several: `reward:` given as a list of `{name, options, weight}`
    (the same as `terms:`), combined as the weighted mean of their scores."""

    #: A reward name of `editr1.rewards.registry.REWARDS` or a reward's dotted path `package.module:Name`;
    #: null when `terms` names the rewards.
    name: str | None = "shapes_verifier"
    #: Keyword arguments of the reward; a string naming a file or folder beside the config is a path.
    options: dict[str, Any] = field(default_factory=dict, metadata={"path": "options"})
    #: Several rewards, each `{name, options, weight, label}` (then `name` and `options` are not given).
    terms: list[RewardTermConfig] = field(default_factory=list)
    #: Training only: score each rollout batch on a background thread while the next batch rolls out.
    overlap: bool = True

    @staticmethod
    def from_raw(value: Any, where: str) -> Any:
        """A list is the rewards' terms; a mapping gives a name or terms, never both."""
        if isinstance(value, list):
            value = {"terms": value, "name": None}
        if not isinstance(value, dict):
            return value
        if not value.get("terms"):  # absent, or empty beside a name (how a run folder saves one reward)
            if value.get("name", "") is None or "terms" in value and "name" not in value:
                raise ConfigError((f"{where}: " if where else "") + ("the list of rewards is empty" if "terms" in value
                                                                   else "name a reward, or give a list of rewards"))
            return value
        if value.get("name") is not None or value.get("options"):
            raise ConfigError(f"{where + ': ' if where else ''}give one reward (name and options) or a list of rewards, "
                              "not both")
        refuse_repeated_labels(value["terms"], f"{where}.terms" if where else "terms")
        return {**value, "name": None, "options": {}}

    def term_list(self) -> list[RewardTermConfig]:
        """The rewards, each with its weight (one reward: weight 1)."""
        return self.terms or [RewardTermConfig(self.name, self.options)]

    def term_section(self, section: str, index: int) -> str:
        """Where reward `index` of `term_list()` is configured, for errors: `reward` or `reward.terms[1]`."""
        return f"{section}.terms[{index}]" if self.terms else section


@dataclass
class RolloutConfig:
    groups_per_iteration: int = 24
    group_size: int = 12
    steps: int = 6
    #: An ODE sampler (euler, dpmpp_2m) for rl.algorithm nft; an SDE for grpo: flow_grpo_sde (Flow-GRPO's) or
    #: cps_sde (coefficients-preserving).
    sampler: Literal["euler", "dpmpp_2m", "flow_grpo_sde", "cps_sde"] = "dpmpp_2m"
    #: The SDE's noise level: Flow-GRPO's a (about 0.7), or CPS's eta in (0, 1].
    noise_level: float = 0.7
    cfg_scale: float = 1.0
    guidance: float | None = None
    batch_size: int = 64
    #: Roll out with the old LoRA merged into the base weights (no adapter matmuls; the base is restored
    #: from a CPU copy afterwards, bit for bit).
    merge_old_adapter: bool = False


@dataclass
class RLConfig:
    #: An algorithm of `editr1.trainer.algorithms.ALGORITHMS` (nft: DiffusionNFT, grpo: Flow-GRPO) or the dotted
    #: path `package.module:Class` of one defined elsewhere.
    algorithm: str = "nft"
    #: NFT's loss: one of `editr1.rl.losses.LOSSES` or the dotted path `package.module:name` of one with its keywords.
    loss: str = "nft"
    beta: float = 1.0
    kl_coef: float = 1e-4
    adv_clip: float = 5.0
    std_mode: Literal["global", "group"] = "global"
    #: Several rewards: `combined` normalises their weighted mean (rl.std_mode); `per_reward` normalises each
    #: reward within its group, then standardises their weighted sum over the batch (GDPO).
    reward_normalization: Literal["combined", "per_reward"] = "combined"
    filter_rule: Literal["paper", "strict", "none"] = "paper"
    filter_mean_threshold: float = 0.9
    filter_std_threshold: float = 0.05
    ban_saturated: bool = False
    timestep_fraction: float = 0.99
    #: GRPO's PPO clip range on the probability ratio.
    clip_range: float = 1e-4
    old_policy_schedule: Literal["linear", "delayed", "linear_fast", "on_policy"] = "linear"
    #: Fail the iteration when more than this fraction of samples could not be scored.
    max_unscored_fraction: float = 0.25


@dataclass
class OptimConfig:
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)
    #: AdamW's epsilon (torch's default). Adam's step is g/(|g|+eps) for a new gradient: a larger eps keeps
    #: tiny gradients from taking full-size steps.
    eps: float = 1e-8
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    micro_batch: int = 16


#: The value of `eval.steps`, `eval.cfg_scale` or `eval.guidance` that takes the model family's published
#: inference setting (its adapter's `inference`), so that a config names no family's numbers.
FAMILY = "family"


@dataclass
class EvalConfig:
    every: int = 25
    samples: int = 128
    #: The defaults are the shapes task's (a CPU run); `family`: the family's published value (e.g. 40 for
    #: Qwen-Image-Edit-2511), as the shipped real-model configs set.
    steps: int | Literal["family"] = 8
    sampler: Literal["euler", "dpmpp_2m"] = "euler"
    #: True CFG (1: off); `family`: the family's published value (Qwen-Image-Edit 4.0, distilled models 1.0).
    cfg_scale: float | Literal["family"] = 1.0
    #: Distilled guidance of guidance-embedded models; null: `rollout.guidance`; `family`: the family's
    #: published inference value (FLUX.1 Kontext 3.5, FLUX.2 [dev] 4.0; none for the others).
    guidance: float | Literal["family"] | None = None
    seed: int = 1234
    #: Edits sampled at once in an evaluation (lower it if the evaluation runs out of memory).
    batch_size: int = 64
    #: The held-out reward; null (or the training reward's own settings): the training reward, scored once
    #: (`editr1 sft`, which has none, must set it).
    reward: RewardConfig | None = None
    #: Also score the held-out edits with the training reward (e.g. the judge next to the verifier):
    #: the judge's reward rising while the verifier's does not is reward hacking, made visible.
    track_training_reward: bool = False
    #: Evaluation-only rewards, each `{name, options}`: never trained on, they score the held-out edits at every
    #: evaluation (a paired gain against step 0, drawn in reward_curve.png), and the hacking alarm watches them.
    rewards: list[NamedRewardConfig] = field(default_factory=list)
    #: The hacking alarm holds after this many evaluations in a row in which the training reward on the held-out
    #: set rose while an evaluation-only reward fell, each beyond its standard error (0: no alarm).
    hacking_patience: int = 2

    @staticmethod
    def from_raw(value: Any, where: str) -> Any:
        if isinstance(value, dict):
            refuse_repeated_labels(value.get("rewards"), f"{where}.rewards" if where else "rewards")
        return value


def with_family_settings(evaluation: EvalConfig, steps: int, cfg_scale: float, guidance: float | None
                         ) -> tuple[EvalConfig, list[str]]:
    """`evaluation` with each `family` value replaced by the family's published setting (its adapter's
    `inference`), and what was taken, as `field=value` lines for the run's log."""
    published = {"steps": steps, "cfg_scale": cfg_scale, "guidance": guidance}
    taken = {name: value for name, value in published.items() if getattr(evaluation, name) == FAMILY}
    return dataclasses.replace(evaluation, **taken), [f"eval.{name}={value}" for name, value in taken.items()]


@dataclass
class LoggingConfig:
    grid_every: int = 10
    grid_groups: int = 4
    checkpoint_every: int = 10
    #: Checkpoints kept on disk, newest first (0: all). Each holds the trained and old weights and
    #: the optimizer state: about 1.5 GB for a rank-32 Qwen-Image LoRA.
    keep_checkpoints: int = 3
    #: Experiment trackers (accelerate's), each sent every row of `metrics.jsonl` (which stays the record), the
    #: run's config and its images: tensorboard (in the run folder's `tensorboard/`), wandb, trackio, mlflow (each
    #: an extra: `pip install 'editr1[wandb]'`). []: metrics.jsonl only.
    trackers: list[Literal["tensorboard", "wandb", "trackio", "mlflow"]] = field(default_factory=lambda: ["tensorboard"])
    #: The trackers' project: wandb's and trackio's project, mlflow's experiment.
    project: str = "editr1"
    progress: bool = True

    @staticmethod
    def from_raw(value: Any, where: str) -> Any:
        """Read the field that `trackers` replaced (run folders saved before keep resuming), and refuse a tracker
        named twice."""
        if not isinstance(value, dict):
            return value
        if "tensorboard" in value:
            if "trackers" in value:
                raise ConfigError(f"{where}.tensorboard: replaced by {where}.trackers; give only trackers")
            value = {**value, "trackers": ["tensorboard"] if value["tensorboard"] else []}
            del value["tensorboard"]
        trackers = value.get("trackers")
        if isinstance(trackers, list):
            twice = sorted({str(name) for name in trackers if trackers.count(name) > 1})
            if twice:
                raise ConfigError(f"{where}.trackers: {twice[0]} is named twice")
        return value


@dataclass
class TrainConfig:
    """`editr1 train`: online RL post-training (`rl.algorithm`: DiffusionNFT or Flow-GRPO)."""

    seed: int = 0
    output_dir: str = "runs/nft"
    iterations: int = 100
    #: Stop after this many seconds of training (0: no limit); used for equal-time comparisons.
    time_budget_s: float = 0.0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


@dataclass
class SFTConfig:
    """`editr1 sft`: supervised flow matching on (source, instruction, target)."""

    seed: int = 0
    output_dir: str = "runs/sft"
    steps: int = 1000
    time_budget_s: float = 0.0
    batch_size: int = 32
    lr: float = 1e-3
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = 50
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    #: EMA decay of the weights that are saved (0 disables the EMA).
    ema_decay: float = 0.999
    #: dtype of the saved transformer; float16 halves the size of a shipped base.
    save_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    model: ModelConfig = field(default_factory=lambda: ModelConfig(train_mode="full"))
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    #: Steps are short: a checkpoint (weights, EMA, optimizer) every 250 of them, not every 10.
    logging: LoggingConfig = field(default_factory=lambda: LoggingConfig(checkpoint_every=250))


register_bounds("LoraConfig", rank=(1, None), alpha=(0, None, True))
register_bounds("ModelConfig", resolution=(8, None), condition_area=(64, None))
register_bounds("DataConfig", max_pixels=(1, None), max_prompt_tokens=(1, None))
register_bounds("RewardTermConfig", weight=(0, None, True))
register_bounds("RolloutConfig", groups_per_iteration=(1, None), group_size=(2, None), steps=(1, None), batch_size=(1, None),
        cfg_scale=(1.0, None))
register_bounds("RLConfig", beta=(0, None, True), kl_coef=(0, None), adv_clip=(0, None, True), timestep_fraction=(0, 1, True),
        filter_mean_threshold=(0, 1), filter_std_threshold=(0, None), max_unscored_fraction=(0, 0.99))
register_bounds("OptimConfig", lr=(0, None, True), eps=(0, None, True), weight_decay=(0, None), grad_clip=(0, None, True), micro_batch=(1, None))
register_bounds("EvalConfig", every=(0, None), samples=(2, None), steps=(1, None), cfg_scale=(1.0, None),
                batch_size=(1, None), hacking_patience=(0, None))
register_bounds("LoggingConfig", grid_every=(0, None), grid_groups=(0, None), checkpoint_every=(1, None), keep_checkpoints=(0, None))
register_bounds("TrainConfig", iterations=(0, None), time_budget_s=(0, None))
register_bounds("SFTConfig", steps=(1, None), time_budget_s=(0, None), batch_size=(1, None), lr=(0, None, True),
        warmup_steps=(0, None), weight_decay=(0, None), grad_clip=(0, None, True), ema_decay=(0, 0.99999))


# ---- validation -------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) if arg is not type(None) else "null" for arg in args)
    if origin is Literal:
        return " or ".join(repr(arg) for arg in args)
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(value, option, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if hasattr(tp, "from_raw"):  # a section that also takes another form (a list of rewards)
            value = tp.from_raw(value, where)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _build(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        return origin(_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads "1e-3" (no dot) as a string.
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected int, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {_type_name(tp)}")


def _build(cls: type[T], data: dict, where: str) -> T:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{where}.{key}" if where else key
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f"; known: {', '.join(names)}"
            raise ConfigError(f"{dotted}: unknown field{hint}")
        kwargs[key] = _convert(value, hints[key], dotted)
        _check_bounds(cls.__name__, key, kwargs[key], dotted)
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where + '.' if where else ''}{missing[0]}: required")
    return cls(**kwargs)


def _check_bounds(cls_name: str, key: str, value: Any, dotted: str) -> None:
    if (cls_name, key) not in _BOUNDS or value is None or isinstance(value, str):
        return
    low, high, exclusive = _BOUNDS[(cls_name, key)]
    if low is not None and (value <= low if exclusive else value < low):
        raise ConfigError(f"{dotted}: must be {'>' if exclusive else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise ConfigError(f"{dotted}: must be <= {high}, got {value}")


def _apply_override(data: dict, assignment: str, cls: type) -> None:
    """Set the field `a.b` of the raw config to `value` (a path in it is relative to the working directory)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment}: expected KEY=VALUE, e.g. seed=1")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {assignment}: empty field name in {key!r}")
    nested: Any = yaml.safe_load(raw)
    for part in reversed(parts):
        nested = {part: nested}
    _resolve_paths(cls, nested, Path.cwd())
    node = data
    for part in parts[:-1]:
        if node.get(part) is None:
            node[part] = {}
        node, nested = node[part], nested[part]
        if not isinstance(node, dict):
            raise ConfigError(f"--set {assignment}: '{part}' is not a section")
    node[parts[-1]] = nested[parts[-1]]


# ---- paths: relative to the config file that names them -------------------------------------


PACKAGE_PREFIX = "editr1:"


def package_path(relative: str) -> Path:
    """A file shipped inside the installed package: `editr1:tasks/shapes/assets/shapes_base`."""
    return Path(__file__).resolve().parent / relative


def _resolve_one(value: Any, kind: str, base: Path) -> Any:
    if not isinstance(value, str) or not value or value.startswith("tiny:"):
        return value
    if value.startswith(PACKAGE_PREFIX):
        return str(package_path(value[len(PACKAGE_PREFIX):]))
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    candidate = base / path
    # A model or reward option that is no file here is a hub id or a plain setting: left as given.
    if kind == "always" or candidate.exists():
        return str(candidate)
    return value


def _dataclass_in(tp: Any) -> type | None:
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def _resolve_paths(cls: type, data: dict, base: Path) -> None:
    """Resolve, in place, the raw values of path fields (`field(metadata={"path": ...})`) against `base`."""
    hints = typing.get_type_hints(cls)
    for spec in dataclasses.fields(cls):
        if spec.name not in data:
            continue
        value, kind = data[spec.name], spec.metadata.get("path")
        if kind == "options" and isinstance(value, dict):
            data[spec.name] = {key: _resolve_one(item, "if_exists", base) for key, item in value.items()}
        elif kind:
            data[spec.name] = _resolve_one(value, kind, base)
        elif (inner := _dataclass_in(hints[spec.name])) is not None:
            if isinstance(value, dict):
                _resolve_paths(inner, value, base)
            elif isinstance(value, list):
                for item in value:
                    if isinstance(item, dict):
                        _resolve_paths(inner, item, base)


def _names_field(problem: str, assignment: str) -> bool:
    """Whether a validation message (`a.b: ...`) is about the field `assignment` sets, or inside it."""
    key = assignment.split("=", 1)[0].strip()
    field_name = problem.split(":", 1)[0].split("[", 1)[0]
    return field_name == key or field_name.startswith(key + ".")


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] = ()) -> T:
    """Read YAML at `path` (or the defaults), apply `--set` overrides, validate into `cls`.

    Paths in the file are relative to the file's folder; paths in `--set` values to the working
    directory; `editr1:<path>` names a file shipped in the package. Errors blame the file or the
    `--set` that caused them.
    """
    data: dict = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: invalid YAML: {error}") from error
        if isinstance(data, list) and hasattr(cls, "from_raw"):  # a reward file holding a list of rewards
            data = cls.from_raw(data, str(path))
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        _resolve_paths(cls, data, path.resolve().parent)

    def attempt() -> tuple[T | None, str | None]:
        try:
            # A section that takes other forms (a reward's `terms` beside a `name`) is checked as a whole file too.
            return _build(cls, cls.from_raw(data, "") if hasattr(cls, "from_raw") else data, ""), None
        except ConfigError as error:
            return None, str(error)

    config, problem = attempt()
    for assignment in overrides:
        _apply_override(data, assignment, cls)
        before, (config, problem) = problem, attempt()
        # A new problem in the assigned field is the assignment's; any other stays the file's.
        if problem is not None and problem != before and _names_field(problem, assignment):
            raise ConfigError(f"--set {assignment}: {problem}")
    if problem is not None:
        raise ConfigError(f"{source}: {problem}")
    _absolute_defaults(config)
    return config


def _absolute_defaults(config: Any) -> None:
    """Default data paths are relative to the working directory: made absolute, so that a saved
    config (a run's `config.yaml`) means the same files from anywhere."""
    for spec in dataclasses.fields(config):
        value = getattr(config, spec.name)
        if dataclasses.is_dataclass(value):
            _absolute_defaults(value)
        elif spec.metadata.get("path") == "always" and isinstance(value, str) and not Path(value).is_absolute():
            setattr(config, spec.name, str(Path.cwd() / value))


def config_to_dict(config: Any) -> dict:
    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(config))


def save_config(config: Any, path: Path) -> None:
    from editr1.fileio import write_text_atomic

    write_text_atomic(Path(path), yaml.safe_dump(config_to_dict(config), sort_keys=False))
