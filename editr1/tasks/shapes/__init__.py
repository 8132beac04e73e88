"""The synthetic shapes editing task: a CPU-sized task with an exact ground truth.

It plugs into editr1 the way a user's task would: the product packages import nothing from here; the
reward registry names the verifier by its dotted path, and configs name the shipped files by path.

- :mod:`~editr1.tasks.shapes.scenes`: scenes, instructions, rendering, the dataset writer (`editr1 data shapes`)
- :mod:`~editr1.tasks.shapes.verifier`: the programmatic ground-truth reward (`reward.name: shapes_verifier`)
- :mod:`~editr1.tasks.shapes.corruptions`: plausible wrong edits, for teaching a judge
- :mod:`~editr1.tasks.shapes.judge_distill`: `editr1 judge distill`, the tiny judge taught the verifier's score
- :mod:`~editr1.tasks.shapes.config`: `JudgeDistillConfig` and its sections
- ``configs/``: the configs of `editr1 demo` (DiffusionNFT or Flow-GRPO, and its equal-time SFT control)
- ``assets/``: the shipped SFT base (``shapes_base``) and distilled judge (``shapes_judge``)

The paths below are the one home of these shipped files.
"""

from pathlib import Path

TASK_DIR = Path(__file__).resolve().parent
#: The tiny Qwen-Image-Edit fully fine-tuned on the shapes data (configs/shapes_sft.yaml).
SHIPPED_BASE = TASK_DIR / "assets" / "shapes_base"
#: The tiny Qwen2.5-VL judge distilled from the verifier (configs/shapes_judge.yaml).
SHIPPED_JUDGE = TASK_DIR / "assets" / "shapes_judge"
#: The embedded configs of `editr1 demo`, per `--algorithm`, and the SFT config of its `--control`.
DEMO_CONFIGS = {"nft": TASK_DIR / "configs" / "shapes_nft_demo.yaml", "grpo": TASK_DIR / "configs" / "shapes_grpo_demo.yaml"}
DEMO_CONFIG = DEMO_CONFIGS["nft"]
CONTROL_CONFIG = TASK_DIR / "configs" / "shapes_sft_control.yaml"
# The shipped base was trained on this dataset (configs/shapes_sft.yaml); the demo regenerates it.
DATA_SEED, N_TRAIN, N_TEST = 0, 2000, 256
