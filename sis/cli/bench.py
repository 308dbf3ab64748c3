"""``python -m sis bench``: inference and training steps timed, engines compared."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from sis.cli.evaluate import accurate_engine, accurate_single


def cmd_bench(a) -> int:
    from sis import zoo
    if a.compare_engines:
        return _bench_engines(a)
    if a.compare_train:
        return _bench_train(a)
    from sis.bench import bench, bench_engine
    a.size, a.batch = a.size or (360, 480), a.batch or 1
    if a.tta != "none" or "," in a.model or a.engine or a.weights:  # an engine, as predict runs it
        if a.mode != "infer":
            raise ValueError("--tta, --engine and ensembles time inference only (--mode infer)")
        engine = accurate_engine(a, "cpu", default_engine=None) or accurate_single(a)
        res = bench_engine(engine, a.size, a.warmup, a.repeats or 5)
        if _emit(a, res):
            print(f"{a.model} on {res['engine']} at {a.size[0]}x{a.size[1]}: median {res['median_ms']:.1f} ms, "
                  f"p90 {res['p90_ms']:.1f} ms [{res['host']['cpu']}, {res['threads']} threads]")
        return 0
    zoo.get_spec(a.model)
    res = bench(a.model, a.mode, a.device, a.batch, a.size, a.warmup, a.repeats or 5, amp=a.amp)
    if _emit(a, res):
        print(f"{res['model']} {res['mode']} on {res['device']} batch {res['batch']} {a.size[0]}x{a.size[1]}"
              f"{' amp' if a.amp else ''}: median {res['median_ms']:.1f} ms, p90 {res['p90_ms']:.1f} ms, "
              f"{res['images_per_s']:.2f} img/s, peak RSS {res['peak_rss_mb']:.0f} MB"
              + (f", CUDA max {res['cuda_max_allocated_mb']:.0f} MB" if res['cuda_max_allocated_mb'] else "")
              + f" [{res['host']['cpu']}, {res['host']['torch_threads']} threads]")
    return 0


def _emit(a, res: dict) -> bool:
    """Write/print the JSON as asked; True when the human summary should be printed."""
    text = json.dumps(res, indent=1)
    if a.out:
        Path(a.out).write_text(text)
        print(f"wrote {a.out}", file=sys.stderr)
    if a.json:
        print(text)
    return not a.json


def _bench_engines(a) -> int:
    from sis.bench import compare_engines
    from sis.engines.policy import judge_comparison
    a.size = a.size or (360, 480)
    res = compare_engines(a.model, a.data, a.engines.split(",") if a.engines else None, a.size,
                          a.warmup, a.repeats or 10, a.val_limit, log=lambda s: print(s, file=sys.stderr))
    judge_comparison(res)
    if _emit(a, res):
        h = res["host"]
        print(f"{res['model']} at {a.size[0]}x{a.size[1]}, batch 1, {h['torch_threads']} threads, {h['cpu']}; "
              f"val mIoU on {res['val_frames']} frames" if res["val_frames"] else "(no --data: no accuracy check)")
        print(f"{'engine':18s} {'median ms':>10s} {'img/s':>7s} {'vs eager':>9s} {'val mIoU':>9s} {'delta':>7s}")
        for n, b in res["engines"].items():
            acc = f"{100 * b['miou']:9.2f} {b['miou_delta']:+7.2f}" if b["miou"] is not None else f"{'-':>9s} {'-':>7s}"
            print(f"{n:18s} {b['median_ms']:10.1f} {b['images_per_s']:7.2f} {b['speedup_vs_eager']:8.2f}x {acc}")
        for n, why in res["unavailable"].items():
            print(f"{n:18s} unavailable: {why}")
        cl = res["channels_last_fp32"]
        print(f"eager is plain smp fp32 (NCHW); with channels_last it took {cl['median_ms']:.1f} ms "
              f"({cl['speedup_vs_eager']:.2f}x) in the same rounds")
        print(f"engine chosen here: {res['default']} (accuracy gate: within {res['max_miou_delta']} point)" +
              (": kept, the app and `predict` use it on this host" if res["kept_for_this_host"] else
               f" (not kept: {res['not_kept']['sentence']})"))
    return 0


def _bench_train(a) -> int:
    from sis.bench import compare_train
    size, batch = a.size or (352, 480), a.batch or 4
    res = compare_train(a.model, a.data, batch, size, a.warmup, a.repeats or 5,
                        a.loss_steps if a.data else 0, a.device)
    if _emit(a, res):
        print(f"{res['model']} training step, batch {batch}, {size[0]}x{size[1]} on {res['device']}: eager fp32 "
              f"{res['eager_ms']:.0f} ms, {res['fast_path']} {res['fast_ms']:.0f} ms -> {res['speedup']:.2f}x")
        if "loss_curves" in res:
            t = res["loss_tail_mean"]
            print(f"loss over the last third of {a.loss_steps} steps: eager {t['eager']:.4f}, fast {t['fast']:.4f} "
                  f"(gap {res['loss_tail_gap']:.4f}; fp32 step-to-step spread {res['loss_tail_std_eager']:.4f})")
    return 0
