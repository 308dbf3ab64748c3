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
