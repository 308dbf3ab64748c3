"""``python -m sis models``, ``export`` and ``download``."""
from __future__ import annotations

import json
from pathlib import Path

from sis.cli.progress import StderrProgress


def registry_complexity() -> dict[str, dict]:
    """``zoo.models.complexity`` of every registry model, kept in the graph cache's folder: counting the FLOPs of
    26 models takes seconds, and the answer changes only with the architecture or the library versions."""
    from importlib.metadata import version

    from sis import zoo
    from sis.engines.cache import cache_dir
    from sis.files import atomic_write
    path = cache_dir() / "complexity.json"
    versions = f"smp {version('segmentation_models_pytorch')}, torch {version('torch')}"  # read without importing them
    try:
        kept = json.loads(path.read_text())
    except (OSError, ValueError):
        kept = {}
    out, missing = {}, False
    for name, spec in zoo.MODELS.items():
        key = f"{name} {json.dumps(spec.smp_kwargs, sort_keys=True)} {versions}"
        if not isinstance(kept.get(key), dict):
            from sis.zoo import models  # torch: only where something must be counted
            kept[key], missing = models.complexity(name), True
        out[name] = kept[key]
    if missing:
        try:
            atomic_write(path, lambda tmp: tmp.write_text(json.dumps(kept, indent=1)))
        except OSError:  # a read-only data folder: counted again next time
            pass
    return out


def cmd_models(a) -> int:
    from sis import zoo
    from sis.studio.catalog import available_models, default_key
    shipped = zoo.shipped_models()
    default = default_key({k: e for k, e in available_models().items() if e.shipped}) or zoo.DEFAULT_MODEL
    rows = []
    counted = registry_complexity()
    for name, spec in zoo.MODELS.items():
        c = counted[name]
        card = zoo.read_card(shipped[name]) if name in shipped else zoo.ModelCard()
        rows.append({"name": name, "arch": spec.arch, "encoder": spec.encoder, "paper": spec.paper,
                     "params": c["params"], "gflops_360x480": round(c["gflops"], 2),
                     "input_stride": spec.input_stride, "shipped": name in shipped,
                     "default": name == default,
                     "val_miou": card.val_miou})
    if a.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'name':22} {'params':>8} {'GFLOPs':>7} {'stride':>6}  shipped  val mIoU  paper")
    for r in rows:
        miou = f"{100 * r['val_miou']:.1f}" if r["val_miou"] is not None else "-"
        print(f"{r['name'] + (' *' if r['default'] else ''):22} {r['params'] / 1e6:7.1f}M {r['gflops_360x480']:7.1f} "
              f"{r['input_stride']:6d}  {'yes' if r['shipped'] else '-':7}  {miou:>8}  {r['paper'] or ''}")
    print("* = the app's default model")
    return 0


def cmd_export(a) -> int:
    from sis import zoo
    from sis.engines.export import export_onnx
    res = export_onnx(zoo.resolve(a.model), Path(a.out), a.size)
    print(f"wrote {res['file']} (input 1x3x{res['input_size'][0]}x{res['input_size'][1]}, opset {res['opset']}); "
          f"parity vs PyTorch: max abs diff {res['max_abs_diff']:.2e}, argmax agreement "
          f"{100 * res['argmax_agreement']:.3f}%")
    return 0 if res["max_abs_diff"] < 1e-2 else 1


def default_model() -> str:
    from sis.studio.catalog import available_models, default_key
    return default_key({k: e for k, e in available_models().items() if e.shipped})


def cmd_download(a) -> int:
    from sis import store
    from sis.data.download import SEGNET_CAMVID_URL, download_camvid
    a.out = a.out or str(store.data_dir() / "camvid")
    reading = {}  # the split being read -> its progress line; each split counts on its own

    def report(i, n, split):
        if split not in reading:
            for line in reading.values():
                line.close()
            reading.clear()
            reading[split] = StderrProgress(lambda done, total: f"{split}: {done}/{total}")
        reading[split](i, n)
    counts = download_camvid(Path(a.out), a.url or SEGNET_CAMVID_URL, progress=report)
    for line in reading.values():
        line.close()
    print(f"downloaded to {a.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0
