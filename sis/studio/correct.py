"""Correcting a predicted mask by hand: brush strokes, an eraser back to the prediction, a "not sure"
(void) brush and one-click reassignment of a whole region. numpy and Pillow only.

The page draws on a canvas shown at a display size; what it hands back (an RGBA layer of strokes,
click points) is rasterised here onto the label map at the image's working size with
nearest-neighbour, never blurred: a pixel takes the brush whose colour its stroke pixel is nearest
to, and only where the stroke covers at least half of it.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from sis.classes import ClassSet
from sis.vis.paint import overlay

UNDO_DEPTH = 30  # committed steps kept for undo (each a uint8 label map at the working size)

ERASER_RGB = (255, 0, 255)  # the eraser's stroke colour: back to the model's answer there
VOID_RGB = (0, 0, 0)        # the "not sure" brush: the void label, which training ignores


def brush_colors(classes: ClassSet) -> np.ndarray:
    """(C + 2, 3) colours of the brushes: each class, then void, then the eraser. Classes whose colour
    is black or the eraser's would be ambiguous; CamVid's are neither."""
    cols = np.asarray(list(classes.colors) + [VOID_RGB, ERASER_RGB], np.int32)
    if len({tuple(c) for c in cols}) != len(cols):
        raise ValueError("two brushes share a colour; give each class a colour of its own")
    return cols


def brush_hex(classes: ClassSet, brush: str) -> str:
    """'#rrggbb' of a brush: a class name, 'void' or 'eraser'."""
    cols = brush_colors(classes)
    names = list(classes.names) + ["void", "eraser"]
    if brush not in names:
        raise ValueError(f"unknown brush '{brush}'; choose {', '.join(names)}")
    return "#%02x%02x%02x" % tuple(cols[names.index(brush)])


def apply_strokes(labels: np.ndarray, prediction: np.ndarray, strokes: np.ndarray | None,
                  classes: ClassSet) -> np.ndarray:
    """``labels`` (h, w) with an RGBA stroke layer (H, W, 4) painted on: each covered pixel takes the
    class of the nearest brush colour (void for the void brush, ``prediction``'s class for the eraser).
    The layer may be any display size; it is resized to (h, w) nearest-neighbour first."""
    out = labels.copy()
    if strokes is None or not strokes[..., 3].any():
        return out
    h, w = labels.shape
    layer = np.asarray(Image.fromarray(np.ascontiguousarray(strokes, np.uint8), "RGBA").resize((w, h), Image.NEAREST))
    covered = layer[..., 3] >= 128
    if not covered.any():
        return out
    cols = brush_colors(classes)
    rgb = layer[covered][:, :3].astype(np.int32)
    nearest = ((rgb[:, None, :] - cols[None]) ** 2).sum(-1).argmin(1)  # anti-aliased edges: closest brush
    c = classes.num_classes
    void = classes.void if classes.void is not None else 255
    ids = np.where(nearest < c, nearest, np.where(nearest == c, void, -1))
    ys, xs = np.nonzero(covered)
    erase = ids == -1
    out[ys[~erase], xs[~erase]] = ids[~erase]
    out[ys[erase], xs[erase]] = prediction[ys[erase], xs[erase]]
    return out


def fill_region(labels: np.ndarray, xy: tuple[float, float], display: tuple[int, int], cls: int) -> np.ndarray:
    """The connected region of equal labels under the display point ``xy`` (x, y on a canvas of
    ``display`` = (height, width)) set to class ``cls`` in one go (4-connected)."""
    h, w = labels.shape
    x = min(w - 1, max(0, int(xy[0] * w / display[1])))
    y = min(h - 1, max(0, int(xy[1] * h / display[0])))
    im = Image.fromarray(np.ascontiguousarray(labels, np.uint8), "L").copy()  # fromarray shares a read-only buffer
    if int(labels[y, x]) != cls:
        ImageDraw.floodfill(im, (x, y), int(cls), thresh=0)
    return np.asarray(im).copy()


def display_size(h: int, w: int, max_width: int = 720) -> tuple[int, int]:
    """(height, width) to show an (h, w) image on the canvas: ``max_width`` wide, the aspect kept."""
    return max(1, round(h * max_width / w)), max_width


def changed_share(labels: np.ndarray, prediction: np.ndarray) -> float:
    """Share of pixels the corrections changed."""
    return float((labels != prediction).mean())


@dataclass
class Draft:
    """One image being corrected, at the model's working size: the model's answer and the corrections as
    steps (each brush stroke or fill one step, oldest first). Undo and redo walk these steps: the one
    undo there is (the canvas's own toolbar is hidden)."""
    image: np.ndarray                 # (h, w, 3) uint8
    prediction: np.ndarray            # (h, w) uint8 class ids
    confidence: np.ndarray            # (h, w) float32 top-class probability
    history: list = field(default_factory=list)
    undone: list = field(default_factory=list)  # steps undone, the most recent last (a new step drops them)
    saved: np.ndarray | None = None   # the labels last saved to a dataset
    saved_as: tuple[str, str] | None = None  # (dataset, frame) they were saved as

    @property
    def unsaved(self) -> bool:
        """Corrections made and not saved as they stand."""
        now = self.labels
        return not np.array_equal(now, self.prediction) and (self.saved is None or not np.array_equal(self.saved, now))

    @property
    def labels(self) -> np.ndarray:
        return self.history[-1] if self.history else self.prediction

    @property
    def untouched(self) -> bool:
        """The labels are the model's own answer: nothing corrected (or every correction undone)."""
        return np.array_equal(self.labels, self.prediction)

    def saved_in(self, dataset: str) -> str | None:
        """The frame the labels as they stand were last saved as in ``dataset``; None where they were not."""
        if self.saved is None or self.saved_as is None or self.saved_as[0] != dataset:
            return None
        return self.saved_as[1] if np.array_equal(self.saved, self.labels) else None

    @property
    def version(self) -> int:
        return len(self.history)

    def commit(self, labels: np.ndarray) -> bool:
        """Keep ``labels`` as the next step (False, and nothing kept, when nothing changed)."""
        if (labels == self.labels).all():
            return False
        self.history.append(labels)
        del self.history[:-UNDO_DEPTH]
        self.undone.clear()
        return True

    def undo(self) -> bool:
        if not self.history:
            return False
        self.undone.append(self.history.pop())
        return True

    def redo(self) -> bool:
        if not self.undone:
            return False
        self.history.append(self.undone.pop())
        return True

    def start_over(self) -> bool:
        """Back to the model's answer, as one step (so that Undo brings the corrections back)."""
        return self.commit(self.prediction.copy())


def start(engine, image: Image.Image | np.ndarray) -> Draft:
    """The model's answer on an image ((H, W, 3) uint8 or Pillow), at its working size, ready to correct."""
    from sis.studio.uncertainty import probabilities
    rgb = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else np.asarray(image, np.uint8)
    prob, work = probabilities(engine, rgb)
    return Draft(work, prob.argmax(0).astype(np.uint8), prob.max(0).astype(np.float32))


def canvas_background(draft: Draft, labels: np.ndarray, classes: ClassSet, alpha: float,
                      display: tuple[int, int]) -> bytes:
    """PNG of the image with ``labels`` painted at opacity ``alpha``, at the canvas's (height, width)."""
    shown = overlay(draft.image, labels, classes.palette(), alpha)
    buf = io.BytesIO()
    Image.fromarray(shown).resize((display[1], display[0]), Image.NEAREST).save(buf, "PNG")
    return buf.getvalue()


def clicks(drawing: dict | None) -> list[tuple[float, float]]:
    """Canvas points (x, y) of the point objects in a canvas drawing (Fabric.js JSON), in drawing order."""
    out = []
    for o in (drawing or {}).get("objects", []):
        if o.get("type", "").lower() != "circle":
            continue
        r = float(o.get("radius", 0)) * float(o.get("scaleX", 1))
        x = float(o.get("left", 0)) + (r if o.get("originX", "left") == "left" else 0.0)
        y = float(o.get("top", 0)) + (r if o.get("originY", "top") == "top" else 0.0)
        out.append((x, y))
    return out


@dataclass(frozen=True)
class Applied:
    """What the canvas's marks did to a draft."""
    restart: bool             # the canvas held marks: it starts afresh over the new labels
    note: str | None = None   # why a fill changed nothing, in one sentence for the page


def apply_canvas(draft: Draft, tool: str, brush: str, strokes: np.ndarray | None, drawing: dict | None,
                 display: tuple[int, int], classes: ClassSet) -> Applied:
    """Commit what the canvas hands back to ``draft`` as one step. ``tool``: 'Brush' (the stroke layer
    painted on) or 'Fill a region' (each click fills its region with ``brush``'s class)."""
    if tool == "Brush":
        marked = strokes is not None and bool(strokes[..., 3].any())
        if marked:
            draft.commit(apply_strokes(draft.labels, draft.prediction, strokes, classes))
        return Applied(marked)
    points = clicks(drawing)
    if brush == "eraser" or not points:  # the eraser has no class to fill with (the page says so)
        return Applied(bool(points))
    cls = classes.names.index(brush) if brush in classes.names else classes.void
    labels = draft.labels
    for xy in points:
        labels = fill_region(labels, xy, display, cls)
    if draft.commit(labels):
        return Applied(True)
    name = "void (not sure)" if brush not in classes.names else brush
    return Applied(True, f"The region you clicked is {name} already: pick another class under Class to fill it with.")
