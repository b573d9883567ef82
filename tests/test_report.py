"""The report as a TA reads it on paper: judges named, duplicates called so, numbered grids, print layout."""
from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from lab6 import checker as C
from lab6 import labels as L
from lab6 import report as R
from lab6.config import load_config
from lab6.evaluator import breakdown_from_probs
from lab6.plots import STRIP_FRAMES, denoising_strip, make_grid, png_display, save_figure, strip_steps

A4_TEXT_WIDTH_IN = (210 - 2 * 14) / 25.4  # the report's @page: A4, 14 mm margins; the strip prints at this width


def brown_pair():
    """new_test #0 asks for a brown sphere and a brown cylinder; the image shows two brown spheres."""
    idx = L.OBJECT_TO_INDEX
    wanted = C.requested_counts([["brown sphere", "brown cylinder"]])
    counts = wanted.clone()
    counts[0, idx["brown sphere"]], counts[0, idx["brown cylinder"]] = 2, 0
    probs = torch.zeros(1, 24)
    probs[0, idx["brown sphere"]], probs[0, idx["cyan cylinder"]] = 0.9, 0.8  # top-2 reads a cyan cylinder
    return breakdown_from_probs(probs, wanted.float()), counts


def test_a_duplicate_the_checker_reads_is_called_a_duplicate_beside_the_evaluators_reading():
    results, counts = brown_pair()
    (row,) = C.worst_images(C.error_rows("new_test", results, counts))
    assert row["image"] == "new_test.json #0"  # the file and the index, as the grids number it
    assert row["checker reads"] == "duplicate: brown sphere ×2; missing: brown cylinder"
    assert row["evaluator's top-k"] == "brown cylinder → cyan cylinder (wrong colour)"
    assert C.read_scene(C.requested_counts([["red cube"]])[0], C.requested_counts([["red cube"]])[0]) == []


def test_grid_images_carry_their_index_and_a_grid_png_splits_back_into_its_images():
    sets = [["red cube"], ["cyan sphere", "gray cube"]]
    assert R.grid_captions(sets) == ["0: red cube", "1: cyan sphere, gray cube"]
    html = R.indexed_cells([None, None], R.grid_captions(sets))
    assert html.count('class="idx"') == 2 and '<span class="idx">1</span>' in html
    x = torch.rand(16, 3, 64, 64) * 2 - 1
    buf = io.BytesIO()
    make_grid(x).save(buf, format="PNG")
    path = io.BytesIO(buf.getvalue())
    cells = R.split_grid(path, 16)
    assert len(cells) == 16
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(cells[9]))), make_grid(x[9:10]).crop((2, 2, 66, 66)))


def test_the_denoising_strip_has_at_most_seven_frames_that_print_at_8_pt_or_more(tmp_path):
    steps = strip_steps(25)
    assert steps[0] == 0 and steps[-1] == 24 and len(steps) == STRIP_FRAMES
    x = torch.rand(len(steps), 3, 64, 64) * 2 - 1
    fig = denoising_strip(x, list(range(len(steps))), x[0], x0=x)
    sizes = [t.get_fontsize() for ax in fig.axes for t in (ax.title, *ax.texts) if t.get_text()]
    assert len(fig.axes) == 2 * 7 and min(sizes) >= 8
    save_figure(fig, tmp_path / "strip.png", dpi=100)
    width_in = Image.open(tmp_path / "strip.png").size[0] / 100
    assert min(sizes) * A4_TEXT_WIDTH_IN / width_in >= 8  # the report prints it at the page's width


def test_grids_are_displayed_as_png_only():
    from IPython.core.formatters import DisplayFormatter

    data, _ = DisplayFormatter().format(png_display(Image.new("RGB", (8, 8))))
    assert "image/png" in data and "image/jpeg" not in data


def test_text_progress_bars_in_headless_kernels(monkeypatch):
    import tqdm.auto
    import tqdm.std

    from lab6 import progress

    monkeypatch.setattr(tqdm.auto, "tqdm", tqdm.auto.tqdm)  # restored after the test
    monkeypatch.setattr(tqdm.auto, "trange", tqdm.auto.trange)
    monkeypatch.delenv(progress.HEADLESS_ENV, raising=False)
    assert progress.text_progress_when_headless() is False
    monkeypatch.setenv(progress.HEADLESS_ENV, "1")
    assert progress.text_progress_when_headless() is True and tqdm.auto.tqdm is tqdm.std.tqdm


