"""The methods compared by training runs: pretrained/quick/methods.json, its figures copied from benchmarks/LOG.md,
read with a one-line error naming the file, and drawn as the report's section 6."""
from __future__ import annotations

import copy
import json
import re

import pytest

from lab6 import report as R
from lab6.errors import DataError
from lab6.records import METHOD_SPLIT_FIGURES, SHIPPED_METHODS, method_comparisons, read_methods
from tests.conftest import REPO

LOG = (REPO / "benchmarks" / "LOG.md").read_text(encoding="utf-8").replace("**", "")


def shipped() -> dict:
    return read_methods(SHIPPED_METHODS)


def test_the_shipped_file_reads_and_covers_the_runs_the_project_measured():
    m = shipped()
    assert SHIPPED_METHODS == REPO / "pretrained" / "quick" / "methods.json"
    assert m["splits"] == ["test", "new_test", "unseen_test"] and "screening" in m["format"]
    titles = " | ".join(c["title"] for c in m["comparisons"])
    for subject in ("Patches and resolution", "32×32 model against the 64×64", "min-SNR weight", "Object pixels",
                    "Stage 1's loss", "Stage 3", "EMA", "Guidance", "Object tokens", "pixel head",
                    "from random weights, in CPU chunks"):
        assert subject in titles, subject
    for c in m["comparisons"]:
        assert "benchmarks/LOG.md" in c["source"] and c["measured"] and len(c["rows"]) >= 2
        assert 1 <= len(re.findall(r"[.!?](?:\s|$)", c["why"])) <= 3, c["title"]  # one to three sentences
    shipped_rows = [r["method"] for c in m["comparisons"] for r in c["rows"] if r.get("shipped")]
    assert shipped_rows and all(name.startswith("pretrained/quick ") for name in shipped_rows), shipped_rows
    # bench_screen.py's rows: the shape of a comparison, drawn after the others once it has rows
    screen = m["screening"]
    assert "bench_screen" in screen["measured"] and "benchmarks/LOG.md" in screen["source"]
    assert method_comparisons(m) == m["comparisons"] + ([screen] if screen["rows"] else [])


def test_every_figure_is_the_logs():
    """A row's figures are copied from benchmarks/LOG.md: its three files' figures as the log writes them
    ("a / b / c"), or where the log gives one file a line, each figure as a number of the log."""
    m = shipped()
    log_numbers = set(re.findall(r"\d+\.\d+", LOG))
    for c in m["comparisons"]:
        for r in c["rows"]:
            for key in METHOD_SPLIT_FIGURES:
                values = [v for v in (r.get(key) or {}).values() if v is not None]
                if len(values) == 3 and " / ".join(values) in LOG:
                    continue
                missing = [v for v in values if v not in log_numbers]
                assert not missing, (c["title"], r["method"], key, missing)
            if r.get("fid") is not None:
                assert r["fid"] in log_numbers, (c["title"], r["method"], "fid")


def write(tmp_path, methods) -> str:
    path = tmp_path / "methods.json"
    path.write_text(methods if isinstance(methods, str) else json.dumps(methods), encoding="utf-8")
    return str(path)


def test_a_malformed_file_fails_in_one_line_naming_the_file_and_the_fault(tmp_path):
    good = shipped()
    bad_figure = copy.deepcopy(good)
    bad_figure["comparisons"][0]["rows"][1]["top_k"]["test"] = "high"
    no_why = copy.deepcopy(good)
    del no_why["comparisons"][2]["why"]
    bad_screen = copy.deepcopy(good)
    bad_screen["screening"]["rows"] = [{"method": "narrow", "changed": "x", "exact": {"test": [0.5, 0.4]}}]
    cases = {"{not json": r"unreadable \(Expecting property name",
             json.dumps([1, 2]): "not a JSON object",
             json.dumps({"splits": ["test"], "comparisons": []}): "no list of comparisons",
             json.dumps(bad_figure): r"comparison 1 \(Patches and resolution at 20 CPU minutes\) row 2 \(32×32 on 2×2 "
                                     r"patches\): top_k holds a value that is no figure",
             json.dumps(no_why): r"comparison 3 \(.*\) has no text why",
             json.dumps(bad_screen): r"screening \(.*\) row 1 \(narrow\): exact holds a value that is no figure"}
    for text, fault in cases.items():
        path = write(tmp_path, text)
        with pytest.raises(DataError) as e:
            read_methods(path)
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(f"{path}: ") and re.search(fault, msg), msg
        assert "expected {\"splits\"" in msg


