"""Over time: flicker between frames, and class probabilities carried along the optical flow."""
from __future__ import annotations

import numpy as np


class Flicker:
    """Running counts of label changes between consecutive frames (at the work size)."""

    def __init__(self, num_classes: int):
        self.c = num_classes
        self.changed = self.total = 0
        self.per_class = np.zeros((2, num_classes), np.int64)  # changed, total per class of the earlier frame
        self.stable_changed = self.stable_total = 0
        self.truth_changed = self.truth_total = 0
        self.prev = self.prev_truth = None

    def add(self, labels: np.ndarray, truth: np.ndarray | None = None, void: int | None = None) -> None:
        if self.prev is not None:
            diff = labels != self.prev
            self.changed += int(diff.sum())
            self.total += diff.size
            self.per_class[0] += np.bincount(self.prev[diff], minlength=self.c)[:self.c]
            self.per_class[1] += np.bincount(self.prev.ravel(), minlength=self.c)[:self.c]
            if truth is not None and self.prev_truth is not None:
                same = truth == self.prev_truth
                if void is not None:
                    same &= truth != void
                self.stable_changed += int((diff & same).sum())
                self.stable_total += int(same.sum())
                both = (truth != void) & (self.prev_truth != void) if void is not None else np.ones_like(same)
                self.truth_changed += int((~same & both).sum())
                self.truth_total += int(both.sum())
        self.prev, self.prev_truth = labels, truth

    @property
    def share(self) -> float:
        return self.changed / self.total if self.total else 0.0

    @property
    def stable_share(self) -> float | None:
        return self.stable_changed / self.stable_total if self.stable_total else None


FB_SLACK_PX2 = 0.5  # forward-backward check: squared disagreement allowed on top of 1% of the motion's (px^2)


class Motion:
    """Carries a (C, h, w) map along the picture's motion from one frame to the next: OpenCV's DIS
    optical flow (its fastest preset) from the new frame back to the previous one, then a bilinear
    remap of every channel, so that an average over frames follows a passing car instead of trailing it.
    Each pixel is trusted only where the flow forward from the previous frame brings it back where it
    was (Sundaram, Brox and Keutzer, ECCV 2010): where the motion is too fast, occluded or cut, the
    flow cannot be followed and the past is not carried there."""

    def __init__(self):
        from sis.host import opencv
        cv2 = opencv()  # only smoothing needs it
        self.cv2, self.dis = cv2, cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
        self.grey = self.grid = None

    def follow(self, state: np.ndarray | None, chw: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """``state`` (C, h, w), aligned with the previous frame, moved onto the new frame ``chw``
        ((3, h, w) uint8, the work size), and the (h, w) bool mask of the pixels whose motion was followed
        (None: nothing to follow, the first frame or a new size); the new frame is remembered for the next call."""
        cv2 = self.cv2
        grey = cv2.cvtColor(np.ascontiguousarray(chw.transpose(1, 2, 0)), cv2.COLOR_RGB2GRAY)
        prev, self.grey = self.grey, grey
        if state is None or prev is None or prev.shape != grey.shape:
            return state, None
        back = self.dis.calc(grey, prev, None)  # for each new pixel: where it was in the previous frame
        ahead = self.dis.calc(prev, grey, None)  # for each previous pixel: where it went
        h, w = grey.shape
        if self.grid is None or self.grid[0].shape != (h, w):
            self.grid = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        mx, my = self.grid[0] + back[..., 0], self.grid[1] + back[..., 1]
        there = np.stack([cv2.remap(ahead[..., k], mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                          for k in range(2)], -1)  # the forward flow where each new pixel came from
        err = ((back + there) ** 2).sum(-1)
        trust = (err < 0.01 * ((back ** 2).sum(-1) + (there ** 2).sum(-1)) + FB_SLACK_PX2) & \
            (mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1)
        moved = np.stack([cv2.remap(c, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE) for c in state])
        return moved, trust
