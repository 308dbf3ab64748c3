"""Render the shipped models' training curves (from their cards) to docs/training_curves.png.

    python tools/curves_png.py

Plotly draws the figure; Debian's Chromium (via Playwright) takes the picture, so no extra
image-export package is needed.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402

from sis.studio import catalog  # noqa: E402
from sis.vis import charts, report  # noqa: E402

rows = [r for r in (report.dashboard_row(k, e.folder) for k, e in catalog.available_models().items() if e.shipped)
        if r.history]
fig = charts.training_curves(rows)
fig.update_layout(width=1500, height=460, title="Training curves of the shipped models (CamVid, random init)",
                  margin=dict(t=80))
html = Path(tempfile.mkdtemp()) / "curves.html"
fig.write_html(html, include_plotlyjs=True, full_html=True)
out = ROOT / "docs" / "training_curves.png"
out.parent.mkdir(exist_ok=True)
with sync_playwright() as p:
    b = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"])
    page = b.new_page(viewport={"width": 1520, "height": 480})
    page.goto(html.as_uri())
    page.locator(".js-plotly-plot").wait_for()
    page.screenshot(path=str(out))
    b.close()
print(f"wrote {out}")
