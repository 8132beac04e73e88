import stat

import numpy as np
import pytest
import torch
from PIL import Image

from editr1.eval.heldout import EvalResult, load_eval, save_eval
from editr1.eval.report import ReportSection, write_report
from editr1.eval.visuals import (
    PAD,
    before_after_grid,
    group_grid,
    image_grid,
    line_height,
    reward_curve,
    _text_width,
    wrap_text,
)
from editr1.fileio import default_file_mode
from editr1.trainer.progress import phase_progress


def _solid(rgb, h=8, w=8):
    return torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1).expand(3, h, w).clone()


def test_grid_size_arithmetic_without_captions():
    img = _solid((1.0, 0.0, 0.0), h=8, w=6)
    grid = image_grid([[img, img, img], [img]], None, scale=2)
    assert grid.size == (PAD + 3 * (12 + PAD), PAD + 2 * (16 + PAD))


def test_grid_size_arithmetic_with_captions():
    img = _solid((0.0, 1.0, 0.0))
    grid = image_grid([[img, img], [img]], [["a", "b"], ["c"]], scale=4)
    assert grid.size == (PAD + 2 * (32 + PAD), PAD + 2 * (32 + line_height() + PAD))


def test_upscaled_cell_has_input_colour_and_short_row_is_blank():
    red, blue = _solid((1.0, 0.0, 0.0)), _solid((0.0, 0.0, 1.0))
    grid = np.asarray(image_grid([[red, blue], [red]], [["r", "b"], ["r"]], scale=4))
    cell = 8 * 4
    assert (grid[PAD:PAD + cell, PAD:PAD + cell] == [255, 0, 0]).all()
    x1 = PAD + cell + PAD
    assert (grid[PAD:PAD + cell, x1:x1 + cell] == [0, 0, 255]).all()
    y1 = PAD + cell + line_height() + PAD
    assert (grid[y1:y1 + cell, x1:x1 + cell] == 255).all()  # missing cell stays background


def test_nearest_upscaling_keeps_hard_edges():
    img = torch.zeros(3, 2, 2)
    img[:, 0, 0] = 1.0
    grid = np.asarray(image_grid([[img]], None, scale=3))
    assert (grid[PAD:PAD + 3, PAD:PAD + 3] == 255).all()
    assert (grid[PAD + 3:PAD + 6, PAD + 3:PAD + 6] == 0).all()


def test_caption_shape_mismatch_raises():
    img = _solid((0.0, 0.0, 0.0))
    with pytest.raises(ValueError):
        image_grid([[img, img]], [["only one"]])


def test_group_grid_has_title_and_k_plus_one_cells():
    src = _solid((0.5, 0.5, 0.5))
    samples = [_solid((0.0, 1.0, 0.0)) for _ in range(3)]
    grid = group_grid(src, samples, [0.1, 0.25, float("nan")], "make it green")
    width = PAD + 4 * (32 + PAD)
    assert grid.width == width
    assert grid.height == PAD + line_height() + 32 + line_height() + PAD
    with pytest.raises(ValueError):
        group_grid(src, samples, [0.1], "p")


def test_grids_show_every_reference_image():
    picture_1, picture_2, edit = _solid((1.0, 0.0, 0.0)), _solid((0.0, 0.0, 1.0)), _solid((0.0, 1.0, 0.0))
    grid = group_grid([picture_1, picture_2], [edit, edit], [0.5, 0.6], "put the cat from Picture 1 in Picture 2")
    assert grid.width == PAD + 4 * (32 + PAD)
    top = PAD + line_height()
    cells = [np.asarray(grid)[top + 16, PAD + c * (32 + PAD) + 16] for c in range(2)]
    assert [tuple(cell) for cell in cells] == [(255, 0, 0), (0, 0, 255)]
    rows = before_after_grid([[picture_1, picture_2], [picture_1]], [edit] * 2, [edit] * 2, ["a", "b"], [0, 0], [1, 1])
    assert rows.width == PAD + 4 * (32 + PAD)


def test_before_after_grid_rows_and_wrapped_prompt():
    n, img = 2, _solid((0.2, 0.4, 0.6))
    imgs = [img] * n
    long_prompt = "replace the sky with a dramatic orange sunset over the mountains " * 3
    grid = before_after_grid(imgs, imgs, imgs, ["short", long_prompt], [0.1, 0.2], [0.3, 0.4],
                             targets=imgs)
    width = PAD + 4 * (32 + PAD)
    n_lines = len(wrap_text(long_prompt, width - 2 * PAD))
    assert n_lines > 1
    assert grid.size == (width, PAD + (1 + n_lines) * line_height() + n * (32 + line_height() + PAD))
    no_target = before_after_grid(imgs, imgs, imgs, ["a", "b"], [0, 0], [1, 1])
    assert no_target.width == PAD + 3 * (32 + PAD)


