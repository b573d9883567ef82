"""The lab report of a run: report.html in the lab's structure, built from the run folder, and report.pdf via Chromium.

Sections: introduction, implementation, hyperparameters, results, ablations, methods compared, discussion.
Everything comes from files the notebooks wrote (`metrics.json`, `images/`, `denoising.png`, `figures/`, `train/`),
the data root's label files and ground-truth renders, the model's saved config and, for the methods compared, the
training runs the project measured (pretrained/quick/methods.json). The page is self-contained: images are inlined,
equations are drawn to SVG by matplotlib (no MathJax, no network), paths are shown relative to the project.
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.font_manager import FontProperties
from matplotlib.mathtext import math_to_image

from .checker import JUDGES_DIFFER
from .config import Config, ModelConfig, config_from_dict, read_yaml
from .data import PROJECT_ROOT, CourseData, binding_stats, is_synthetic
from .errors import CheckpointError, ConfigError, DataError
from .evaluator import MISS_KINDS, SHIPPED_EVALUATOR, find_evaluator
from .fidelity import RENDER_REFERENCE_NOTE
from .io import atomic_path
from .model import build_model, count_parameters
from .plots import read_metrics
from .records import (
    SCORES_FILE,
    SHIPPED_METHODS,
    describe_stage,
    method_comparisons,
    read_methods,
    read_scores,
    read_stages,
    scores_provenance,
)

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
GRID_SPLITS = ("test", "new_test")  # the lab's two graded 8x4 grids
CHECKER = "pretrained/checker/checker.pth"
NOT_THE_COURSE = ("These figures are NOT the course's accuracy: the images are this project's renders, not the "
                  "course's files, so they cannot be held against the course's thresholds.")


# ---------------------------------------------------------------- small HTML pieces
def esc(x) -> str:
    return html.escape(str(x))


def shown_path(path: str | os.PathLike) -> str:
    """A path as the report shows it: relative to the project (or its home folder), never absolute."""
    p = Path(path)
    for base, prefix in ((PROJECT_ROOT, ""), (Path.home(), "~/")):
        try:
            return prefix + str(p.resolve().relative_to(base.resolve()))
        except ValueError:
            pass
    return str(Path(*p.parts[-2:])) if p.is_absolute() else str(p)


def fmt(v) -> str:
    if isinstance(v, bool) or v is None:
        return "—" if v is None else str(v).lower()
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v))
    return str(v)


def table(rows: dict[str, dict], first: str, cls: str = "") -> str:
    """An HTML table: one row per key of `rows`, columns the union of the inner keys."""
    cols: list[str] = []
    for r in rows.values():
        cols += [c for c in r if c not in cols]
    head = "".join(f"<th>{esc(c)}</th>" for c in [first, *cols])
    body = "".join("<tr><th>" + esc(k) + "</th>" + "".join(f"<td>{esc(fmt(r.get(c)))}</td>" for c in cols) + "</tr>"
                   for k, r in rows.items())
    c = f" class='{cls}'" if cls else ""
    return f"<table{c}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def img(path_or_bytes, alt: str, width: int | None = None, cls: str = "") -> str:
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    w = f' width="{width}"' if width else ""
    c = f' class="{cls}"' if cls else ""
    return f'<img src="{png_uri(data)}" alt="{esc(alt)}" title="{esc(alt)}"{w}{c}>'


def fig_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def equation(tex: str) -> str:
    """A display equation drawn by matplotlib's mathtext as inline SVG."""
    buf = io.BytesIO()
    math_to_image(f"${tex}$", buf, prop=FontProperties(size=15), dpi=100, format="svg")
    svg = buf.getvalue().decode()
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg[svg.index("<svg"):], flags=re.S)  # drop the RDF block
    return '<div class="eq">' + svg + "</div>"


def grid_captions(label_sets: list[list[str]]) -> list[str]:
    """The caption of each grid image, `<index>: <labels>`: the index printed on the image, the labels in its
    legend (and its title attribute)."""
    return [f"{i}: " + ", ".join(labels) for i, labels in enumerate(label_sets)]


def indexed_cells(images: list, captions: list[str], width: int = 64) -> str:
    """Grid cells: each image with its index printed on its corner, so a printed page matches it to the legend;
    `images`: PNG bytes or paths, None for a missing image."""
    cells = []
    for i, (im, cap) in enumerate(zip(images, captions)):
        inner = img(im, cap, width, "px") if im is not None else f'<span class="missing" style="width:{width}px"></span>'
        cells.append(f'<span class="cell">{inner}<span class="idx">{i}</span></span>')
    return f'<div class="cells">{"".join(cells)}</div>'


def legend(label_sets: list[list[str]]) -> str:
    return '<p class="legend">' + "; ".join(f"<b>{i}</b> {esc(', '.join(s))}" for i, s in enumerate(label_sets)) + "</p>"


def folder_images(folder: Path, n: int) -> list[Path | None]:
    """<folder>/<i>.png for i < n, None where one is missing."""
    return [folder / f"{i}.png" if (folder / f"{i}.png").exists() else None for i in range(n)]


def split_grid(path: Path, n: int, size: int = 64, padding: int = 2, nrow: int = 8) -> list[bytes]:
    """The n images of a grid PNG written by `lab6.plots.make_grid` (same size, padding and row length), each
    as PNG bytes, so the report can number them."""
    from PIL import Image

    grid = Image.open(path).convert("RGB")
    out = []
    for i in range(n):
        r, c = divmod(i, nrow)
        y, x = padding + r * (size + padding), padding + c * (size + padding)
        if y + size > grid.height or x + size > grid.width:
            break
        buf = io.BytesIO()
        grid.crop((x, y, x + size, y + size)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def image_grid(folder: Path, label_sets: list[list[str]], title: str) -> str:
    """The 8-per-row grid of <folder>/<i>.png, each image numbered, with a numbered legend of the label sets."""
    caps = grid_captions(label_sets)
    return (f'<figure class="grid"><figcaption>{esc(title)}</figcaption>'
            f'{indexed_cells(folder_images(folder, len(label_sets)), caps)}{legend(label_sets)}</figure>')


def keep(*parts: str, cls: str = "keep") -> str:
    """A block the printed page does not split: a heading with its table or figure and their captions."""
    return f"<section class='{cls}'>" + "".join(parts) + "</section>"


# ---------------------------------------------------------------- reading the run
def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def model_config(folder: Path) -> Config | None:
    for name in ("lab6_config.yaml", "config.yaml"):
        if (folder / name).is_file():
            try:
                return config_from_dict(read_yaml(folder / name))
            except ConfigError:
                return None
    return None


def find_chromium() -> str | None:
    """$LAB6_CHROMIUM, else the first Chromium or Chrome on PATH."""
    given = os.environ.get("LAB6_CHROMIUM")
    if given:
        return shutil.which(given) or (given if Path(given).is_file() else None)
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


def print_pdf(html_path: Path, pdf_path: Path, chromium: str, timeout: float = 180) -> None:
    """Print an HTML file to PDF with headless Chromium (written to a temp file, then renamed)."""
    with atomic_path(pdf_path) as tmp:
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-pdf-header-footer", f"--print-to-pdf={tmp}", html_path.resolve().as_uri()]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0 or not Path(tmp).exists() or Path(tmp).stat().st_size == 0:
            tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"{chromium} could not print {html_path.name}: {tail[0]}")


