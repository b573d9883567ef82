"""The course's own scoring script (torchvision resnet18, PIL transforms, top-k loop) against `lab6 evaluate`."""
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from lab6 import cli
from lab6 import labels as L
from lab6.data import load_image_folder
from lab6.evaluator import SHIPPED_EVALUATOR, Evaluator
from lab6.synth import render_labels
from tests.test_evaluator import CourseEvaluator  # the course's compute_acc, verbatim


def write_folder(root, n=24, seed=0):
    """Render n scenes as root/0.png.. with the label sets asked of them; some made hard. Returns the sets asked."""
    rng = np.random.default_rng(seed)
    drawn = [[L.OBJECTS[j] for j in rng.choice(24, size=1 + i % 3, replace=False)] for i in range(n)]
    images = render_labels(drawn, seed=seed)  # (n, 64, 64, 3) uint8
    asked = [list(s) for s in drawn]
    for i in range(n):
        if i % 4 == 0:  # ask for another colour of the first object's shape than the one drawn
            shape = asked[i][0].split()[1]
            asked[i][0] = next(o for o in L.OBJECTS if o.endswith(" " + shape) and o not in drawn[i])
        elif i % 4 == 1:  # heavy noise
            images[i] = np.clip(images[i] + rng.normal(0, 60, images[i].shape), 0, 255).astype(np.uint8)
        elif i % 4 == 2:  # blurred through 16x16
            images[i] = np.asarray(Image.fromarray(images[i]).resize((16, 16), Image.BILINEAR).resize((64, 64)))
        Image.fromarray(images[i]).save(root / f"{i}.png")
    (root / "labels.json").write_text(json.dumps(asked))
    (root / "objects.json").write_text(json.dumps(L.OBJECT_TO_INDEX))
    return asked


@pytest.mark.filterwarnings("ignore:The parameter 'pretrained' is deprecated", "ignore:Arguments other than a weight")
def test_the_course_scoring_script_reads_the_shipped_evaluator_as_lab6_does(tmp_path, monkeypatch, capsys):
    """The course's script, run on a folder of PNGs, counts the same hits, image by image, as `lab6 evaluate`."""
    pytest.importorskip("torchvision", reason="torchvision is not installed: the course's own scoring script "
                                              "cannot run here (pip install torchvision to run this check)")
    from torchvision import models, transforms

    asked = write_folder(tmp_path)
    n = len(asked)

    # The course's evaluation_model and its data loading, on the CPU.
    monkeypatch.chdir(SHIPPED_EVALUATOR.parent)
    checkpoint = torch.load("./checkpoint.pth")
    resnet18 = models.resnet18(pretrained=False)
    resnet18.fc = nn.Sequential(nn.Linear(512, 24), nn.Sigmoid())
    resnet18.load_state_dict(checkpoint["model"])
    resnet18.eval()
    transform = transforms.Compose([transforms.Resize([64, 64]), transforms.ToTensor(),
                                    transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    images = torch.stack([transform(Image.open(tmp_path / f"{i}.png").convert("RGB")) for i in range(n)])
    objects = json.loads((tmp_path / "objects.json").read_text())
    labels = torch.zeros(n, 24)
    for i, names in enumerate(json.loads((tmp_path / "labels.json").read_text())):
        for name in names:
            labels[i, objects[name]] = 1
    with torch.no_grad():
        out = resnet18(images)
    course_acc = CourseEvaluator(None).compute_acc(out.cpu(), labels.cpu())
    course_per_image = [round(CourseEvaluator(None).compute_acc(out[i:i + 1], labels[i:i + 1]) * len(asked[i])) for i in range(n)]

    assert cli.main(["evaluate", "--images", str(tmp_path), "--labels", str(tmp_path / "labels.json"),
                     "--evaluator", str(SHIPPED_EVALUATOR), "--device", "cpu"]) == 0
    hits, total = map(int, re.search(r"accuracy: [\d.]+ \((\d+)/(\d+)\)", capsys.readouterr().out).groups())
    ours = Evaluator(SHIPPED_EVALUATOR, device="cpu").breakdown(load_image_folder(tmp_path, n), asked)

    assert total == sum(map(len, asked)) and 0 < hits < total  # the hard images cost hits: not a trivial all-hit set
    assert course_acc == hits / total
    assert [r.hits for r in ours] == course_per_image
