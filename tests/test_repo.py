"""Repository facts that keep the README honest."""
import re

from conftest import ROOT


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- test-command -->\s*```bash\n(.+?)\n```", readme, re.S)
    assert block, "README has no test-command block"
    ci_lines = [l for l in (ROOT / ".ci" / "run").read_text().splitlines() if l and not l.startswith(("#", "set ", "cd "))]
    assert ci_lines == [block.group(1).strip()]


def test_readme_models_table_matches_the_cards():
    """The README's val, kitti-dev and under-shift figures are the cards' (a model shipped again must update them)."""
    from sis import zoo
    readme = (ROOT / "README.md").read_text()
    head = next(line for line in readme.splitlines() if line.startswith("| model | paper pair | val mIoU"))
    cols = [c.strip() for c in head.strip("|").split("|")]
    rows = {}
    for line in readme.splitlines():
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
        if len(cells) == len(cols) and cells[0].split(" ")[0] in zoo.shipped_models():
            rows[cells[0].split(" ")[0]] = dict(zip(cols, cells))
    assert set(rows) == set(zoo.shipped_models())
    for name, folder in zoo.shipped_models().items():
        card = zoo.read_card(folder)
        assert rows[name]["val mIoU"] == f"{100 * card.val_miou:.2f}"
        assert rows[name]["under shift"] == ("-" if card.shift_mean is None else f"{100 * card.shift_mean:.2f}")
        assert rows[name]["kitti-dev"] == f"{100 * card.dev_miou:.2f}"


def _layers() -> list[set[str]]:
    """The README's layout of sis/, top to bottom: one set of packages or modules a line."""
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("\nsis/\n"):]
    block = block[:block.index("\nweights/")]
    layers = []
    for line in block.splitlines()[2:]:
        if re.match(r"  \S", line):  # a package or module of sis/ itself, not one inside a package
            names = re.findall(r"(\w+)(?:/|\.py)(?=\s)", line.split("   ")[0] + " ")
            layers.append(set(names))
    return layers


def test_sis_is_layered_as_the_readme_says_and_no_module_is_over_400_lines():
    """A package imports only from those the README lists below it (or on its own line), lazy imports too;
    a module past 400 lines holds more than one job."""
    import ast
    layers = _layers()
    level = {name: i for i, names in enumerate(layers) for name in names}
    units = {p.name if p.is_dir() else p.stem for p in (ROOT / "sis").iterdir()
             if (p.is_dir() and (p / "__init__.py").is_file()) or (p.suffix == ".py" and p.stem not in ("__init__", "__main__"))}
    assert units == set(level), f"README's layout lists {sorted(set(level))}, sis/ holds {sorted(units)}"
    upward, long = [], []
    for path in (ROOT / "sis").rglob("*.py"):
        rel = path.relative_to(ROOT / "sis")
        if len(rel.parts) == 1 and rel.stem in ("__init__", "__main__"):
            continue
        source = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        text = path.read_text()
        if text.count("\n") > 400:
            long.append(f"{rel}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for mod in mods:
                parts = mod.split(".")
                if parts[0] != "sis" or len(parts) < 2:
                    continue
                target = parts[1]
                if target in level and target != source and level[target] < level[source]:
                    upward.append(f"{rel} imports {mod} (listed above it)")
    assert not upward, upward
    assert not long, long


def test_cards_and_engines_are_read_through_their_types():
    """A card's sections are read through ModelCard (its file as written only in zoo/card.py and the tools that
    copy whole sections); an engine's temperature and names are declared, not guessed with a getattr default."""
    offenders = []
    for path in [*(ROOT / "sis").rglob("*.py"), *(ROOT / "pages").rglob("*.py"), *(ROOT / "tools").rglob("*.py")]:
        text = path.read_text()
        rel = path.relative_to(ROOT)
        if str(rel) != "sis/zoo/card.py" and re.search(r"\.raw\b", text):
            offenders.append(f"{rel}: .raw")
        offenders += [f"{rel}: {m.group(0)}" for m in re.finditer(r"getattr\(\w*engine\w*, *[\"'][^\"']+[\"'], ", text)]
    assert not offenders, offenders