# ---------------------------------------------------------------- sections
def implementation(cfg: Config, n_params: int | None, stages: list[dict] | None = None) -> str:
    m, s, t, p = cfg.model, cfg.schedule, cfg.train, cfg.sample
    patch = m.patch_size or 1
    grid = m.sample_size // patch
    eps = s.prediction_type == "epsilon"
    tokens = m.object_tokens is not None
    parts = ["<h2>2. Implementation</h2>", "<h3>Network</h3><ul>",
             f"<li>A diffusers <code>UNet2DModel</code> that draws the {m.output_size}×{m.output_size} image "
             + (f"itself, cut into {patch}×{patch} patches stacked as channels (a {grid}×{grid} grid of "
                f"{3 * patch * patch} channels)" if patch > 1 else
                f"at {m.sample_size}×{m.sample_size}" + (f", upsampled to {m.output_size}" if m.sample_size !=
                                                          m.output_size else "")) + ".</li>",
             f"<li>Channels {fmt(m.block_out_channels)}, {m.layers_per_block} ResNet layer(s) per block; blocks "
             f"{fmt(m.down_block_types)} down, {fmt(m.up_block_types)} up (self-attention in the Attn blocks"
             + (", each with a cross-attention to the object tokens beside it, its output projection initialised to zero"
                if tokens else "") + ")"
             + ("; every ResNet block of the other levels reads the tokens too, by the same cross-attention after a "
                "group norm" if tokens and m.tokens_every_level else "")
             + (f"; {n_params / 1e6:.2f} M parameters" if n_params else "") + ".</li>",
             ("<li>Conditioning: the 24-dim multi-hot label vector y goes through a learned linear layer into the "
              "time embedding, which every ResNet block reads"
              + (" as a FiLM scale and shift" if m.resnet_time_scale_shift == "scale_shift" else "")
              + (f"; and each object becomes one {m.object_tokens}-wide token, colour embedding + shape embedding, "
                 "beside a learned scene token" if tokens else "") if m.multi_hot else
              f"<li>Conditioning: each object becomes one {m.object_tokens}-wide token, colour embedding + shape "
              "embedding, beside a learned scene token; the tokens are the only way the objects reach the network "
              "(the time embedding carries no label)")
             + ("; the number of objects has its own learned embedding, added to the time embedding"
                if m.object_count else "")
             + f". Training replaces y by zeros with probability {t.cond_drop_prob:g}, so the same network is "
             "also unconditional (classifier-free guidance).</li></ul>",
             "<h3>Noise schedule and forward process</h3>",
             f"<p>{s.num_train_timesteps} steps, <code>{esc(s.beta_schedule)}</code> betas"
             + (", rescaled to zero terminal SNR" if s.zero_terminal_snr else "") + "; with "
             "ᾱ<sub>t</sub> = ∏ (1 − β<sub>s</sub>):</p>",
             equation(r"x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon,"
                      r"\quad \varepsilon \sim \mathcal{N}(0, I)"),
             "<h3>Loss</h3>",
             ("<p>The network predicts the noise (ε-prediction):</p>" if eps else
              "<p>The network predicts the velocity v (v-prediction), from which ε and x̂<sub>0</sub> follow:</p>"),
             equation(r"\mathcal{L} = \mathbb{E}_{x_0, y, t, \varepsilon}\,"
                      + (r"\| \varepsilon - \varepsilon_\theta(x_t, t, y) \|^2" if eps else
                         r"\| v - v_\theta(x_t, t, y) \|^2,\quad v = \sqrt{\bar\alpha_t}\,\varepsilon - "
                         r"\sqrt{1-\bar\alpha_t}\,x_0")),
             "<ul>",
             f"<li>Timesteps t drawn {'uniformly' if t.timestep_sampling == 'uniform' else 'by importance'}; "
             + (f"min-SNR-{t.min_snr_gamma:g} weights" if t.min_snr_gamma else "every timestep weighed alike")
             + "; " + (f"object pixels weighed {1 + t.foreground_weight:g}× the background"
                       if t.foreground_weight else "every pixel weighed alike") + ".</li>",
             f"<li>AdamW, gradient clip {t.grad_clip:g}, EMA of the weights ({t.ema_decay:g}) used for sampling; "
             + (f"trained in {len(stages)} stages, each with its own batch, LR and precision (section 3)"
                if stages and len(stages) > 1 else
                f"peak LR {t.lr:g} ({esc(t.lr_scheduler)}, {t.lr_warmup_steps} warm-up steps), batch {t.batch_size}, "
                f"{esc(precision_as_run(t.mixed_precision, stages))}") + ".</li></ul>",
             "<h3>Sampling</h3>",
             f"<p>Default sampler <code>{esc(p.sampler)}</code> with {p.num_steps} steps and guidance scale "
             f"w = {p.guidance_scale:g}; every step combines the conditional and unconditional predictions:</p>",
             equation(r"\hat\varepsilon = \varepsilon_\theta(x_t, t, \varnothing) + w\,(\varepsilon_\theta(x_t, t, y)"
                      r" - \varepsilon_\theta(x_t, t, \varnothing))"),
             "" if eps else "<p>with each ε<sub>θ</sub> read from the predicted velocity:</p>"
             + equation(r"\varepsilon_\theta = \sqrt{\bar\alpha_t}\,v_\theta + \sqrt{1-\bar\alpha_t}\,x_t"),
             (f"<p>At step i the network reads x<sub>t</sub> rolled by an offset o<sub>i</sub> inside its "
              f"{patch}×{patch} patch, and its output is rolled back, so the seams of the patch grid fall on other "
              f"pixels at every step instead of adding up to a grain (every offset once in {patch * patch} "
              "steps; <code>shift_patches</code>):</p>"
              + equation(r"\hat\varepsilon_i(x_t) = S_{-o_i}\,\hat\varepsilon(S_{o_i}\,x_t)")
              if p.shift_patches and patch > 1 else ""),
             "<p>DDPM's reverse step (Algorithm 2 of Ho et al.), which the faster samplers approximate in fewer "
             "steps, with σ<sub>t</sub>² = β̃<sub>t</sub> = β<sub>t</sub>(1 − ᾱ<sub>t−1</sub>)/(1 − ᾱ<sub>t</sub>), "
             "and the running estimate of the clean image shown in the denoising strip:</p>",
             equation(r"x_{t-1} = \frac{1}{\sqrt{\alpha_t}}\left(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}"
                      r"\hat\varepsilon\right) + \sigma_t z,\qquad \hat x_0 = \frac{x_t - \sqrt{1-\bar\alpha_t}\,"
                      r"\hat\varepsilon}{\sqrt{\bar\alpha_t}}")]
    return "\n".join(parts)


def precision_as_run(mixed_precision: str, stages: list[dict] | None) -> str:
    """The precision the last stage ran in (stages.json), else what the config gives: bf16 runs on CUDA only."""
    if stages:
        return f"{stages[-1].get('precision', '?')} (as run)"
    return f"{mixed_precision} on CUDA, fp32 on a CPU" if mixed_precision != "no" else "fp32"


STAGE_COLUMNS = ("date", "device", "minutes", "steps", "images", "batch_size", "lr", "lr_scheduler",
                 "timestep_sampling", "min_snr_gamma", "foreground_weight", "precision", "img_per_s", "init_from")


