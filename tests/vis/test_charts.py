"""The training curves (sis/vis/charts.py): a model trained in stages is drawn stage by stage."""
import json
from pathlib import Path

from sis.vis import charts
from sis.vis.report import dashboard_row

HISTORY = [{"epoch": 1, "loss": 2.0, "pixel_acc": 0.5, "stage": 1},
           {"epoch": 2, "loss": 1.0, "pixel_acc": 0.7, "val_miou": 0.4, "stage": 1},
           {"epoch": 3, "loss": 3.0, "pixel_acc": 0.6, "stage": 2},
           {"epoch": 4, "loss": 2.5, "pixel_acc": 0.65, "val_miou": 0.45, "stage": 2}]


def test_a_later_stage_is_not_joined_to_the_first():
    assert charts.stage_curve(HISTORY, "loss") == ([1, 2, None, 3, 4], [2.0, 1.0, None, 3.0, 2.5])
    assert charts.stage_curve(HISTORY, "val_miou", 100) == ([2, None, 4], [40.0, None, 45.0])
    assert charts.stage_starts(HISTORY) == [(3, 2)]


def test_one_stage_is_one_unbroken_line_and_validation_skips_the_epochs_it_did_not_run():
    plain = [{k: v for k, v in e.items() if k != "stage"} for e in HISTORY]
    assert charts.stage_curve(plain, "loss") == ([1, 2, 3, 4], [2.0, 1.0, 3.0, 2.5])
    assert charts.stage_curve(plain, "val_miou") == ([2, 4], [0.4, 0.45])
    assert charts.stage_starts(plain) == [] and charts.stage_curve(plain, "val_pixel_acc") == ([], [])


def test_the_default_models_curves_mark_its_fine_tune():
    """The shipped default was trained, then fine-tuned under another recipe: its chart says where."""
    folder = Path(__file__).parents[2] / "weights" / "unet-vgg11_bn"
    card = json.loads((folder / "card.json").read_text())
    starts = charts.stage_starts(card["history"])
    assert len(starts) == len(card["stages"]) - 2  # the last stage, a weight average, trained no epochs
    fig = charts.training_curves([dashboard_row("unet-vgg11_bn", folder)])
    assert [a.text for a in fig.layout.annotations if a.text.startswith("stage")] == [f"stage {s}" for _, s in starts]
    loss = next(t for t in fig.data if t.xaxis == "x")
    assert None in loss.x and loss.x.index(None) == starts[0][0] - 1