def test_the_section_draws_every_comparison_and_row_with_its_source_and_why(tmp_path):
    m = shipped()
    html = "".join(R.methods_section(m, SHIPPED_METHODS))
    assert "<h2>6. Methods compared (training runs)</h2>" in html and "pretrained/quick/methods.json" in html
    for i, c in enumerate(m["comparisons"], 1):
        assert f"<h3>6.{i} {R.esc(c['title'])}</h3>" in html
        assert R.esc(c["source"]) in html and R.esc(c["why"]) in html and R.esc(c["measured"]) in html
        for r in c["rows"]:
            assert f"<th>{R.esc(r['method'])}</th>" in html, r["method"]
    assert "<td>0.933 / 0.893 / 0.923</td>" in html  # the shipped model's top-k, as the log gives it
    assert "<td>0.74 / — / —</td>" in html  # a figure measured on one file only
    assert "<tr class='shipped'>" in html and "<tr class='ref'>" in html
    # a screen, once it has rows, is drawn after the comparisons; its figures as mean (min–max), a file a line
    m["screening"] |= {"measured": "3 seeds", "why": "Because.", "rows": [
        {"method": "narrow, uniform t", "changed": "channels 32/64/64", "exact": {"test": [0.5, 0.42, 0.61]}}]}
    html = "".join(R.methods_section(m))
    assert f"<h3>6.{len(m['comparisons']) + 1} Recipes screened" in html and "0.500 (0.420–0.610) /<br>— /<br>—" in html
    # an unreadable file: one line in the report, naming it, instead of the tables
    path = write(tmp_path, "{not json")
    html = "".join(R.methods_section(R.load_methods(path), path))
    assert html.count("class='warn'") == 1 and f"No comparison shown: {path}: unreadable" in html


def test_the_discussion_gives_causes():
    binding = {"test": {"repeated_colour": 9, "sets": 32}, "new_test": {"repeated_colour": 24, "sets": 32},
               "unseen_test": {"repeated_colour": 0, "sets": 32}}
    acc = {s: {"mean over 3 seeds": v, "evaluator ceiling": 1.0} for s, v in
           (("test", 0.894), ("new_test", 0.885), ("unseen_test", 0.917))}
    beyond = {s: {"exact scenes": v, "with a duplicate": 0.2, "with an unrequested object": 0.05}
              for s, v in (("test", 0.656), ("new_test", 0.396), ("unseen_test", 0.625))}
    breakdown = {"new_test": {"wrong shape": 10, "wrong colour": 3, "missing": 5}}
    fid = {"fid": 47.6, "floor": {"fid": 13.3}}
    text = R.discussion(acc, beyond, breakdown, {}, fid, binding, patch=4, methods_shown=True, grain_measured=True)
    assert "<h2>7. Discussion</h2>" in text
    assert ("Why <code>new_test.json</code> is the hardest on exact scenes: 24 of its 32 label sets ask for two "
            "objects of one colour") in text and "one multi-hot vector" in text
    assert "not how many: a duplicate costs nothing under top-k" in text
    assert "10 are <i>wrong shape</i>" in text and "Shape is told by a few pixels" in text
    assert "47.6" in text and "4-pixel period" in text and "section 6" in text
    # with object tokens the pooled-vector cause is not claimed; without section 6 it is not pointed to
    text = R.discussion(acc, beyond, breakdown, {}, fid, binding, pooled_labels=False)
    assert "multi-hot vector" not in text and "section 6" not in text and "period" not in text
