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
