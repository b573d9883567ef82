"""One source for the shipped model's figures: README.md's Results table is pretrained/quick/scores.json rendered."""
from __future__ import annotations

import re

import pytest

from lab6.errors import CheckpointError
from lab6.records import SCORES_FILE, read_scores, results_table, scores_provenance
from tests.conftest import REPO

SCORES = REPO / "pretrained" / "quick" / SCORES_FILE


def readme_results_table() -> str:
    """The first Markdown table under README.md's `## Results`."""
    section = (REPO / "README.md").read_text().split("## Results", 1)[1].split("\n## ", 1)[0]
    return "".join(line + "\n" for line in section.splitlines() if line.startswith("|"))


def test_the_readme_results_table_is_the_rendered_scores_file():
    scores = read_scores(SCORES)
    assert readme_results_table() == results_table(scores), "regenerate it: print(results_table(read_scores(...)))"
    section = (REPO / "README.md").read_text().split("## Results", 1)[1].split("\n## ", 1)[0]
    section = " ".join(section.split())  # wherever the lines break
    fid, sampling = scores["fid"], scores["sampling"]
    assert f"{fid['model']:.1f} (two renders of the ground truth: {fid['ground_truth']:.1f})" in section
    assert f"Sampling 32 images took {sampling['seconds_per_32_images']:g} s" in section
    assert f"mean of {len(scores['provenance']['seeds'])} sampling seeds" in section


def test_the_scores_file_says_how_it_was_measured(tmp_path):
    scores = read_scores(SCORES)
    p = scores["provenance"]
    assert len(p["seeds"]) == 11 and p["images"] and p["machine"] and p["command"] and p["judges"]
    assert re.search(r"mean of 11 sampling seeds \(0–10\), 1056 images, 2-core CPU", scores_provenance(scores))
    (tmp_path / SCORES_FILE).write_text('{"figures": {}}')
    with pytest.raises(CheckpointError, match=r"scores.json: expected \{\"splits\""):
        read_scores(tmp_path / SCORES_FILE)