def test_reward_curve_writes_png_and_tolerates_missing_keys(tmp_path):
    metrics = [{"step": s, "reward_mean": 0.1 * s, "reward_std": 0.05} for s in range(5)]
    metrics[2]["reward_mean"] = None  # a NaN logged as null
    metrics[4].update(heldout_reward=0.5, heldout_reward_stderr=0.02)
    out = reward_curve(metrics, tmp_path / "plots" / "reward.png")
    assert out.stat().st_size > 0
    assert Image.open(out).format == "PNG"
    out2 = reward_curve([{"step": 0, "loss": 1.0}], tmp_path / "empty.png",
                        keys=("reward_mean", "absent"), eval_keys=("nope",))
    assert out2.stat().st_size > 0


def test_report_contains_table_and_image_links(tmp_path):
    summary = {"final_reward": 0.123456, "steps": 10, "model": "tiny|edit"}
    sections = [ReportSection("Reward curve", image="reward.png"),
                ReportSection("Notes", text="all good"),
                ReportSection("Samples", image=str(tmp_path / "grids" / "g0.png"))]
    path = write_report(tmp_path, summary, sections)
    text = path.read_text()
    assert path == tmp_path / "report.md"
    assert "| key | value |" in text
    assert "| final_reward | 0.1235 |" in text
    assert "| steps | 10 |" in text
    assert "| model | tiny\\|edit |" in text
    assert "![Reward curve](reward.png)" in text
    assert "![Samples](grids/g0.png)" in text
    assert "## Notes" in text and "all good" in text


def test_progress_fallback_prints_one_line_per_task(capsys):
    with phase_progress(enabled=False) as phase:
        t = phase.task("sample", total=3)
        for _ in range(3):
            t.advance()
        t.done()
        t.done()  # idempotent
        u = phase.task("train", total=2)
        u.advance(2)
        u.done()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("sample: 3/3 in ") and lines[0].endswith("s")
    assert lines[1].startswith("train: 2/2 in ")


def test_progress_non_terminal_falls_back_and_reports_unfinished(capsys):
    with phase_progress(enabled=True) as phase:  # capsys stdout is not a terminal
        phase.task("eval", total=4).advance()
    assert capsys.readouterr().out.startswith("eval: 1/4 in ")


def _blank_runs(strip):
    """Widths of the all-background column runs between the first and last inked column."""
    ink = (strip < 160).any(axis=(0, 2))
    xs = np.flatnonzero(ink)
    runs, run = [], 0
    for inked in ink[xs[0]:xs[-1] + 1]:
        if inked and run:
            runs.append(run)
        run = 0 if inked else run + 1
    return sorted(runs, reverse=True)


def test_title_spaces_are_visible():
    # The default font's 2-pixel space read as "Puta small red hat onthe cat".
    words = "Put a small red hat on the cat".split()
    grid = np.asarray(group_grid(_solid((0.5, 0.5, 0.5), 32, 32), [_solid((0.0, 1.0, 0.0), 32, 32)], [0.5],
                                 " ".join(words)))
    title = grid[PAD:PAD + line_height()]
    gaps = _blank_runs(title)
    spaces = len(words) - 1
    assert gaps[spaces - 1] >= gaps[spaces] + 2, gaps  # every word gap is clearly wider than any letter gap


@pytest.mark.parametrize("width", [40, 60, 90, 200, 1000])
def test_wrapped_lines_keep_every_word(width):
    text = "Put a small red hat on the cat and make it look festive"
    lines = wrap_text(text, width)
    assert " ".join(lines) == text
    assert all(_text_width(line) <= width for line in lines)


def test_report_and_eval_files_get_the_usual_mode(tmp_path):
    report = write_report(tmp_path, {"a": 1}, [])
    save_eval(EvalResult(torch.zeros(3), torch.ones(3, dtype=torch.bool), torch.zeros(3, 3, 4, 4)),
              tmp_path / "eval" / "after.safetensors")
    assert stat.S_IMODE(report.stat().st_mode) == default_file_mode()  # 0644 under the usual umask 022, not safetensors' 0600
    assert stat.S_IMODE((tmp_path / "eval" / "after.safetensors").stat().st_mode) == default_file_mode()
    assert load_eval(tmp_path / "eval" / "after.safetensors").scores.tolist() == [0.0, 0.0, 0.0]
