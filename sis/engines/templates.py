"""Weight-free graph templates: each shipped model carries its exported graphs without the
tensors its model.safetensors holds (tens of KB instead of tens of MB), and the server fills them
in with onnx and numpy alone, so a first start never imports torch or smp.
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np

from sis.engines.cache import file_key, tmp_onnx
from sis.files import atomic_write
from sis.zoo.registry import ModelConfig

# photo shapes (h:w) whose graphs ship with each model (weights/NAME/graph-HxW.onnx): 4:3, 16:9, 3:2,
# landscape and portrait
TEMPLATE_ASPECTS = ((3, 4), (4, 3), (9, 16), (16, 9), (2, 3), (3, 2))


def weight_name(initializer: str) -> str:
    """The state-dict key of a graph initializer: PreprocessedModel holds the network as ``model``, and a
    FixedPSPBlock holds smp's ``pool.1`` as ``conv`` (renaming the module would rename the
    graph's nodes, which the shipped int8 ranges are keyed by)."""
    return re.sub(r"(\.psp\.blocks\.\d+)\.conv\.", r"\1.pool.1.", initializer.removeprefix("model."))


def template_path(folder: Path, size: tuple[int, int]) -> Path:
    return Path(folder) / f"graph-{size[0]}x{size[1]}.onnx"


def template_sizes(cfg: ModelConfig) -> list[tuple[int, int]]:
    """The work sizes whose graphs ship as templates: photos of TEMPLATE_ASPECTS (CamVid's 4:3
    first) at the model's pixel count, e.g. 360x480, 480x360, 312x554, 554x312, 339x509, 509x339;
    then the base size at the accurate mode's other default scales (270x360, 450x600, 540x720)."""
    from sis.data.images import scaled_size
    from sis.engines.accurate import DEFAULT_SCALES
    from sis.engines.predict import work_size
    photos = [work_size(1000 * ah, 1000 * aw, tuple(cfg.base_size)) for ah, aw in TEMPLATE_ASPECTS]
    accurate = [scaled_size(tuple(cfg.base_size), s) for s in DEFAULT_SCALES if s != 1.0]
    return list(dict.fromkeys(photos + accurate))


def write_templates(model, cfg: ModelConfig, folder: Path) -> list[Path]:
    """Export ``model`` (the weights in ``folder``) at every ``template_sizes`` and keep each
    graph's template in ``folder``, replacing the ones there."""
    from sis.engines.export import export_graph
    for old in Path(folder).glob("graph-*.onnx"):
        old.unlink()
    with tempfile.TemporaryDirectory() as d:
        return [write_template(export_graph(model, cfg, size, Path(d) / "g.onnx"), folder, size)
                for size in template_sizes(cfg)]


def carry_templates(src: Path, dst: Path) -> int:
    """Give the model in ``dst`` the templates of ``src``, a model of the same architecture whose weights
    differ only in value (adapted or fine-tuned from it): the same graphs, keyed to ``dst``'s weights, which fill them.
    Returns how many were carried. Only an architecture's constants stay in a template, so the graph filled
    from ``dst`` is ``dst``'s (checked against eager by the caller, ``packaging.carry.agreement``)."""
    import onnx
    key, own = file_key(dst), file_key(src)
    carried = 0
    for t in sorted(Path(src).glob("graph-*.onnx")):
        model = onnx.load(str(t))
        meta = {p.key: p for p in model.metadata_props}
        if meta.get("sis_weights_key") is None or meta["sis_weights_key"].value != own:
            continue  # made for other weights than src's: not src's graph to carry
        meta["sis_weights_key"].value = key
        out = Path(dst) / t.name
        atomic_write(out, lambda tmp, model=model: onnx.save(model, str(tmp)), tmp_onnx(out))
        carried += 1
    return carried


def write_template(graph: Path, folder: Path, size: tuple[int, int]) -> Path:
    """Ship ``graph`` (exported from ``folder``'s weights) without the tensors that the folder's
    model.safetensors holds. The server rebuilds the graph from the two
    with onnx and numpy only, so a first start never imports smp, timm or torchvision."""
    import onnx
    from onnx import numpy_helper
    from safetensors.numpy import load_file
    weights = load_file(str(Path(folder) / "model.safetensors"))
    model = onnx.load(str(graph))
    keep, filled = [], []
    for init in model.graph.initializer:
        w = weights.get(weight_name(init.name))
        if w is not None and np.array_equal(numpy_helper.to_array(init), w.astype(np.float32)):
            filled.append(init.name)
        else:
            keep.append(init)
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    for k, v in (("sis_weights_key", file_key(folder)), ("sis_filled", ",".join(filled))):
        model.metadata_props.add(key=k, value=v)
    out = template_path(folder, size)
    return atomic_write(out, lambda t: onnx.save(model, str(t)), tmp_onnx(out))


def fill_template(folder: Path, size: tuple[int, int], dst: Path, key: str | None = None) -> bool:
    """Rebuild the fp32 graph of ``size`` from the folder's template and weights into ``dst``;
    False (nothing written) when there is no template or it was made for other weights.
    ``key``: the folder's ``file_key`` when the caller has it (it reads the whole weights file)."""
    src = template_path(folder, size)
    if not src.is_file():
        return False
    import onnx
    from onnx import numpy_helper
    from safetensors.numpy import load_file
    try:
        model = onnx.load(str(src))
        meta = {p.key: p.value for p in model.metadata_props}
        if meta.get("sis_weights_key") != (key or file_key(folder)):
            return False
        weights = load_file(str(Path(folder) / "model.safetensors"))
        names = [n for n in meta.get("sis_filled", "").split(",") if n]
        model.graph.initializer.extend(
            numpy_helper.from_array(weights[weight_name(n)].astype(np.float32), n) for n in names)
    except Exception:  # an unreadable template or weights without a tensor it names: export instead
        return False
    del model.metadata_props[:]
    atomic_write(dst, lambda t: onnx.save(model, str(t)), tmp_onnx(dst))
    return True