STAGES_PER_TABLE = 4  # stage columns that fit a printed page's width


def stages_table(stages: list[dict]) -> str:
    """Every training stage of a model (its stages.json), one column each, oldest first, in as many tables of
    balanced width as a printed page needs."""
    def cell(v):
        return f"{v:g}" if isinstance(v, float) else v
    n_tables = max(1, -(-len(stages) // STAGES_PER_TABLE))
    per = max(1, -(-len(stages) // n_tables))  # 6 stages: two tables of 3
    return "".join(
        table({c: {f"stage {i}": cell(st.get(c)) for i, st in enumerate(stages[k:k + per], k + 1)}
               for c in STAGE_COLUMNS}, "stage", "wide")
        for k in range(0, len(stages), per))


def kv_table(title: str, items: dict, pairs: int = 3) -> str:
    """A full-width table of `name value` pairs, `pairs` to a row, under a title row: a config section compactly."""
    cells = [f"<td class='k'>{esc(k)}</td><td>{esc(fmt(v))}</td>" for k, v in items.items()]
    cells += ["<td class='k'></td><td></td>"] * (-len(cells) % pairs)
    rows = "".join("<tr>" + "".join(cells[i:i + pairs]) + "</tr>" for i in range(0, len(cells), pairs))
    return (f"<table class='kv wide'><thead><tr><th colspan='{2 * pairs}'>{esc(title)}</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>")


def hyperparameters(cfg: Config, stages: list[dict] | None = None) -> str:
    """The training stages (stages.json), then one compact table per config section, full width."""
    skip = ("output_dir", "data_root", "device", "evaluator", "init_from", "num_threads", "mixed_precision",
            "export_dtype")
    tables = [kv_table(section, {k: v for k, v in vars(getattr(cfg, section)).items() if k not in skip}
                       | ({"precision": precision_as_run(cfg.train.mixed_precision, stages)}
                          if section == "train" else {}))
              for section in ("model", "schedule", "train", "sample")]
    head = "<h2>3. Hyperparameters</h2>"
    if stages:
        head += keep("<p>How the graded model was trained, every stage (its <code>stages.json</code>; precision as "
                     "it ran):</p>", stages_table(stages),
                     "<p class='note'>The configuration below is the last stage's.</p>" if len(stages) > 1 else "")
    return (head + keep("<p>The model's saved configuration (<code>lab6_config.yaml</code>); paths and the device "
                        "are left out.</p>", tables[0], tables[1]) + keep(tables[2], tables[3]))


def judge_phrase(evaluator: Path | None) -> str:
    """Which judge read the top-k figures: the course's checkpoint.pth, the shipped evaluator, or one lab6 trained."""
    if evaluator is None:
        return "no evaluator (no accuracy)"
    where = f"<code>{esc(shown_path(evaluator))}</code>"
    if evaluator.resolve() == SHIPPED_EVALUATOR.resolve():
        return f"lab6's shipped evaluator {where} (the course's ResNet-18 format, trained on this project's renders)"
    if evaluator.name == "checkpoint.pth":
        return f"the course's evaluator {where}"
    return f"an evaluator lab6 trained for these renders ({where})"


def model_phrase(origin: str, model_dir: Path) -> str:
    """The model behind the graded figures: shipped, given (`lab6 run --model`) or trained live, and its folder."""
    kind = ("the shipped model" if "shipped" in origin else "the given model" if origin.startswith("given")
            else "the model trained live in this run")
    return f"{kind} <code>{esc(shown_path(model_dir))}</code>"


def live_network(live: Config, graded: Config) -> str:
    """The live model's network beside the graded one's: the same, or its grid, patches and widths."""
    if live.model == graded.model:
        return "the graded model's network"
    m, p = live.model, live.model.patch_size or 1
    text = (f"a different network from the graded one: it draws {m.sample_size}×{m.sample_size} images on {p}×{p} "
            f"patches (upsampled to {m.output_size}×{m.output_size}), channels {', '.join(map(str, m.block_out_channels))}")
    mine, theirs = conditioning(m), conditioning(graded.model)
    return text + (f", conditioned by {mine} (the graded one by {theirs})" if mine != theirs else "")


def conditioning(m: ModelConfig) -> str:
    """How the objects reach a network, in a few words."""
    if m.object_tokens and not m.multi_hot:
        return "one token per object"
    return "the multi-hot label vector" + (" and one token per object" if m.object_tokens else "")


def live_steps(run: Path, m3: dict, live_cfg: Config | None) -> str | None:
    """'<done> of <planned> steps' of this run's training (notebook 03), None when it trained nothing."""
    recs = read_metrics(run / "train" / "metrics.jsonl") if (run / "train" / "metrics.jsonl").exists() else []
    done = m3.get("steps") or max((r.get("step", 0) for r in recs), default=None)
    if done is None or live_cfg is None:
        return None
    t = live_cfg.train
    budget = f" or {fmt(t.max_minutes)} minutes, whichever came first" if t.max_minutes else ""
    start = m3.get("init_from") or t.init_from or "none"
    start = "from random weights" if start == "none" else f"starting from {shown_path(Path(start))}"
    recipe = f", recipe {shown_path(Path(m3['recipe']))}" if m3.get("recipe") else ""
    return f"{done} of {t.max_steps} planned steps{budget}, {start}{recipe}"


def last_stage_log(model_dir: Path, stages: list[dict]) -> Path | None:
    """The training log of a model's last stage: its stages.json's `log` (a repository path), else metrics.jsonl."""
    for path in ([PROJECT_ROOT / stages[-1]["log"]] if stages and stages[-1].get("log") else []) + [
            model_dir / "metrics.jsonl"]:
        if path.is_file():
            return path
    return None


def provenance(data: CourseData, evaluator: Path | None, origin: str, model_dir: Path, stages: list[dict],
               live: str | None, given: bool) -> str:
    """The box at the top: which data, which judges, which model made which figure and how it was trained."""
    synthetic = is_synthetic(data.root)
    root = f"<code>{esc(shown_path(data.root))}</code>"
    trained = ("<ol>" + "".join(f"<li>{esc(describe_stage(st))}</li>" for st in stages) + "</ol>" if stages else
               "no <code>stages.json</code> beside it: only its saved configuration (section 3) tells.")
    items = ["<b>Data:</b> " + (f"this project's renders in {root}, not the course's files." if synthetic else
                                  f"the course's files in {root}."),
             f"<b>Judges:</b> top-k accuracy by {judge_phrase(evaluator)}; exact scenes by lab6's count checker "
             f"<code>{CHECKER}</code>, trained on this project's renders, each image read with its mirror image.",
             "<b>Models:</b> the training curve: " + ("none, notebook 03 (training) was not run" if given else
                                                      "the live run of notebook 03 (<code>train/</code>)"
                                                      + (", beside the shipped model's last stage"
                                                         if "shipped" in origin and last_stage_log(model_dir, stages)
                                                         else ""))
             + f"; the graded grids, accuracy tables, samplers and ablations: {model_phrase(origin, model_dir)}.",
             f"<b>How {model_phrase(origin, model_dir)} was trained</b>, every stage: {trained}"]
    if live:
        items.append(f"<b>This run's training:</b> {esc(live)}.")
    warn = f"<p class='warn'>{esc(NOT_THE_COURSE)}</p>" if synthetic else ""
    return ("<div class='provenance'><h2>Provenance</h2>" + warn + "<ul>"
            + "".join(f"<li>{i}</li>" for i in items) + "</ul></div>")


def model_scores(model_dir: Path) -> dict | None:
    """The graded model's scores.json, None when it has none or an unreadable one."""
    try:
        return read_scores(model_dir / SCORES_FILE) if (model_dir / SCORES_FILE).is_file() else None
    except CheckpointError:
        return None


def reference_figures(model_dir: Path) -> list[str]:
    """The figures measured once for the graded model and shipped with it (its scores.json), labelled as such."""
    scores = model_scores(model_dir)
    if scores is None:
        return []
    def cell(v):
        return " / ".join(f"{x:.3f}" for x in v) if isinstance(v, list) else f"{v:.3f}" if v is not None else "—"
    rows = {r["label"]: {s: cell(r["values"].get(s)) for s in scores["splits"]} for r in scores["figures"].values()}
    return [keep("<h3>Reference figures of the model (not this run's)</h3>",
                 f"<p class='note'>Measured once and shipped in <code>{esc(shown_path(model_dir / SCORES_FILE))}"
                 f"</code>: {esc(scores_provenance(scores))}. The tables below are this run's own, over its own "
                 "seeds.</p>", table(rows, "figure"))]


def loss_weighting(cfg: Config) -> str:
    """How a recipe weighs its diffusion loss, after "weighs": min-SNR, how t is drawn, object pixels."""
    tr = cfg.train
    parts = ([f"min-SNR-{tr.min_snr_gamma:g}"] if tr.min_snr_gamma else []) + (
        ["t drawn by that weight"] if tr.min_snr_gamma and tr.timestep_sampling == "importance" else []) + (
        [f"object pixels ×{1 + tr.foreground_weight:g}"] if tr.foreground_weight else [])
    return "by " + ", ".join(parts) if parts else "every timestep and pixel alike"


def training_curve(curves: dict[str, list[dict]]) -> bytes | None:
    curves = {k: [r for r in v if "loss" in r] for k, v in curves.items()}
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(7, 2.8))
    for name, recs in curves.items():
        ax.plot([r["step"] for r in recs], [r["loss"] for r in recs], lw=1, label=name)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig_png(fig)


# ---------------------------------------------------------------- methods compared (pretrained/quick/methods.json)
METHOD_FIGURES = (("top_k", "top-k"), ("exact", "exact scenes"), ("duplicate", "duplicates"))


def figure_text(v, digits: int = 3) -> str:
    """A figure of methods.json as written (a string keeps the log's digits), a number to `digits`, a screen's
    [mean, min, max] as 'mean (min–max)', '—' where not measured."""
    if v is None:
        return "—"
    if isinstance(v, list):
        mean, lo, hi = (figure_text(x, digits) for x in v)
        return f"{mean} ({lo}–{hi})"
    return v if isinstance(v, str) else f"{v:.{digits}f}"


def figure_cell(figures: dict | None, splits: list[str]) -> str:
    """A row's figures of one kind, file by file as 'a / b / c' (HTML); a screen's ranges one file to a line, so
    that the table keeps to the page."""
    if not figures:
        return "—"
    texts = [esc(figure_text(figures.get(s))) for s in splits]
    return (" /<br>" if any(isinstance(figures.get(s), list) for s in splits) else " / ").join(texts)


def methods_table(comparison: dict, splits: list[str]) -> str:
    """One comparison's rows: the run, what changed, its figures per file (splits in order), FID, the rest; a column
    no row measured is left out; the shipped model's row in bold, a ground-truth row in italics."""
    rows = comparison["rows"]
    cols = [(k, name) for k, name in METHOD_FIGURES if any(r.get(k) for r in rows)]
    fid = any(r.get("fid") is not None for r in rows)
    also = any(r.get("also") or r.get("note") for r in rows)
    head = ("<tr><th>run</th><th>what changed</th>" + "".join(f"<th>{esc(name)}</th>" for _, name in cols)
            + ("<th>FID</th>" if fid else "") + ("<th>also measured</th>" if also else "") + "</tr>")
    body = []
    for r in rows:
        cls = " class='shipped'" if r.get("shipped") else " class='ref'" if r.get("reference") else ""
        cells = [f"<th>{esc(r['method'])}</th>", f"<td class='t c'>{esc(r['changed'])}</td>"]
        cells += [f"<td>{figure_cell(r.get(k), splits)}</td>" for k, _ in cols]
        if fid:
            cells.append(f"<td>{esc(figure_text(r.get('fid'), 1))}</td>")
        if also:
            cells.append(f"<td class='t a'>{esc('; '.join(x for x in (r.get('also'), r.get('note')) if x))}</td>")
        body.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    return f"<table class='methods wide'><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"


def load_methods(path: str | os.PathLike = SHIPPED_METHODS) -> dict | str:
    """The methods compared (read_methods), or the one-line reason the file cannot be read."""
    try:
        return read_methods(path)
    except DataError as e:
        return str(e)


def methods_section(methods: dict | str, path: str | os.PathLike = SHIPPED_METHODS) -> list[str]:
    """Section 6: the training runs the project compared (`load_methods(path)`), a table each with how it was
    measured, where its figures come from and why it came out that way; the reason in one line if the file is
    unreadable."""
    s = ["<h2>6. Methods compared (training runs)</h2>"]
    if isinstance(methods, str):
        return s + [f"<p class='warn'>No comparison shown: {esc(methods)}</p>"]
    splits = methods["splits"]
    s.append(f"<p>{esc(methods.get('intro', ''))}</p><p class='note'>These are the project's runs, not this run's: "
             f"every figure is copied from <code>benchmarks/LOG.md</code> into <code>{esc(shown_path(path))}</code>, "
             f"and each table names its section. A figure cell reads {esc(' / '.join(splits))}; a bold row is the "
             "shipped model, an italic one the ground truth.</p>")
    for i, c in enumerate(method_comparisons(methods), 1):
        s.append(keep(f"<h3>6.{i} {esc(c['title'])}</h3>",  # printed across a page break row by row, not moved whole
                      f"<p class='note lead'>{esc(c['measured'])} Source: {esc(c['source'])}.</p>",
                      methods_table(c, splits), f"<p><b>Why.</b> {esc(c['why'])}</p>", cls="method"))
    return s


def discussion(acc: dict, beyond: dict, breakdown: dict, ablation: dict, fid: dict, binding: dict | None = None,
               pooled_labels: bool = True, patch: int = 1, methods_shown: bool = False,
               grain_measured: bool = False, shifted: bool = False) -> str:
    """What the tables show and why, in sentences computed from them. `binding`: binding_stats of each test file's
    label sets; `pooled_labels`: the labels reach the network as one vector (no object tokens); `patch`: the
    UNet's patch size; `methods_shown`: section 6 is there to point to; `grain_measured`: the reference figures
    have the shipped model's grain; `shifted`: its sampler moves the patch grid at every step."""
    out = []
    mean_key = next((k for r in acc.values() for k in r if k.startswith("mean over")), None)
    if acc and mean_key:
        ranked = sorted(acc, key=lambda s: acc[s][mean_key])
        hard, easy = ranked[0], ranked[-1]
        out.append(f"Under the course's metric the hardest file for this model is <code>{esc(hard)}</code> "
                   f"({acc[hard][mean_key]:.3f}, {mean_key}) and the easiest <code>{esc(easy)}</code> "
                   f"({acc[easy][mean_key]:.3f}).")
        gaps = {s: r["evaluator ceiling"] - r[mean_key] for s, r in acc.items() if "evaluator ceiling" in r}
        if gaps:
            s = max(gaps, key=gaps.get)
            out.append(f"The largest gap to the evaluator's ceiling is {gaps[s]:.3f} on <code>{esc(s)}</code>: the "
                       "ceiling is what the same judge reads on ground-truth renders of the same label sets, so the "
                       "gap is the model's, not the judge's.")
    if binding:
        worst = (min(beyond, key=lambda k: beyond[k]["exact scenes"]) if beyond else
                 min(acc, key=lambda k: acc[k][mean_key]) if acc and mean_key else None)
        if worst in binding and binding[worst]["repeated_colour"] == max(b["repeated_colour"] for b in binding.values()) \
                and binding[worst]["repeated_colour"] > 0:
            others = ", ".join(f"<code>{esc(k)}.json</code> {b['repeated_colour']}" for k, b in binding.items()
                               if k != worst)
            out.append(f"Why <code>{esc(worst)}.json</code> is the hardest" + (" on exact scenes" if beyond else "")
                       + ": "
                       f"{binding[worst]['repeated_colour']} of its {binding[worst]['sets']} label sets ask for two "
                       f"objects of one colour ({others})."
                       + (" The labels reach the network as one multi-hot vector added to its time embedding, a sum "
                          "in which a shared colour belongs to no object in particular, so a brown sphere with a "
                          "brown cylinder comes out as two brown spheres, one fused blob, or with a third object "
                          "pushed out: the duplicates and missing objects of the checker's table."
                          if pooled_labels else
                          " Telling two objects of one colour apart is the model's weakest skill: such pairs come out "
                          "twice, fused, or with a third object pushed out."))
    if beyond and acc and mean_key:
        s = min(beyond, key=lambda k: beyond[k]["exact scenes"])
        out.append(f"Top-k overstates how faithful the scenes are: on <code>{esc(s)}</code> the count checker reads "
                   f"only {beyond[s]['exact scenes']:.0%} of the images as exactly the requested objects, while top-k "
                   f"reads {acc[s][mean_key]:.3f}; {beyond[s]['with a duplicate']:.0%} hold a duplicate and "
                   f"{beyond[s]['with an unrequested object']:.0%} an object nobody asked for. The evaluator reads "
                   "which of the 24 objects are present, not how many: a duplicate costs nothing under top-k, and an "
                   "object drawn in place of a requested one costs one label of k.")
    if breakdown:
        kinds = {k: sum(b.get(k, 0) for b in breakdown.values()) for k in MISS_KINDS}
        total = sum(kinds.values())
        if total:
            top = max(kinds, key=kinds.get)
            why = {"wrong shape": " Shape is told by a few pixels of outline at 64×64, and a small object behind a "
                                  "larger one shows less, while colour fills the whole object; the evaluator's own "
                                  "misses on ground-truth renders are wrong shapes too (<code>benchmarks/LOG.md</code>, "
                                  "<i>The judges' ceilings</i>).",
                   "wrong colour": " A wrong colour is mostly a binding error: every requested colour is in the "
                                   "condition, and one lands on the wrong object, often as a duplicate of "
                                   "another (the checker's column of the worst-images table).",
                   "missing": " A requested object not drawn at all is most often one of two objects of one colour, "
                              "fused into the other or pushed out of the scene."}.get(top, "")
            out.append(f"Of the evaluator's {total} top-k misses over all files, {kinds[top]} are <i>{top}</i> "
                       f"({', '.join(f'{k} {v}' for k, v in kinds.items())}).{why}")
    if ablation:
        def mean(key_start):
            vals = [v for r in ablation.values() for k, v in r.items() if k.startswith(key_start)]
            return sum(vals) / len(vals) if vals else None
        g, ng, nl = mean("labels + guidance"), mean("labels, no guidance"), mean("no labels")
        if None not in (g, ng, nl):
            out.append(f"Averaged over the files, guidance moves accuracy from {ng:.3f} (w = 1) to {g:.3f}, and "
                       f"without labels the model scores {nl:.3f}: the labels carry "
                       f"{ng - nl:+.3f} and guidance {g - ng:+.3f}. Without labels the model draws a scene of random "
                       "objects, so its top-k is near chance; guidance extrapolates from the unconditional "
                       "prediction past the conditional one, which draws the requested objects more firmly"
                       + (", at a price in duplicates and FID that top-k does not show (section 6, <i>Guidance "
                          "scale</i>)." if methods_shown else "."))
    if fid and "fid" in fid and "floor" in fid:
        out.append(f"FID on the evaluator's features is {fid['fid']:.1f} against a floor of "
                   f"{fid['floor']['fid']:.1f} for two renders of the same label sets: "
                   f"{fid['fid'] / max(fid['floor']['fid'], 1e-9):.1f}× the floor. Those features encode which "
                   "objects an image holds, so every duplicated or missing object moves it"
                   + (f"; texture adds to it, a faint grain at the {patch}-pixel period of the patches the UNet "
                      "draws" + (" (the reference figures' grain rows)" if grain_measured else "")
                      + (", which a pixel head grafted onto the model did not remove (section 6)" if methods_shown
                         else "")
                      + ("; this sampler moves the patch grid at every step, which cut it to a fifth on the multi-hot quick model"
                         if shifted else "")
                      if patch > 1 else "") + ".")
    if methods_shown:
        out.append("The training runs of section 6 say why the shipped model is as it is. The loss weights that top-k "
                   "rewarded on the small 32×32 net (timesteps drawn by their min-SNR weight, object pixels weighed "
                   "more) starve the high-noise steps where a scene's number of objects is decided, and at a GPU's "
                   "scale they drew duplicates that top-k cannot see; training with every timestep and pixel "
                   "weighed alike, ending in a decaying learning rate, removed most of them. What remained with the "
                   "multi-hot label, two objects of one colour doubled or fused, did not move when object tokens "
                   "were grafted onto that model: a pooled label does not say which colour goes with which shape. "
                   "A net that reads one token per object from its first step (the last table) draws more exact "
                   "scenes with fewer duplicates and wrong shapes, though same-colour pairs still fuse at times.")
    return "<h2>7. Discussion</h2>" + "".join(f"<p>{s}</p>" for s in out)


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;
color:#222;line-height:1.45}
h1{font-size:1.7rem}h2{border-bottom:1px solid #ccc;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.85rem}th,td{border:1px solid #ccc;padding:.2rem .5rem;
text-align:right}th:first-child{text-align:left}thead th{background:#f2f2f2}
table.wide{width:100%}table.text td,table.text th{text-align:left}table.kv td.k{text-align:left;font-weight:600;color:#444}
.eq{margin:.5rem 0 .5rem 1.5rem}.eq svg{max-width:100%;height:auto}img{max-width:100%;height:auto}
img.px{image-rendering:pixelated;display:block}img.full{width:100%}
.cells{width:544px;line-height:0}.cell{position:relative;display:inline-block;margin:1px}
.cell .idx{position:absolute;left:0;top:0;background:rgba(255,255,255,.85);color:#000;font:600 9pt/1 sans-serif;
padding:1px 2px}.missing{display:inline-block;height:64px;background:#eee}
.legend{font-size:8pt;color:#333;margin:.3rem 0}figcaption{font-weight:600}figcaption.note{font-weight:400}
.note{color:#555;font-size:.9rem}figure{margin:.8rem 0}figure.grid{display:block}
.pair{display:flex;gap:1rem;flex-wrap:wrap}.cap{font-weight:600}
code{background:#f4f4f4;padding:0 .2rem}
.provenance{border:1px solid #bbb;background:#fafafa;padding:.2rem 1rem;margin:1rem 0}.provenance h2{margin-top:.6rem}
.warn{color:#a00;font-weight:600}
table.methods{font-size:.78rem}table.methods th,table.methods td.t{text-align:left}
table.methods td{white-space:nowrap}table.methods td.t{white-space:normal}table.methods tbody th{font-weight:400}
table.methods td.c{min-width:14em}table.methods td.a{min-width:8em}
table.methods tr.shipped th,table.methods tr.shipped td{font-weight:700}table.methods tr.ref{font-style:italic;color:#555}
@page{size:A4;margin:14mm}
@media print{body{margin:0;max-width:none;font-size:10pt}h1,h2,h3,h4,.lead{break-after:avoid}
h2{margin-top:1.2rem}figure,table,.keep,.eq,li,tr{break-inside:avoid}table{width:100%;margin-left:0}
table.long,table.methods{break-inside:auto}
.gridpair{flex-wrap:nowrap}.gridpair>div{flex:1 1 0;min-width:0}.gridpair .cells{width:100%}
.gridpair .cell{width:calc(12.5% - 2px)}.gridpair img.px,.gridpair .missing{width:100%!important;height:auto}
.gridpair .missing{aspect-ratio:1}.gridpair .cell .idx{font-size:7pt}}
"""


def grids_section(run: Path, data: CourseData, m4: dict, shipped: bool) -> list[str]:
    """The denoising strip, the graded grids with their ground truth, the live model's grid."""
    s = []
    if (run / "denoising.png").exists():
        s.append(keep("<h3>Denoising process</h3>", "<figure>",
                      img(run / "denoising.png", "denoising", cls="full"),
                      f"<figcaption class='note'>{denoising_caption(m4.get('denoising', {}))}</figcaption>",
                      "</figure>"))
    seed = m4.get("seed")
    head = ("<h3>The 8×4 grids</h3><p class='note'>Every image carries its index in the label file; the legend under "
            "each pair of grids lists the label sets by index. Generated with sampling seed "
            f"{esc(seed if seed is not None else 'of notebook 04')}; ground truth: renders of the same label sets.</p>")
    for split in GRID_SPLITS:
        if split not in data.splits():
            continue
        sets = data.label_sets(split)
        caps = grid_captions(sets)
        d = m4.get("deliverables", {}).get(split, {})
        grids = [f"<div><div class='cap'>{esc(split)}.json, generated — accuracy {fmt(d.get('accuracy'))}</div>"
                 f"{indexed_cells(folder_images(run / 'images' / split, len(sets)), caps)}</div>"]
        if (data.root / f"{split}_gt").is_dir():
            grids.append(f"<div><div class='cap'>{esc(split)}.json, ground truth</div>"
                         f"{indexed_cells(folder_images(data.root / f'{split}_gt', len(sets)), caps)}</div>")
        # side by side when printed: a pair at half size fits a third of a page, so keeping it whole leaves no gap
        s.append(f"<figure class='grid'>{head}<div class='pair gridpair'>{''.join(grids)}</div>{legend(sets)}</figure>")
        head = ""
    samples = sorted((run / "train" / "samples").glob("test-step-*.png"),
                     key=lambda p: int(p.stem.rsplit("-", 1)[-1]) if p.stem.rsplit("-", 1)[-1].isdigit() else 0)
    if shipped and samples:
        sets = data.label_sets("test")
        cells = split_grid(samples[-1], len(sets))
        s.append(keep("<h3>The live model beside the shipped one</h3>",
                      f"<p class='note'>The model trained in this run ({esc(samples[-1].stem)}, its validation "
                      f"sampler) on label sets 0–{len(cells) - 1} of test.json (the legend above); the grids above "
                      "are the shipped model's.</p>", indexed_cells(cells, grid_captions(sets[:len(cells)]))))
    return s


def denoising_caption(d: dict) -> str:
    """The strip's caption: what its rows show and whether its final image shows its own prompt, by each judge."""
    labels = d.get("labels", ["red sphere", "cyan cylinder", "cyan cube"])
    prompt = esc(json.dumps(labels))
    rows = d.get("rows", ["x_t"])
    what = ("x<sub>t</sub> (upper row) and the model's estimate of the clean image x̂<sub>0</sub> (lower row)"
            if "x0" in rows else "x<sub>t</sub>")
    steps = f" at {len(d['timesteps'])} of the {d['steps']} steps of {esc(d.get('sampler', 'the sampler'))}" \
        if d.get("timesteps") and d.get("steps") else ""
    out = f"{prompt}: {what}{steps}, from noise (left) to the final image (right)."
    ev, ck = d.get("evaluator"), d.get("checker")
    if ev is None and ck is None:
        return out
    ok = (ev is None or ev.get("hits") == ev.get("labels")) and (ck is None or not ck)
    out += (" The final image shows its prompt" if ok else " <b>The final image fails its own prompt</b>") + ":"
    if ev is not None:
        out += (f" the evaluator's top-{ev.get('labels')} holds {ev.get('hits')} of its {ev.get('labels')} "
                f"objects ({esc(ev.get('reading', ''))})")
    if ck is not None:
        out += ("; the count checker reads " + (esc("; ".join(ck)) if ck else "exactly the requested objects"))
    return out + "."


def judges_note(breakdown: dict, beyond: dict, seeds) -> str:
    """One figure of each judge side by side, and why they differ."""
    if not breakdown or not beyond:
        return ""
    split = max(beyond, key=lambda k: beyond[k].get("with a missing object", 0))
    b = breakdown.get(split, {})
    if "missing" not in b or "with a missing object" not in beyond[split]:
        return ""
    over = f"over seeds {fmt(list(seeds))}" if seeds else "over this run's seeds"
    return (f"<p class='note'>On <code>{esc(split)}.json</code> the evaluator calls {b['missing']} of "
            f"{b.get('labels', '?')} labels <i>missing</i> (graded images, top-k slot given to an unrelated object), "
            f"while the count checker reads a requested object drawn zero times in "
            f"{beyond[split]['with a missing object']:.0%} of the images ({over}). {esc(JUDGES_DIFFER)}</p>")


BREAKDOWN_COLUMNS = {"labels": "labels", "hits": "top-k hits", "wrong shape": "wrong shape", "wrong colour":
                     "wrong colour", "missing": "missing (slot to an unrelated object)", "images": "images",
                     "with unrequested": "images with an unrequested object (p > 0.5)"}
BEYOND_COLUMNS = {"exact scenes": "exact scenes", "with a duplicate": "images with a duplicate",
                  "with an unrequested object": "with an unrequested object",
                  "with a missing object": "with a requested object missing"}


def errors_section(m5: dict) -> list[str]:
    """The evaluator's top-k misses per file, labelled as its reading; the worst images by file and index, with
    the checker's reading (duplicates named) beside the evaluator's."""
    s = []
    breakdown, worst = m5.get("breakdown", {}), m5.get("worst", [])
    if breakdown:
        rows = {f"{k}.json": {BREAKDOWN_COLUMNS.get(c, c): v for c, v in r.items()} for k, r in breakdown.items()}
        s.append(keep("<h3>Error analysis</h3>",
                      f"<p class='note'>The evaluator's top-k reading of the graded images (seed {esc(m5.get('seed', 0))}"
                      "), in labels: each wanted object outside the top-k, by what took its slot.</p>",
                      table(rows, "file (evaluator's reading)"),
                      judges_note(breakdown, m5.get("beyond_top_k", {}), m5.get("seeds"))))
    if worst:
        rows = {r["image"]: {k: v for k, v in r.items() if k != "image"} for r in worst}
        s += ["<h4>The worst images</h4>",  # a long table: it may break between rows, its head repeated
              "<p class='note lead'>By file and index (the grids' numbers for test.json and new_test.json): the "
              "count checker's reading (a duplicate named as such) beside the evaluator's top-k reading "
              "(wanted → seen instead).</p>", table(rows, "image", "text wide long")]
    return s


def samplers_note(m4: dict, acc: dict, shipped: bool) -> str:
    """Which file and seed the sampler table comes from, the sampler in use against the best, and why it is the
    default."""
    rows, d = m4.get("samplers", {}), m4.get("deliverables", {}).get("test", {})
    if not rows:
        return ""
    seed = m4.get("seed", 0)
    chosen = next((k for k, r in rows.items() if (r.get("sampler"), r.get("steps")) == (d.get("sampler"),
                                                                                          d.get("steps"))), None)
    best = max(rows, key=lambda k: rows[k]["accuracy"])
    out = (f"All on <code>test.json</code>, sampling seed {esc(seed)}, guidance w = {fmt(d.get('guidance'))}. ")
    if chosen and chosen != best:
        out += (f"On this seed {esc(best)} scores {rows[best]['accuracy']:.3f} and the sampler in use, "
                f"{esc(chosen)}, {rows[chosen]['accuracy']:.3f}. ")
    elif chosen:
        out += f"The sampler in use, {esc(chosen)}, also scores best on this seed ({rows[chosen]['accuracy']:.3f}). "
    else:
        out += (f"The sampler in use ({esc(d.get('sampler'))}, {esc(d.get('steps'))} steps) is not among these "
                f"settings; the best here is {esc(best)}. ")
    spread = acc.get("test", {}).get("std")
    if spread is not None:
        out += (f"One seed of {d.get('labels', '?')} labels is a noisy ranking: the same file's top-k moves with a "
                f"std of {spread:.3f} between seeds (accuracy table). ")
    out += ("The default is the model's saved sampler (<code>lab6_config.yaml</code>, <code>sample</code>)"
            + (": top-k is not why it was chosen; over three seeds the multi-hot model shipped before drew more "
               "exact scenes and a lower FID with SDE-DPM++-25 at w = 3 than with DPM++-25 (<code>benchmarks/LOG.md"
               "</code>, <i>Guidance and sampler of the fine-tuned model</i>)." if shipped else "."))
    return f"<p class='note'>{out}</p>"


def guidance_note(m4: dict) -> str:
    """Which files and seed the guidance table comes from, the default scale and the best per file."""
    g, d = m4.get("guidance", {}), m4.get("deliverables", {}).get("test", {})
    if not g:
        return ""
    w0 = d.get("guidance")
    best = {sp: max(v, key=v.get) for sp, v in g.items() if v}
    out = (f"Every test file with the default sampler, sampling seed {esc(m4.get('seed', 0))}; the model's default "
           f"w = {fmt(w0)}. Best w on this seed: "
           + ", ".join(f"{esc(sp)} w = {float(w):g} ({g[sp][w]:.3f})" for sp, w in best.items()) + ".")
    return f"<p class='note'>{out}</p>"


def kid_sentence(fid: dict) -> str:
    """FID and KID with their floors; KID's ± and a negative floor explained."""
    kid, std, floor = fid["kid"], fid.get("kid_std"), fid["floor"]["kid"]
    sub = f" subsets of {fid['kid_subset']} images" if fid.get("kid_subset") else " random subsets"
    out = (f"FID {fid['fid']:.1f} (floor {fid['floor']['fid']:.1f}); KID {kid:.4f}"
           + (f" ± {std:.4f} (std over{sub})" if std is not None else "") + f", floor {floor:.4f}; on "
           f"{fid['fake']} generated images against {fid['real']} renders, on the evaluator's pooled features. "
           "The floor compares two renders of the same label sets.")
    if floor < 0 or (std is not None and std > abs(kid)):
        out += (" KID is an unbiased estimate, so for two samples of the same distribution it scatters around zero "
                "and can come out slightly negative" + (", as the floor does here" if floor < 0 else "")
                + ("; a KID within its std of zero is no measurable distance" if std is not None and std > abs(kid)
                   else "") + ".")
    return f"<p>{out}</p>"


def ablations_section(run: Path, data: CourseData, m4: dict, m5: dict, shipped: bool) -> list[str]:
    """Ablation table and images, the sampler comparison and the guidance sweep."""
    s = ["<h2>5. Ablations</h2>"]
    if m5.get("ablation"):
        s.append(keep("<p>Each row re-samples every test file with the same seed "
                      f"({esc(m5.get('seed', m4.get('seed', 0)))}): the default sampler and guidance, the conditional "
                      "model alone (w = 1), and no labels at all (chance level).</p>", table(m5["ablation"], "file")))
        sets = data.label_sets("test") if "test" in data.splits() else []
        for f in sorted((run / "figures").glob("ablation-*.png")):
            cells = split_grid(f, 16)
            s.append(f"<figure class='grid'><figcaption>{esc(f.stem.split('-', 2)[-1].replace('_', ' '))}: label sets "
                     f"0–{len(cells) - 1} of test.json (legend above)</figcaption>"
                     f"{indexed_cells(cells, grid_captions(sets[:len(cells)]) or [str(i) for i in range(len(cells))])}"
                     "</figure>")
    if m4.get("samplers"):
        rows = {k: {"steps": r.get("steps"), "accuracy": r.get("accuracy"),
                    "seconds": None if r.get("seconds") is None else f"{r['seconds']:.1f}"}
                for k, r in m4["samplers"].items()}
        s.append(keep("<h3>Samplers</h3>", table(rows, "sampler"), samplers_note(m4, m5.get("accuracy", {}), shipped)))
    if m4.get("guidance"):
        s.append(keep("<h3>Guidance scale</h3>",
                      table({f"w = {w}": {sp: v[w] for sp, v in m4["guidance"].items()}
                             for w in next(iter(m4["guidance"].values()))}, "guidance"), guidance_note(m4)))
    return s


def build_report(run_dir: str | os.PathLike, data_root: str | os.PathLike,
                 methods_path: str | os.PathLike = SHIPPED_METHODS) -> str:
    """The report's HTML for a finished run; section 6 from `methods_path` (the shipped methods.json)."""
    run, data = Path(run_dir), CourseData(data_root)
    metrics = read_json(run / "metrics.json")
    m1, m3, m4, m5 = (metrics.get(k, {}) for k in ("01_data", "03_training", "04_sampling", "05_results"))
    model_dir = Path(m4["model"]) if m4.get("model") else run / "train"
    cfg = model_config(model_dir if (model_dir / "lab6_config.yaml").exists() else model_dir / "pipeline")
    origin = m4.get("model_origin", "")
    shipped = "shipped" in origin
    given = bool(metrics.get("run", {}).get("model"))  # `lab6 run --model`: notebook 03 did not run
    if given:
        m3 = {}
    try:
        evaluator_path = find_evaluator(data_root=data.root)
        evaluator = shown_path(evaluator_path)
    except CheckpointError:
        evaluator_path, evaluator = None, "—"
    live_cfg = None if given else model_config(run / "train")
    try:
        stages = read_stages(model_dir)
    except CheckpointError:
        stages = []
    s = [f"<!doctype html><html><head><meta charset='utf-8'><title>Lab 6 report: conditional DDPM</title>"
         f"<style>{CSS}</style></head><body>",
         "<h1>Lab 6 — a conditional DDPM for CLEVR-style scenes</h1>",
         provenance(data, evaluator_path, origin, model_dir, stages, live_steps(run, m3, live_cfg), given)]
    # 1. Introduction
    s += ["<h2>1. Introduction</h2>",
          "<p>A denoising diffusion model (DDPM) learns to turn Gaussian noise into a 64×64 scene that holds a "
          "given set of 1–3 objects out of 24 (3 shapes × 8 colours). A multi-label ResNet-18, the evaluator, "
          "scores each image by its top-k classes (k = number of requested objects); accuracy is hits / labels "
          "pooled over a test file.</p><ul>",
          f"<li>Data: <code>{esc(shown_path(data.root))}</code>, {m1.get('train_images', len(data.train))} "
          f"training images; test files {', '.join(f'<code>{esc(x)}.json</code>' for x in data.splits())}.</li>",
          f"<li>Evaluator: <code>{esc(evaluator)}</code>.</li>",
          f"<li>Model behind every sampled figure: {esc(origin.split(' (')[0].split(':')[0])} "
          f"(<code>{esc(shown_path(model_dir))}</code>).</li>"]
    if m3:
        s.append(f"<li>Trained live in this run (notebook 03): {m3.get('steps', '?')} steps, final loss "
                 f"{fmt(m3.get('final_loss'))}, {fmt(m3.get('img_per_s'))} img/s.</li>")
    s.append("</ul>")
    # 2-3. Implementation, hyperparameters
    if cfg is not None:
        s += [implementation(cfg, count_parameters(build_model(cfg.model)), stages), hyperparameters(cfg, stages)]
    # 4. Results
    s.append("<h2>4. Results</h2>")
    curves = {}
    shipped_log = last_stage_log(model_dir, stages) if shipped else None
    if shipped_log:
        curves["shipped model (its last training stage)"] = read_metrics(shipped_log)
    if (run / "train" / "metrics.jsonl").exists() and not given:
        curves["trained live in this run"] = read_metrics(run / "train" / "metrics.jsonl")
    curve = training_curve(curves)
    if given:
        s += ["<h3>Training</h3>", f"<p>Notebook 03 (training) was not run: <code>lab6 run --model</code> drew every "
              f"figure below from the given model <code>{esc(shown_path(model_dir))}</code>.</p>"]
    elif curve:
        live_w, shipped_w = (loss_weighting(c) if c else None for c in (live_cfg, cfg))
        scales = ("" if len(curves) < 2 or None in (live_w, shipped_w) or live_w == shipped_w else
                  f"<p class='note'>The two curves are not one loss: the live run weighs its loss {live_w}; the "
                  f"shipped model's last stage weighs {shipped_w}.</p>")
        s.append(keep("<h3>Training curve</h3>", img(curve, "training loss against step"), scales))
    s += reference_figures(model_dir)
    acc = m5.get("accuracy", {})
    seeds = m5.get("seeds") or m5.get("fid", {}).get("seeds")
    if acc:
        s.append(keep("<h3>Accuracy (the course's top-k metric)</h3>",
                      "<p class='note'>This run's own figures. Per test file: the graded images (sampling seed "
                      f"{esc(m4.get('seed', m5.get('seed', 0)))} of notebook 04, the grids below), the mean and "
                      "spread over this run's sampling seeds"
                      + (f" {esc(fmt(list(seeds)))}" if seeds else "") + ", and the evaluator's own accuracy on "
                      "ground-truth renders of the same label sets (its ceiling), where the data has them.</p>",
                      table(acc, "file")))
    beyond = m5.get("beyond_top_k", {})
    fid = m5.get("fid", {})
    if beyond:
        rows = {k: {BEYOND_COLUMNS.get(c, c): v for c, v in r.items()} for k, r in beyond.items()}
        s.append(keep("<h3>Beyond top-k: exact scenes and FID</h3>",
                      "<p class='note'>The count checker's reading: shares of images, mean over this run's sampling "
                      "seeds" + (f" {esc(fmt(list(seeds)))}" if seeds else "") + ".</p>",
                      table(rows, "file (checker's reading)"),
                      kid_sentence(fid) if fid and "floor" in fid else "",
                      "" if is_synthetic(data.root) else f"<p class='note'>{esc(RENDER_REFERENCE_NOTE)}</p>"))
    s += grids_section(run, data, m4, shipped)
    s += errors_section(m5)
    s += ablations_section(run, data, m4, m5, shipped)
    methods = load_methods(methods_path)
    s += methods_section(methods, methods_path)
    binding = {sp: binding_stats(data.label_sets(sp)) | {"sets": len(data.label_sets(sp))} for sp in data.splits()}
    scores = model_scores(model_dir)
    s.append(discussion(acc, beyond, m5.get("breakdown", {}), m5.get("ablation", {}), fid, binding,
                        pooled_labels=cfg is None or cfg.model.object_tokens is None,
                        patch=(cfg.model.patch_size or 1) if cfg is not None else 1,
                        methods_shown=isinstance(methods, dict),
                        grain_measured=scores is not None and "grain" in scores["figures"],
                        shifted=cfg is not None and cfg.sample.shift_patches))
    if live_cfg is not None and cfg is not None and shipped:
        s.append(f"<p class='note'>The live model of this run is {live_network(live_cfg, cfg)}; its training budget "
                 f"here was {live_cfg.train.max_steps} steps or {fmt(live_cfg.train.max_minutes)} minutes.</p>")
    s.append("</body></html>")
    return "\n".join(s)


def write_report(run_dir: str | os.PathLike, data_root: str | os.PathLike, pdf: bool = True) -> list[Path]:
    """Write run_dir/report.html and, when Chromium is found, report.pdf; returns the files written."""
    run = Path(run_dir)
    out = run / "report.html"
    with atomic_path(out) as tmp:
        Path(tmp).write_text(build_report(run, data_root), encoding="utf-8")
    written = [out]
    if pdf:
        chromium = find_chromium()
        if chromium is None:
            print("[report] report.pdf not written: no Chromium found (install it, e.g. `apt-get install "
                  "chromium`, or set LAB6_CHROMIUM to its path)", flush=True)
        else:
            try:
                print_pdf(out, run / "report.pdf", chromium)
                written.append(run / "report.pdf")
            except (OSError, RuntimeError, subprocess.TimeoutExpired) as e:
                print(f"[report] warning: report.pdf not written: {e}", flush=True)
    return written
