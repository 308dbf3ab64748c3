"""``python -m sis predict`` and ``video``: masks of images and clips."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from sis.cli.evaluate import accurate_engine, accurate_single
from sis.cli.models import default_model
from sis.cli.progress import StderrProgress


def cmd_predict(a) -> int:
    from PIL import Image

    from sis import engines, zoo
    from sis.data.images import ImageError, iter_images, load_image
    from sis.engines.predict import predict
    from sis.host import nvidia_gpu_visible
    from sis.vis.paint import colorize
    device = a.device
    if device == "auto":  # CUDA only where a CUDA build of torch sees a GPU; asking needs torch
        device = "cpu"
        if importlib.util.find_spec("torch") is not None and nvidia_gpu_visible():
            from sis.zoo.runtime import pick_device
            device = pick_device("auto").type
    elif device != "cpu":
        from sis.zoo.runtime import pick_device
        device = str(pick_device(device))
    a.model = a.model or default_model()  # the app's default model, by the same rule
    engine = accurate_engine(a, device)
    if engine is None:
        folder = zoo.resolve(a.model)
        choice = engines.choose_engine(folder, device)
        engine = engines.load_engine(folder, choice.name, device, log=lambda s: print(s, file=sys.stderr))
        print(f"{engine.cfg.name} on {choice.reason()}", file=sys.stderr if a.json else sys.stdout)
    else:
        print(f"{a.model} on {engine.name}", file=sys.stderr if a.json else sys.stdout)
    cfg = engine.cfg
    # the pages' rule for an unfamiliar photo: the (first) model's card line on the mean calibrated confidence
    card = zoo.read_card(zoo.resolve(a.model.split(",")[0].strip()))
    palette = cfg.class_set.in_palette(a.palette).palette()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = iter_images(a.images)
    if not paths:
        raise ImageError("no images given (folders held no image files)")
    failed = 0
    for path in paths:
        try:
            img = load_image(path)
        except ImageError as e:  # one bad file does not stop the batch
            print(f"skipped: {e}", file=sys.stderr)
            if a.json:
                print(json.dumps({"image": str(path), "error": str(e)}))
            failed += 1
            continue
        pred = predict(engine, img.image)
        Image.fromarray(colorize(pred.labels, palette)).save(out / f"{path.stem}_color.png")
        Image.fromarray(pred.labels, "L").save(out / f"{path.stem}_labels.png")
        conf = float(pred.confidence.mean())
        if a.json:
            print(json.dumps({"image": str(path), "mask": str(out / f"{path.stem}_color.png"),
                              "labels": str(out / f"{path.stem}_labels.png"), "ms": round(pred.ms, 1),
                              "work_size": list(pred.work_size), "mean_confidence": round(conf, 4),
                              "unfamiliar": card.unsure(conf), "notes": img.notes}))
            continue
        notes = img.notes + (["looks unfamiliar to the model"] if card.unsure(conf) else [])
        print(f"{path} -> {out / (path.stem + '_color.png')} ({pred.ms:.0f} ms, mean confidence {100 * conf:.1f}%"
              + (f"; {'; '.join(notes)}" if notes else "") + ")")
    if failed == len(paths):
        return 2
    return 0


def cmd_video(a) -> int:
    """Segment a clip (or a folder of frames): an overlay mp4, label PNGs, flicker, mIoU with --truth."""
    from sis.video.segment import segment_video
    a.model = a.model or default_model()
    engine = accurate_engine(a, "cpu") or accurate_single(a)
    progress = StderrProgress(lambda i, n: f"{i}/{n or '?'} frames")
    res = segment_video(engine, Path(a.input), Path(a.out) if a.out else None, a.stride, a.max_seconds, a.smooth,
                        Path(a.labels) if a.labels else None, Path(a.truth) if a.truth else None, fps=a.fps,
                        flow=not a.no_flow, progress=progress, palette=a.palette)
    progress.close()
    out = {k: v for k, v in res.__dict__.items() if k not in ("share", "indices")}
    out.update(model=a.model, engine=engine.name, smooth=a.smooth, stride=a.stride)
    if a.json:
        print(json.dumps(out))
        return 0
    print(f"{res.frames} frames of {a.input} on {engine.name}: {res.frames_per_s:.1f} frames/s end to end, "
          f"flicker {100 * res.flicker:.2f}%" + (f" ({100 * res.flicker_raw:.2f}% unsmoothed)" if a.smooth else "")
          + (f", val mIoU {100 * res.miou:.2f}" if res.miou is not None else "") + (f" -> {a.out}" if a.out else ""))
    if res.cut:
        print(f"note: {res.cut}", file=sys.stderr)
    return 0
