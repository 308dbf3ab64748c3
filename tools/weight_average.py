"""A weight-space average of two trainings of one model (WiSE-FT: Wortsman et al., "Robust fine-tuning of
zero-shot models", CVPR 2022), written as a run folder that tools/ship.py ships.

    git show a65febf:weights/unet-vgg11_bn/model.safetensors > start/model.safetensors   # (+ config, card)
    python tools/weight_average.py weights/unet-vgg11_bn start --share 0.5 --out runs/wise/unet-vgg11_bn \
        --fine-ref af80d9e:weights/unet-vgg11_bn --start-ref a65febf:weights/unet-vgg11_bn
    python tools/ship.py runs/wise/unet-vgg11_bn --keep-timings

FINE is a fine-tune of START (both folders of the same architecture); the average keeps ``--share`` of
START's weights and the rest of FINE's, BatchNorm statistics included (the average model's own are not
re-estimated: docs/real_streets.md measures it as it ships). The card is FINE's with one more stage that
says so; the figures measured on FINE's weights (val, calibration, engines, benchmarks) are dropped, for
ship.py and the measuring commands to fill again.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MEASURED = ("val", "calibration", "shift_benchmark", "accurate", "fast_path", "latency", "real_frames",
            "input_range", "train_val", "replaced", "val_eval")


def average(fine: Path, start: Path, share: float, out: Path, fine_ref: str, start_ref: str) -> dict:
    from safetensors.torch import load_file, save_file
    if not 0 < share < 1:
        raise SystemExit(f"--share is START's part of the average, within 0 and 1 (exclusive), not {share}")
    a, b = load_file(fine / "model.safetensors"), load_file(start / "model.safetensors")
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        raise SystemExit(f"{fine} and {start} are not the same architecture: their tensors differ")
    avg = {k: (a[k].float() * (1 - share) + b[k].float() * share).to(a[k].dtype) if a[k].is_floating_point()
           else a[k] for k in a}
    out.mkdir(parents=True, exist_ok=False)
    save_file(avg, out / "model.safetensors", metadata={"format": "pt"})
    shutil.copyfile(fine / "config.json", out / "config.json")
    card = {k: v for k, v in json.loads((fine / "card.json").read_text()).items() if k not in MEASURED}
    command = f"python tools/weight_average.py {fine_ref} {start_ref} --share {share:g} --out {out}"
    card["stages"] = list(card.get("stages") or []) + [{
        "init": "weight average", "command": command, "recipe": None, "epochs": 0, "steps": 0, "wall_time_s": 0,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "note": f"{share:g} of {start_ref}'s weights and {1 - share:g} of {fine_ref}'s (WiSE-FT)"}]
    card.update(command=None, weight_average={"fine": fine_ref, "start": start_ref, "share": share},
                date=card["stages"][-1]["date"])
    (out / "card.json").write_text(json.dumps(card, indent=2))
    return card


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("fine", type=Path, help="the fine-tuned model folder")
    ap.add_argument("start", type=Path, help="the model folder it was fine-tuned from")
    ap.add_argument("--share", type=float, default=0.5, help="START's part of the average (default 0.5)")
    ap.add_argument("--out", type=Path, required=True, help="the run folder to write (must not exist)")
    ap.add_argument("--fine-ref", help="how the card names FINE (e.g. COMMIT:weights/NAME); default its path")
    ap.add_argument("--start-ref", help="how the card names START; default its path")
    a = ap.parse_args()
    average(a.fine, a.start, a.share, a.out, a.fine_ref or str(a.fine), a.start_ref or str(a.start))
    print(f"{a.out}: {a.share:g} of {a.start_ref or a.start} and {1 - a.share:g} of {a.fine}")