@pytest.fixture
def fake_run(course_dir, tmp_path):
    """A run folder as notebooks 04-05 leave it, with made-up figures, over the tiny course layout."""
    run = tmp_path / "run"
    sets = {s: json.loads((course_dir / f"{s}.json").read_text()) for s in ("test", "new_test")}
    for split, label_sets in sets.items():
        (run / "images" / split).mkdir(parents=True)
        for i in range(len(label_sets)):
            Image.new("RGB", (64, 64), (100, 100, 100)).save(run / "images" / split / f"{i}.png")
    save_figure(denoising_strip(torch.zeros(6, 3, 64, 64), range(6), x0=torch.zeros(6, 3, 64, 64)),
                run / "denoising.png")
    (run / "figures").mkdir()
    make_grid(torch.zeros(8, 3, 64, 64)).save(run / "figures" / "ablation-0-labels_+_guidance.png")
    results, counts = brown_pair()
    deliver = {"accuracy": 0.5, "hits": 1, "labels": 2, "sampler": "dpm", "steps": 25, "guidance": 3.0, "seconds": 1}
    metrics = {
        "04_sampling": {"model": str(run / "train"), "model_origin": "trained live in this run", "seed": 0,
                        "deliverables": {"test": deliver, "new_test": deliver},
                        "samplers": {"DPM++-25": {"sampler": "dpm", "steps": 25, "accuracy": 0.5, "seconds": 1.0},
                                     "DDIM-50": {"sampler": "ddim", "steps": 50, "accuracy": 0.6, "seconds": 2.0}},
                        "guidance": {"test": {"1.0": 0.4, "3.0": 0.5}},
                        "denoising": {"labels": ["red sphere", "cyan cylinder", "cyan cube"], "timesteps": [1, 0],
                                      "steps": 25, "rows": ["x_t", "x0"], "sampler": "dpm",
                                      "evaluator": {"hits": 2, "labels": 3, "reading": "cyan cube → red cube "
                                                                                       "(wrong colour)"},
                                      "checker": ["duplicate: red sphere ×2"]}},
        "05_results": {"seed": 0, "seeds": [0, 1, 2],
                       "accuracy": {s: {"mean over 3 seeds": 0.5, "std": 0.02} for s in ("test", "new_test")},
                       "breakdown": {"new_test": {"labels": 84, "hits": 40, "wrong shape": 10, "wrong colour": 31,
                                                  "missing": 3, "images": 32, "with unrequested": 5}},
                       "beyond_top_k": {"new_test": {"exact scenes": 0.2, "with a duplicate": 0.3,
                                                     "with an unrequested object": 0.1,
                                                     "with a missing object": 0.49}},
                       "worst": C.worst_images(C.error_rows("new_test", results, counts)),
                       "fid": {"fid": 30.0, "kid": 0.001, "kid_std": 0.002, "kid_subset": 48, "real": 96,
                               "fake": 96, "floor": {"fid": 4.0, "kid": -0.0004}}},
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_the_report_reads_on_paper(fake_run, course_dir):
    html = R.build_report(fake_run, course_dir)
    assert "hover" not in html.lower()  # nothing a printed page cannot do
    css = R.CSS.replace(" ", "")
    assert "@mediaprint" in css and "break-after:avoid" in css and "break-inside:avoid" in css
    assert '<span class="idx">7</span>' in html  # every grid image is numbered for its legend
    # the two judges, each figure labelled by judge, and why they differ
    assert "file (evaluator&#x27;s reading)" in html and "file (checker&#x27;s reading)" in html
    assert R.esc(C.JUDGES_DIFFER) in html and "calls 3 of 84 labels <i>missing</i>" in html
    assert "new_test.json #0" in html and "duplicate: brown sphere ×2" in html
    # the denoising strip: its x̂0 row is there, and its caption says the final image fails its prompt
    assert "x̂<sub>0</sub> (lower row)" in html and "fails its own prompt" in html
    assert "duplicate: red sphere ×2" in html
    # KID: its std and a negative floor explained; where the sampler and guidance tables come from
    assert "± 0.0020" in html and "slightly negative" in html
    assert "All on <code>test.json</code>, sampling seed 0" in html and "Best w on this seed" in html


def test_the_report_compares_methods_from_the_shipped_file_and_explains(fake_run, course_dir, tmp_path):
    from lab6.records import SHIPPED_METHODS, read_methods

    html = R.build_report(fake_run, course_dir)
    heads = ["5. Ablations", "6. Methods compared (training runs)", "7. Discussion"]
    assert [html.index(h) for h in heads] == sorted(html.index(h) for h in heads)
    for c in read_methods(SHIPPED_METHODS)["comparisons"]:
        assert R.esc(c["title"]) in html and all(f"<th>{R.esc(r['method'])}</th>" in html for r in c["rows"])
    assert "The training runs of section 6 say why" in html
    bad = tmp_path / "methods.json"
    bad.write_text('{"splits": ["test"]}')
    html = R.build_report(fake_run, course_dir, methods_path=bad)
    assert f"No comparison shown: {bad}: no list of comparisons" in html and "7. Discussion" in html
    assert "The training runs of section 6" not in html


def test_the_live_network_is_named_as_it_is():
    from lab6.config import PROFILES, load_config
    from lab6.run import CONFIG_DIR
    quick, live = PROFILES["quick"], load_config("quick", CONFIG_DIR / "quick-live.yaml")
    assert R.live_network(quick, quick) == "the graded model's network"
    text = R.live_network(live, quick)
    assert text.startswith("a different network") and "32×32 images on 2×2 patches" in text and "64, 64, 64" in text
    assert text.endswith("conditioned by the multi-hot label vector (the graded one by one token per object)")


def test_implementation_names_how_the_objects_reach_the_network():
    """The report's implementation section follows the model: the multi-hot label, or tokens, the count, every level."""
    quick = load_config("quick")
    m = dataclasses.replace(quick.model, object_tokens=None, multi_hot=True, object_count=False, tokens_every_level=False)
    plain = dataclasses.replace(quick, model=m)
    text = R.implementation(plain, None)
    assert "multi-hot label vector" in text and "token" not in text
    text = R.implementation(quick, None)
    assert "the tokens are the only way the objects reach the network" in text
    assert "the number of objects has its own learned embedding" in text
    assert "every ResNet block of the other levels reads the tokens too" in text
    no_grid = R.implementation(dataclasses.replace(quick, model=dataclasses.replace(quick.model, tokens_every_level=False)),
                               None)
    assert "other levels" not in no_grid


def test_the_shipped_models_training_curve_is_its_last_stages_log(tmp_path):
    """The report draws the shipped model's last stage from the log its stages.json names (a chunk's), else
    metrics.jsonl beside it; a folder with neither has no curve."""
    from lab6.records import read_stages
    from tests.conftest import REPO
    for name in ("quick", "quick-multihot"):
        folder = REPO / "pretrained" / name
        stages = read_stages(folder)
        assert R.last_stage_log(folder, stages) == REPO / stages[-1]["log"]
    assert R.last_stage_log(tmp_path, []) is None
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    assert R.last_stage_log(tmp_path, [{"log": "nowhere/metrics.jsonl"}]) == tmp_path / "metrics.jsonl"


def test_many_stages_split_into_tables_that_fit_a_page():
    """Six chunks (pretrained/quick) print as two tables of three stages, every stage once, numbered in order."""
    stages = [{"steps": 100 * i, "batch_size": 64, "lr": 1e-3} for i in range(1, 7)]
    html = R.stages_table(stages)
    tables = html.split("</table>")[:-1]
    assert len(tables) == 2 and all(t.count("<th>stage ") == 3 for t in tables)
    assert [f"stage {i}" in html for i in range(1, 7)] == [True] * 6 and "stage 7" not in html
    assert R.stages_table(stages[:4]).count("</table>") == 1  # four still fit one table


def test_the_training_curve_says_when_its_two_losses_differ():
    from lab6.config import load_config
    from lab6.run import CONFIG_DIR
    live, quick = load_config("quick", CONFIG_DIR / "quick-live.yaml"), load_config("quick")
    assert R.loss_weighting(quick) == "every timestep and pixel alike"
    assert R.loss_weighting(live) == "by min-SNR-5, t drawn by that weight, object pixels ×4"
