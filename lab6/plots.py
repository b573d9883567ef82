"""Image grids and figures shared by the CLI, the notebooks and the report."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .data import CourseData, load_image, to_uint8
from .io import atomic_path
from .labels import COLOURS, OBJECTS, SHAPES
from .labels import PALETTE as _PALETTE
from .schedules import alphas_cumprod, named_schedules, q_sample


def _as_uint8(images) -> np.ndarray:
    """Float tensor (B, 3, H, W) in [-1, 1] or uint8 array (B, H, W, 3) -> uint8 (B, H, W, 3)."""
    if isinstance(images, torch.Tensor) and images.dtype != torch.uint8:
        return to_uint8(images)
    a = np.asarray(images)
    if a.ndim == 4 and a.shape[1] == 3 and a.shape[-1] != 3:
        a = a.transpose(0, 2, 3, 1)
    return a.astype(np.uint8)


def make_grid(images, nrow: int = 8, padding: int = 2, pad_value: int = 255) -> Image.Image:
    """Tile images into one PIL image, `nrow` per row (torchvision's make_grid, as a picture)."""
    a = _as_uint8(images)  # (B, H, W, 3)
    b, h, w, _ = a.shape
    ncol = min(nrow, b)
    nrows = -(-b // nrow)
    grid = np.full((nrows * (h + padding) + padding, ncol * (w + padding) + padding, 3), pad_value, np.uint8)
    for i in range(b):
        r, c = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + c * (w + padding)
        grid[y:y + h, x:x + w] = a[i]
    return Image.fromarray(grid)


def labelled_grid(images, captions: Sequence[str], ncol: int = 8, scale: float = 1.6):
    """A matplotlib figure of images with a caption under each (e.g. their label sets)."""
    import matplotlib.pyplot as plt

    a = _as_uint8(images)
    n = len(a)
    nrows = -(-n // ncol)
    fig, axes = plt.subplots(nrows, ncol, figsize=(ncol * scale, nrows * (scale + 0.35)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        ax = axes.flat[i]
        ax.imshow(a[i], interpolation="nearest")
        ax.set_title(captions[i] if i < len(captions) else "", fontsize=6.5)
    fig.tight_layout()
    return fig


def side_by_side(generated, truth, label_sets: Sequence[Sequence[str]], ncol: int = 8):
    """Generated images above the ground truth of the same label sets: rows of `ncol` pairs, captioned once."""
    g, t = _as_uint8(generated), _as_uint8(truth)
    images, captions = [], []
    for start in range(0, len(g), ncol):
        images += list(g[start:start + ncol]) + list(t[start:start + ncol])
        captions += [caption(s) for s in label_sets[start:start + ncol]] + ["ground truth"] * len(t[start:start + ncol])
    return labelled_grid(images, captions, ncol=ncol)


def caption(labels: Sequence[str]) -> str:
    """One caption line per object, e.g. 'red sphere\\ncyan cube'."""
    return "\n".join(labels)


def sample_grid(root, n: int = 32, seed: int = 0, ncol: int = 8):
    """A labelled grid figure of `n` random training images of a dataset folder (captions: their labels)."""
    data = CourseData(root)
    names = list(data.train)
    pick = np.random.default_rng(seed).choice(len(names), size=min(n, len(names)), replace=False)
    images = np.stack([load_image(data.image_dir / names[i], 64) for i in pick])
    return labelled_grid(images, [caption(data.train[names[i]]) for i in pick], ncol=ncol)


def plot_label_stats(stats: dict, title: str = ""):
    """Bar chart of class frequencies and a heat map of co-occurrences (from data.label_stats)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    n = len(OBJECTS)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(16, 7.5), gridspec_kw={"width_ratios": [1, 1.15]})
    ax1.bar(range(n), stats["class_counts"], color=[_swatch(o) for o in OBJECTS], edgecolor="k")
    ax1.set_xticks(range(n), OBJECTS, rotation=90, fontsize=9)
    ax1.set_ylabel("images containing the object")
    ax1.set_title(f"{title} class frequency".strip())
    co = stats["cooccurrence"].astype(float).copy()  # (24, 24); the diagonal holds the class counts
    co[range(n), range(n)] = float("nan")  # an object never pairs with itself: a label set has distinct objects
    never = co == 0
    co[never] = float("nan")
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad("white")
    im = ax2.imshow(co, cmap=cmap)
    for i in range(n):  # the diagonal, hatched: no data by definition
        ax2.add_patch(plt.Rectangle((i - 0.5, i - 0.5), 1, 1, facecolor="0.85", hatch="////", edgecolor="0.5", lw=0))
    ys, xs = np.nonzero(never)
    ax2.scatter(xs, ys, marker="x", color="crimson", s=22, lw=1.2)
    ax2.set_xticks(range(n), OBJECTS, rotation=90, fontsize=8)
    ax2.set_yticks(range(n), OBJECTS, fontsize=8)
    ax2.set_title(f"{title} co-occurrence of object pairs".strip())
    cb = fig.colorbar(im, ax=ax2, fraction=0.046, pad=0.02)
    cb.set_label("images holding both objects")
    ax2.legend(handles=[Patch(facecolor="0.85", hatch="////", edgecolor="0.5", label="same object (no pair)"),
                        plt.Line2D([], [], marker="x", color="crimson", ls="",
                                   label=f"never together ({never.sum() // 2} pairs)")],
               loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, fontsize=9, frameon=False)
    fig.tight_layout()
    return fig


def _swatch(name: str) -> tuple[float, float, float]:
    """CLEVR's RGB colour of an object name, as matplotlib floats."""
    return tuple(c / 255 for c in _PALETTE[name.split()[0]])


class Table:
    """A small table of rows {name: {column: value}} that prints as text and renders as HTML in Jupyter."""

    def __init__(self, rows: dict[str, dict], index_name: str = "", floatfmt: str = ".3f"):
        self.rows, self.index_name, self.floatfmt = rows, index_name, floatfmt
        self.columns = list(dict.fromkeys(c for r in rows.values() for c in r))

    def _fmt(self, v) -> str:
        return format(v, self.floatfmt) if isinstance(v, float) else str(v)

    def __str__(self) -> str:
        head = [self.index_name] + self.columns
        body = [[str(k)] + [self._fmt(r.get(c, "")) for c in self.columns] for k, r in self.rows.items()]
        widths = [max(len(x) for x in col) for col in zip(head, *body)]
        line = lambda cells: "  ".join(x.rjust(w) if i else x.ljust(w) for i, (x, w) in enumerate(zip(cells, widths)))
        return "\n".join([line(head)] + [line(b) for b in body])

    __repr__ = __str__

    def _repr_html_(self) -> str:
        th = "".join(f"<th>{c}</th>" for c in [self.index_name] + self.columns)
        trs = "".join("<tr><th>{}</th>{}</tr>".format(k, "".join(f"<td>{self._fmt(r.get(c, ''))}</td>"
                                                             for c in self.columns)) for k, r in self.rows.items())
        return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def read_metrics(path) -> list[dict]:
    """Records of a metrics.jsonl file (one JSON object per line; a torn last line is skipped)."""
    import json

    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return rows


def plot_training(records: list[dict], title: str = ""):
    """Loss (with a moving average) and learning rate against step, plus validation accuracy if logged."""
    import matplotlib.pyplot as plt

    loss = [(r["step"], r["loss"]) for r in records if "loss" in r]
    acc_keys = sorted({k for r in records for k in r if k.endswith("_acc")})
    fig, axes = plt.subplots(1, 2 if acc_keys else 1, figsize=(11 if acc_keys else 6, 3.4), squeeze=False)
    ax = axes[0, 0]
    if loss:
        s, v = zip(*loss)
        ax.plot(s, v, alpha=0.35, label="loss")
        w = max(1, len(v) // 20)
        avg = np.convolve(v, np.ones(w) / w, mode="valid")
        ax.plot(s[w - 1:], avg, label=f"moving average ({w})")
        ax.set(xlabel="step", ylabel="loss", title=f"{title} training loss".strip())
        ax.legend()
        lr = [(r["step"], r["lr"]) for r in records if "lr" in r]
        if lr:
            ax2 = ax.twinx()
            ax2.plot(*zip(*lr), color="gray", lw=0.8, ls="--")
            ax2.set_ylabel("learning rate", color="gray")
    if acc_keys:
        ax = axes[0, 1]
        steps = sorted({r["step"] for r in records if any(k in r for k in acc_keys)})
        if len(steps) <= 3:  # a line through two or three points says little: bars with their values
            width = 0.8 / len(acc_keys)
            for j, k in enumerate(acc_keys):
                by_step = {r["step"]: r[k] for r in records if k in r}
                x = np.arange(len(steps)) + (j - (len(acc_keys) - 1) / 2) * width
                bars = ax.bar(x, [by_step.get(s, np.nan) for s in steps], width, label=k.removesuffix("_acc"))
                ax.bar_label(bars, fmt="%.2f", fontsize=8)
            ax.set_xticks(range(len(steps)), [f"step {s}" for s in steps])
            ax.set(ylabel="evaluator accuracy", ylim=(0, 1.1), title="validation accuracy")
        else:
            for k in acc_keys:
                pts = [(r["step"], r[k]) for r in records if k in r]
                ax.plot(*zip(*pts), marker="o", label=k.removesuffix("_acc"))
            ax.set(xlabel="step", ylabel="evaluator accuracy", ylim=(0, 1.02), title="validation accuracy")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


STRIP_FRAMES = 6        # captured steps in the denoising strip, the final image beside them: 7 columns
STRIP_WIDTH_IN = 7.0    # the strip's width: a printed A4 page's text width, so its labels print at their size
STRIP_FONT_PT = 10


def strip_steps(num_steps: int, frames: int = STRIP_FRAMES) -> list[int]:
    """Loop indices of `frames` evenly spaced sampling steps out of `num_steps`, the first and the last included."""
    frames = max(2, min(frames, num_steps))
    return sorted({round(i * (num_steps - 1) / (frames - 1)) for i in range(frames)})


def denoising_strip(frames: torch.Tensor, timesteps, final: torch.Tensor | None = None, title: str = "",
                    x0: torch.Tensor | None = None):
    """Frames (S, 3, H, W) in [-1, 1] from noise to image, each titled with its t, the final image beside them;
    with `x0` (S, 3, H, W), the model's estimate of the clean image at the same steps as a second row.
    The figure is STRIP_WIDTH_IN wide with STRIP_FONT_PT labels, so at a page's width they print at that size."""
    import matplotlib.pyplot as plt

    rows = [("$x_t$", list(_as_uint8(frames)))] + ([(r"$\hat x_0$", list(_as_uint8(x0)))] if x0 is not None else [])
    names = [f"t = {t}" for t in timesteps]
    ncol = len(names) + (final is not None)
    side = STRIP_WIDTH_IN / (ncol + 0.35)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(STRIP_WIDTH_IN, len(rows) * side + 0.3 + 0.35 * bool(title)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, (row_name, imgs) in enumerate(rows):
        for c, im in enumerate(imgs):
            axes[r, c].imshow(im, interpolation="nearest")
            if r == 0:  # the t of each column, once
                axes[r, c].set_title(names[c], fontsize=STRIP_FONT_PT)
        axes[r, 0].text(-0.06, 0.5, row_name, transform=axes[r, 0].transAxes, rotation=90, ha="right", va="center",
                        fontsize=STRIP_FONT_PT)
    if final is not None:
        axes[0, -1].imshow(_as_uint8(final[None] if final.dim() == 3 else final)[0], interpolation="nearest")
        axes[0, -1].set_title("final", fontsize=STRIP_FONT_PT)
    if title:
        fig.suptitle(title, fontsize=STRIP_FONT_PT)
    fig.tight_layout(pad=0.3)
    return fig


def plot_sampler_comparison(rows: dict, title: str = ""):
    """Accuracy and seconds per sampler setting (rows from compare.sampler_comparison)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    names = list(rows)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.2))
    bars = a1.bar(names, [rows[n]["accuracy"] for n in names], color="tab:blue")
    a1.bar_label(bars, fmt="%.2f", fontsize=8)
    a1.set(ylabel="evaluator accuracy", ylim=(0, 1.08), title=f"{title} accuracy".strip())
    bars = a2.bar(names, [rows[n]["seconds"] for n in names], color="tab:orange")
    a2.bar_label(bars, fmt="%.3g", fontsize=8)
    a2.set(ylabel="seconds (log scale)", yscale="log", title="wall time for the whole label file")
    a2.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))  # 1, 2, 5, 10, 20, ...: plain numbers, no 6x10^0
    a2.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    a2.yaxis.set_minor_formatter(NullFormatter())
    secs = [rows[n]["seconds"] for n in names]
    a2.set_ylim(min(secs) / 2, max(secs) * 2.5)  # room for the labels above the bars
    for ax in (a1, a2):
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig


def plot_guidance_sweep(rows: dict, title: str = "", default: float | None = None):
    """Accuracy against classifier-free guidance scale (rows from compare.guidance_sweep), one line per split;
    `default`: the model's own guidance scale, marked with a vertical line."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for split, by_scale in rows.items():
        scales = sorted(by_scale)
        ax.plot(scales, [by_scale[w]["accuracy"] for w in scales], marker="o", label=split)
    if default is not None:
        ax.axvline(default, color="gray", ls=":", lw=1.2, label=f"model default w = {default:g}")
    ax.set(xlabel="guidance scale w (1 = no guidance)", ylabel="evaluator accuracy", ylim=(0, 1.02),
           title=f"{title} guidance sweep".strip())
    ax.legend()
    fig.tight_layout()
    return fig


def plot_confusions(results, title: str = ""):
    """Bars of missed objects per colour and per shape, split by kind of miss (from Evaluator.breakdown); the kinds
    are grey shades with hatching, so no bar colour can be read as an object colour."""
    import matplotlib.pyplot as plt

    kinds = sorted({m.kind for r in results for m in r.misses}) or ["missing"]
    by = {"colour": {c: dict.fromkeys(kinds, 0) for c in COLOURS}, "shape": {s: dict.fromkeys(kinds, 0) for s in SHAPES}}
    wanted = {"colour": dict.fromkeys(COLOURS, 0), "shape": dict.fromkeys(SHAPES, 0)}
    for r in results:
        for name in r.labels:
            c, s = name.split()
            wanted["colour"][c] += 1
            wanted["shape"][s] += 1
        for m in r.misses:
            c, s = m.object.split()
            by["colour"][c][m.kind] += 1
            by["shape"][s][m.kind] += 1
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.2), gridspec_kw={"width_ratios": [2.4, 1]})
    for ax, key in zip(axes, ("colour", "shape")):
        cats = list(by[key])
        bottom = np.zeros(len(cats))
        for i, kind in enumerate(kinds):
            v = np.array([by[key][c][kind] / max(1, wanted[key][c]) for c in cats])
            ax.bar(cats, v, bottom=bottom, label=kind, color=str(0.25 + 0.3 * i), edgecolor="black", linewidth=0.5,
                   hatch=("", "//", "..")[i % 3])
            bottom += v
        ax.set(ylabel="missed / wanted", title=f"{title} misses by {key}".strip(), ylim=(0, max(0.05, bottom.max() * 1.15)))
        ax.tick_params(axis="x", rotation=30)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def validation_grids(folder, split: str = "test") -> list[tuple[int, Path]]:
    """(step, path) of the fixed-seed validation grids `<split>-step-<step>.png` in a run's samples/, by step."""
    import re

    found = [(int(m.group(1)), f) for f in Path(folder).glob(f"{split}-step-*.png")
             if (m := re.fullmatch(rf"{re.escape(split)}-step-(\d+)\.png", f.name))]
    return sorted(found)


def plot_validation_grids(grids: Sequence[tuple[int, Path]], records: Sequence[dict] = (), title: str = "",
                          most: int = 6):
    """Validation grids (from validation_grids) one above the other, each titled by its step and the validation
    accuracies logged at that step (metrics.jsonl records); at most `most`, the first and the last among them."""
    import matplotlib.pyplot as plt

    grids = list(grids)
    if len(grids) > most:
        keep = sorted({round(i * (len(grids) - 1) / (most - 1)) for i in range(most)})
        grids = [grids[i] for i in keep]
    acc: dict[int, dict[str, float]] = {}
    for r in records:
        acc.setdefault(r.get("step"), {}).update({k[:-4]: v for k, v in r.items() if k.endswith("_acc")})
    images = [Image.open(path) for _, path in grids]
    rows = [9 * im.height / im.width + 0.35 for im in images]  # inches: a 9-inch-wide grid and its title
    fig, axes = plt.subplots(len(grids), 1, figsize=(9, sum(rows)), squeeze=False,
                             gridspec_kw={"height_ratios": rows})
    for ax, (step, _), im in zip(axes[:, 0], grids, images):
        ax.imshow(im, interpolation="nearest")
        scores = ", ".join(f"{split} {v:.2f}" for split, v in acc.get(step, {}).items())
        ax.set_title(f"{title} step {step}".strip() + (f"  |  top-k {scores}" if scores else ""), fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    return fig


class LivePlot:
    """A training callback that redraws the loss curve in a notebook every `every` logged records."""

    def __init__(self, every: int = 10, title: str = ""):
        self.records: list[dict] = []
        self.every, self.title, self._handle, self._seen = every, title, None, 0

    def __call__(self, record: dict) -> None:
        self.records.append(record)
        self._seen += 1
        if self._seen % self.every == 0 or any(k.endswith("_acc") for k in record):
            self.draw()

    def draw(self):
        """Redraw now (also call once after training for the final curve)."""
        import matplotlib.pyplot as plt
        from IPython.display import display

        fig = plot_training(self.records, self.title)
        if self._handle is None:
            self._handle = display(fig, display_id=True)
        else:
            self._handle.update(fig)
        plt.close(fig)
        return fig

    def finish(self, records: list[dict] | None = None):
        """Draw the final curve once: over the live figure if there is one, else as a new output.
        `records`: the whole run's (e.g. read_metrics of metrics.jsonl, which a resumed run's callback lacks)."""
        if records is not None:
            self.records = list(records)
        return self.draw()


def png_display(image):
    """A PIL image as an IPython PNG display object: one format in a saved notebook, not PNG and JPEG both."""
    import io

    from IPython.display import Image as PNG

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return PNG(data=buf.getvalue(), format="png")


def save_figure(fig, path, dpi: int = 120) -> None:
    """Save a matplotlib figure as PNG atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")


def plot_alphas_cumprod(schedules=None, log_snr: bool = True):
    """Figure of alpha-bar_t (and log SNR) against t; `schedules`: {name: ScheduleConfig} or a list of them.

    Each schedule gets its own line style, so curves that coincide stay visible; a schedule whose SNR reaches 0
    (zero terminal SNR) has log SNR = -inf at its last step, drawn as an arrow at the bottom of the panel.
    """
    import matplotlib.pyplot as plt

    named = named_schedules(schedules)
    styles = [dict(lw=1.6), dict(lw=3.5, alpha=0.45), dict(lw=1.6, ls="--"), dict(lw=1.4, ls=":")]
    ncols = 2 if log_snr else 1
    fig, axes = plt.subplots(1, ncols, figsize=(5.5 * ncols, 3.6), squeeze=False)
    for k, (name, s) in enumerate(named.items()):
        alpha_prod_t = alphas_cumprod(s)
        t = torch.arange(len(alpha_prod_t))
        line, = axes[0, 0].plot(t, alpha_prod_t, label=name, **styles[k % len(styles)])
        if log_snr:
            finite = alpha_prod_t > 0
            ls = torch.log(alpha_prod_t[finite] / (1 - alpha_prod_t[finite]))
            axes[0, 1].plot(t[finite], ls, label=name, color=line.get_color(), **styles[k % len(styles)])
            if not finite.all():
                axes[0, 1].annotate(r"$-\infty$ at t=" + f"{int(t[~finite][0])}", xy=(float(t[~finite][0]), 0.0),
                                    xycoords=("data", "axes fraction"), xytext=(-58, 22), textcoords="offset points",
                                    color=line.get_color(), fontsize=8, arrowprops=dict(arrowstyle="->",
                                                                                        color=line.get_color()))
    axes[0, 0].set(xlabel="t", ylabel=r"$\bar\alpha_t$", title=r"$\bar\alpha_t$: fraction of signal variance")
    axes[0, 0].legend(fontsize=8)
    if log_snr:
        axes[0, 1].set(xlabel="t", ylabel=r"$\log(\bar\alpha_t / (1-\bar\alpha_t))$", title="log SNR")
        axes[0, 1].legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


def plot_forward_process(x0: torch.Tensor, timesteps: Sequence[int] = (0, 50, 100, 250, 500, 750, 999),
                         schedules=None, generator: torch.Generator | None = None):
    """Figure of x_t ~ q(x_t | x_0) for one image x0 (3, H, W) in [-1, 1]: one row per schedule, same eps."""
    import matplotlib.pyplot as plt

    x0 = x0[0] if x0.ndim == 4 else x0  # (3, H, W)
    eps = torch.randn(x0.shape, generator=generator)  # (3, H, W), shared by all rows
    named = named_schedules(schedules)
    fig, axes = plt.subplots(len(named), len(timesteps), figsize=(1.5 * len(timesteps), 1.65 * len(named)),
                             squeeze=False)
    for r, (name, s) in enumerate(named.items()):
        alpha_prod_t = alphas_cumprod(s)
        for c, t in enumerate(timesteps):
            xt = q_sample(x0[None], torch.tensor([t]), eps[None], alpha_prod_t)  # (1, 3, H, W)
            ax = axes[r, c]
            ax.imshow(to_uint8(xt)[0], interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"t={t}\n" + r"$\bar\alpha$=" + f"{float(alpha_prod_t[t]):.3g}", fontsize=7)
            if c == 0:
                ax.set_ylabel(name, fontsize=7)
    fig.tight_layout()
    return fig
