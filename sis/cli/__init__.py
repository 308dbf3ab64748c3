"""The command line: ``python -m sis <models|train|eval|predict|video|bench|export|download> --help``."""
from __future__ import annotations

import sys

from sis.cli.parser import build_parser


def main(argv: list[str] | None = None) -> int:
    from sis.data.dataset import DatasetError
    from sis.data.images import ImageError
    from sis.data.shifts import ShiftError
    from sis.engines import EngineError
    from sis.files import DiskFullError
    from sis.video.clips import VideoError
    from sis.zoo.registry import ModelError
    args = build_parser().parse_args(argv)

    def user_errors() -> tuple[type[BaseException], ...]:
        """Errors a user can cause; the torch modules' own only where the command imported them
        (importing them here would load torch for `predict` on a graph engine)."""
        torch_side = (("sis.zoo.runtime", "DeviceError"), ("sis.training.config", "TrainingError"),
                      ("sis.adaptation.unlabeled", "AdaptError"))
        extra = [getattr(sys.modules[m], n) for m, n in torch_side if m in sys.modules]
        return (DatasetError, ModelError, ImageError, EngineError, VideoError, ShiftError, FileNotFoundError, *extra)
    try:
        return args.fn(args)
    except Exception as e:
        if isinstance(e, DiskFullError):  # the last checkpoint is whole: the same command resumes
            print(f"error: {e}; the same command resumes from the last checkpoint", file=sys.stderr)
            return 1
        if not isinstance(e, user_errors()):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130

