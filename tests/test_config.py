import pytest

from editr1.config import ConfigError, TrainConfig, SFTConfig, load_config, save_config


def test_defaults_follow_the_reference_recipe():
    config = load_config(TrainConfig)
    assert (config.rl.beta, config.rl.kl_coef, config.rl.adv_clip) == (1.0, 1e-4, 5.0)
    assert (config.rollout.group_size, config.rollout.groups_per_iteration, config.rollout.steps) == (12, 24, 6)
    assert config.rollout.sampler == "dpmpp_2m"
    assert (config.model.lora.rank, config.model.lora.alpha) == (32, 64.0)
    assert (config.optim.lr, config.optim.weight_decay, config.optim.grad_clip) == (3e-4, 1e-4, 1.0)


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rollout:\n  group_size: 4\noptim:\n  lr: 1e-3\n")
    config = load_config(TrainConfig, path, ["rollout.steps=3", "optim.betas=[0.9, 0.95]", "model.lora.target_modules=[to_q]"])
    assert config.rollout.group_size == 4 and config.rollout.steps == 3
    assert config.optim.lr == 1e-3 and config.optim.betas == (0.9, 0.95)
    assert config.model.lora.target_modules == ["to_q"]
    save_config(config, tmp_path / "saved.yaml")
    assert load_config(TrainConfig, tmp_path / "saved.yaml") == config


@pytest.mark.parametrize(
    "override, message",
    [
        ("rollout.group_sise=4", "rollout.group_sise: unknown field (did you mean 'group_size'?)"),
        ("rollout.group_size=true", "rollout.group_size: expected int"),
        ("rollout.sampler=rk4", "rollout.sampler: expected one of ['euler', 'dpmpp_2m', 'flow_grpo_sde', 'cps_sde']"),
        ("optim.betas=[0.9]", "optim.betas: expected 2 items"),
        ("rl=3", "rl: expected a mapping"),
        ("rollout.steps", "expected KEY=VALUE"),
    ],
)
def test_errors_name_the_field(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(TrainConfig, None, [override])
    assert message in str(error.value)


def test_invalid_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="broken.yaml: invalid YAML"):
        load_config(SFTConfig, path)


def test_a_set_is_blamed_only_for_its_own_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rollout: {group_size: 1}\nrl: {beta: 0}\n")
    with pytest.raises(ConfigError, match=rf"^{path}: rl.beta: must be > 0"):
        load_config(TrainConfig, path, ["rollout.group_size=4"])  # fixes one of the file's two mistakes
    with pytest.raises(ConfigError, match=r"^--set optim.lr=-1: optim.lr: must be > 0"):
        load_config(TrainConfig, None, ["optim.lr=-1"])


def test_family_values_take_the_models_published_settings_and_others_are_refused():
    from editr1.config import with_family_settings

    config = load_config(TrainConfig, None, ["eval.steps=family", "eval.cfg_scale=family", "eval.guidance=2.0"])
    evaluation, taken = with_family_settings(config.eval, 40, 4.0, None)
    assert (evaluation.steps, evaluation.cfg_scale, evaluation.guidance) == (40, 4.0, 2.0)
    assert taken == ["eval.steps=40", "eval.cfg_scale=4.0"]
    # Numbers stay the config's, and the defaults are numbers (the shapes task's).
    assert with_family_settings(TrainConfig().eval, 40, 4.0, 3.5) == (TrainConfig().eval, [])
    with pytest.raises(ConfigError, match=r"eval\.steps: .*'fast'"):
        load_config(TrainConfig, None, ["eval.steps=fast"])
    with pytest.raises(ConfigError, match=r"eval\.cfg_scale: must be >= 1.0"):
        load_config(TrainConfig, None, ["eval.cfg_scale=0.5"])
