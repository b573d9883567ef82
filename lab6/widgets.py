"""ipywidgets for the notebooks: a slider over the forward process and a label picker that samples."""
from __future__ import annotations

import torch

from .data import to_uint8
from .labels import COLOURS, SHAPES
from .plots import make_grid
from .schedules import alphas_cumprod, q_sample


def forward_slider(x0: torch.Tensor, schedule=None, seed: int = 0):
    """A slider over t showing x_t ~ q(x_t | x_0) for one image x0 (3, H, W) in [-1, 1] with fixed eps."""
    import ipywidgets as W
    from IPython.display import display
    from PIL import Image

    alpha_prod_t = alphas_cumprod(schedule)  # (T,)
    x0 = x0[None] if x0.ndim == 3 else x0[:1]  # (1, 3, H, W)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))  # (1, 3, H, W)
    image = W.Image(format="png", width=192, height=192)
    caption = W.Label()

    def show(change=None):
        t = slider.value
        xt = q_sample(x0, torch.tensor([t]), eps, alpha_prod_t)  # (1, 3, H, W)
        image.value = _png(Image.fromarray(to_uint8(xt)[0]))
        caption.value = f"t = {t}   alpha_bar_t = {float(alpha_prod_t[t]):.4f}   signal std = {float(alpha_prod_t[t]) ** 0.5:.3f}"

    slider = W.IntSlider(value=250, min=0, max=len(alpha_prod_t) - 1, step=1, description="t", continuous_update=True)
    slider.observe(show, names="value")
    show()
    box = W.VBox([slider, image, caption])
    display(box)
    return box


def label_picker(pipe, num_images: int = 4, steps: int = 25, guidance_scale: float = 2.0, seed: int = 0):
    """Pick 1-3 objects, press Generate, and see `num_images` samples from `pipe` for that label set."""
    import ipywidgets as W
    from IPython.display import display

    rows = []
    for i in range(3):
        colour = W.Dropdown(options=["-"] + list(COLOURS), value=["red", "cyan", "cyan"][i], layout=W.Layout(width="110px"))
        shape = W.Dropdown(options=list(SHAPES), value=["sphere", "cylinder", "cube"][i], layout=W.Layout(width="110px"))
        rows.append((colour, shape))
    button = W.Button(description="Generate", button_style="primary")
    image = W.Image(format="png")
    status = W.Label()

    def generate(_=None):
        labels = [f"{c.value} {s.value}" for c, s in rows if c.value != "-"]
        status.value = f"sampling {labels} ..."
        try:
            g = torch.Generator().manual_seed(seed)
            out = pipe(labels=[labels] * num_images, num_inference_steps=steps, guidance_scale=guidance_scale,
                       generator=g, output_type="pt").images  # (N, 3, 64, 64) in [-1, 1]
            image.value = _png(make_grid(out, nrow=num_images).resize((72 * num_images, 72)))
            status.value = ", ".join(labels)
        except Exception as e:  # shown in the widget rather than lost in the kernel log
            status.value = f"error: {e}"

    button.on_click(generate)
    box = W.VBox([W.HBox([W.HBox([c, s]) for c, s in rows]), button, image, status])
    display(box)
    return box


def _png(image) -> bytes:
    """PNG bytes of a PIL image."""
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
