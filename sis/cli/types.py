"""Argument types of the command line: sizes, ranges, lists; a bad value is one sentence."""
from __future__ import annotations

import argparse


def hw_size(text: str) -> tuple[int, int] | str:
    if text.lower() in ("none", "full"):
        return "full"  # whole frames, also where a fine-tuned model's recipe had a crop
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        if h <= 0 or w <= 0:
            raise ValueError
        return h, w
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 360x480 (HxW), got '{text}'") from None


def scale_range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
        if not 0 < lo <= hi:
            raise ValueError
        return lo, hi
    except ValueError:
        raise argparse.ArgumentTypeError(f"scale must look like 0.75,1.5, got '{text}'") from None


def positive_int(text: str) -> int:
    try:
        v = int(text)
        if v <= 0:
            raise ValueError
        return v
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None


def non_negative_float(text: str) -> float:
    try:
        v = float(text)
        if not v >= 0 or v == float("inf"):  # also refuses nan
            raise ValueError
        return v
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of 0 or more, got '{text}'") from None


def split_list(text: str) -> tuple[str, ...]:
    from sis.data.dataset import SPLITS
    splits = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [v for v in splits if v not in SPLITS]
    if not splits or bad or len(set(splits)) < len(splits):
        raise argparse.ArgumentTypeError(f"splits are some of {', '.join(SPLITS)} joined by commas, "
                                         f"each once, e.g. train,val; got '{text}'")
    return splits


def scale_list(text: str) -> tuple[float, ...]:
    try:
        scales = tuple(float(v) for v in text.split(","))
        if not scales or min(scales) <= 0:
            raise ValueError
        return scales
    except ValueError:
        raise argparse.ArgumentTypeError(f"scales must look like 0.75,1,1.25,1.5, got '{text}'") from None


def weight_list(text: str) -> list[float]:
    try:
        w = [float(v) for v in text.split(",")]
        if min(w) < 0 or sum(w) <= 0:
            raise ValueError
        return w
    except ValueError:
        raise argparse.ArgumentTypeError(f"weights must look like 2,1,1 (non-negative), got '{text}'") from None


def severity_list(text: str) -> tuple[int, ...]:
    from sis.data.shifts import SEVERITIES
    try:
        out = tuple(int(v) for v in text.split(","))
        if not out or any(v not in SEVERITIES for v in out):
            raise ValueError
        return out
    except ValueError:
        raise argparse.ArgumentTypeError(f"severities must be some of {','.join(map(str, SEVERITIES))}, "
                                         f"got '{text}'") from None
