"""Class sets: names, display colours and the void id.

CamVid (SegNet's 11-class version) is the built-in set; a user's own dataset
brings its own list in a ``classes.json`` beside its folders::

    {"names": ["sky", "road", ...], "colors": [[128,128,128], ...], "void": 255}

``void`` is the label id ignored by the loss and every metric (``null`` = none).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


# How label maps are drawn: "contrast" (the default) or the class set's own colours. CamVid's own paint
# Road and Car in two purples, so a road labelled Car goes unnoticed (docs/decisions.md).
PALETTES = {"contrast": "High contrast", "dataset": "The dataset's own"}
DEFAULT_PALETTE = "contrast"
# street classes by name (CamVid's and Cityscapes' words): hues far apart, each class's usual one
# (sky blue, vegetation green, road purple); the closest two are 41 CIELAB units apart, CamVid's own 23.5
CONTRAST = {
    "sky": (135, 206, 250), "building": (90, 90, 90), "pole": (255, 215, 0), "road": (128, 64, 128),
    "pavement": (255, 105, 180), "sidewalk": (255, 105, 180), "tree": (34, 139, 34), "vegetation": (34, 139, 34),
    "signsymbol": (255, 140, 0), "traffic sign": (255, 140, 0), "fence": (160, 82, 45), "car": (0, 0, 255),
    "pedestrian": (220, 20, 60), "person": (220, 20, 60), "bicyclist": (0, 255, 255), "rider": (0, 255, 255),
}


@dataclass(frozen=True)
class ClassSet:
    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    void: int | None = None  # label id ignored in loss and metrics

    def __post_init__(self):
        if len(self.names) != len(self.colors):
            raise ValueError(f"{len(self.names)} class names but {len(self.colors)} colours")
        if not self.names:
            raise ValueError("a class set needs at least one class")
        for c in self.colors:
            if len(c) != 3 or not all(0 <= int(v) <= 255 for v in c):
                raise ValueError(f"colour {list(c)} is not an RGB triple in 0..255")
        if self.void is not None and 0 <= self.void < len(self.names):
            raise ValueError(f"void id {self.void} collides with class '{self.names[self.void]}'")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def palette(self) -> np.ndarray:
        """(256, 3) uint8 lookup: class id -> colour; void and unused ids are black."""
        lut = np.zeros((256, 3), np.uint8)
        lut[: self.num_classes] = np.asarray(self.colors, np.uint8)
        return lut

    def in_palette(self, palette: str = DEFAULT_PALETTE) -> "ClassSet":
        """This class set drawn in ``palette`` (PALETTES): "dataset" keeps its own colours; "contrast" gives
        the street classes it names (CONTRAST) colours far apart, the others keep theirs."""
        if palette not in PALETTES:
            raise ValueError(f"unknown palette '{palette}'; choose {' or '.join(PALETTES)}")
        if palette == "dataset":
            return self
        return ClassSet(self.names, tuple(CONTRAST.get(n.lower(), c) for n, c in zip(self.names, self.colors)),
                        self.void)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["names"], d["colors"] = list(self.names), [list(c) for c in self.colors]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ClassSet":
        try:
            return cls(tuple(d["names"]), tuple(tuple(int(v) for v in c) for c in d["colors"]), d.get("void"))
        except (KeyError, TypeError) as e:
            raise ValueError(f"class list must have 'names' and 'colors' lists ({e})") from None

    @classmethod
    def from_json(cls, path: Path) -> "ClassSet":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None


CAMVID = ClassSet(
    names=("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol",
           "Fence", "Car", "Pedestrian", "Bicyclist"),
    colors=((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
            (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0),
            (0, 128, 192)),
    void=11,
)

