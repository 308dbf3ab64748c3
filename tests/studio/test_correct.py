"""Mask corrections (sis/correct.py): strokes rasterised at the working size, eraser, void, region fill."""
import numpy as np
import pytest

from sis.classes import CAMVID
from sis.studio.correct import ERASER_RGB, apply_strokes, brush_hex, changed_share, fill_region


def _layer(h, w):
    return np.zeros((h, w, 4), np.uint8)


def test_strokes_paint_classes_void_and_erase_back_to_the_prediction():
    pred = np.full((4, 6), 2, np.uint8)          # the model said Road (2) everywhere
    labels = pred.copy()
    labels[:, 5] = 8                              # an earlier correction: Car in the last column
    layer = _layer(8, 12)                         # shown at twice the working size
    layer[0:2, 0:4] = (*CAMVID.colors[4], 255)    # Pavement over the top-left 1x2 working pixels
    layer[4:6, 0:2] = (0, 0, 0, 255)              # not sure
    layer[0:8, 10:12] = (*ERASER_RGB, 255)        # erase the Car column
    layer[6:8, 4:6] = (*CAMVID.colors[4], 100)    # too faint to count
    out = apply_strokes(labels, pred, layer, CAMVID)
    assert out[0, :2].tolist() == [4, 4] and out[2, 0] == CAMVID.void
    assert (out[:, 5] == 2).all() and out[3, 2] == 2 and out[1, 3] == 2
    assert changed_share(out, pred) == pytest.approx(3 / 24)


def test_anti_aliased_edges_take_the_nearest_brush():
    pred = np.zeros((1, 2), np.uint8)
    layer = _layer(1, 2)
    sky, car = np.asarray(CAMVID.colors[0]), np.asarray(CAMVID.colors[8])
    layer[0, 0] = (*(0.9 * car + 0.1 * sky).astype(np.uint8), 200)
    layer[0, 1] = (*(0.2 * car + 0.8 * sky).astype(np.uint8), 255)
    assert apply_strokes(pred, pred, layer, CAMVID).tolist() == [[8, 0]]


def test_nothing_drawn_changes_nothing():
    pred = np.arange(12, dtype=np.uint8).reshape(3, 4) % 11
    assert (apply_strokes(pred, pred, None, CAMVID) == pred).all()
    assert (apply_strokes(pred, pred, _layer(6, 8), CAMVID) == pred).all()


def test_a_click_reassigns_one_connected_region():
    labels = np.zeros((6, 6), np.uint8)
    labels[1:3, 1:3] = 8          # one car
    labels[4:6, 4:6] = 8          # another, not touching it
    out = fill_region(labels, (2 * 20, 2 * 20), (120, 120), 4)   # a click at display (40, 40) -> working (2, 2)
    assert (out[1:3, 1:3] == 4).all() and (out[4:6, 4:6] == 8).all() and (out == 0).sum() == 28
    assert (fill_region(labels, (0, 0), (6, 6), 0) == labels).all()  # already that class


def test_brush_colours_are_the_palette_and_unknown_brushes_say_so():
    assert brush_hex(CAMVID, "Car") == "#%02x%02x%02x" % tuple(CAMVID.colors[8])
    assert brush_hex(CAMVID, "eraser") == "#ff00ff" and brush_hex(CAMVID, "void") == "#000000"
    with pytest.raises(ValueError, match="unknown brush 'Tram'"):
        brush_hex(CAMVID, "Tram")


def test_the_canvas_state_machine():
    """Each stroke and each fill is one step at once; Undo and Redo walk the steps; a new step drops what
    was undone; Start over is a step back to the model's answer that Undo reverses."""
    from sis.studio.correct import Applied, Draft, apply_canvas
    pred = np.zeros((4, 6), np.uint8)
    pred[:, 3:] = 2
    d = Draft(np.zeros((4, 6, 3), np.uint8), pred, np.ones((4, 6), np.float32))
    assert not apply_canvas(d, "Brush", "Car", _layer(4, 6), None, (4, 6), CAMVID).restart and d.version == 0  # blank
    layer = _layer(4, 6)
    layer[0, 0] = (*CAMVID.colors[8], 255)
    assert apply_canvas(d, "Brush", "Car", layer, None, (4, 6), CAMVID).restart
    assert d.version == 1 and d.labels[0, 0] == 8 and d.unsaved
    click = {"objects": [{"type": "circle", "left": 4.0, "top": 1.0, "radius": 0.5, "originX": "left", "originY": "top"}]}
    assert apply_canvas(d, "Fill a region", "Sky", None, click, (4, 6), CAMVID) == Applied(True)
    assert d.version == 2 and (d.labels[:, 3:] == 0).all() and d.labels[0, 0] == 8
    again = apply_canvas(d, "Fill a region", "Sky", None, click, (4, 6), CAMVID)  # Sky already: no step, a word
    assert again.restart and again.note.startswith("The region you clicked is Sky already") and d.version == 2
    assert apply_canvas(d, "Fill a region", "eraser", None, click, (4, 6), CAMVID).restart and d.version == 2  # no class
    assert d.undo() and (d.labels[:, 3:] == 2).all() and d.labels[0, 0] == 8
    assert d.redo() and (d.labels[:, 3:] == 0).all() and not d.redo()
    assert d.undo() and d.undo() and not d.undo() and (d.labels == pred).all()
    assert d.redo() and d.labels[0, 0] == 8
    layer[0, 0] = (*CAMVID.colors[1], 255)  # a new stroke: the fill undone cannot come back
    assert apply_canvas(d, "Brush", "Building", layer, None, (4, 6), CAMVID).restart and not d.undone and not d.redo()
    assert d.start_over() and (d.labels == pred).all() and not d.unsaved and not d.start_over()
    assert d.undo() and d.labels[0, 0] == 1 and d.unsaved
