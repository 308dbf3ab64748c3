"""What the pages show: label maps painted, typed results, charts. numpy, Pillow and Plotly; no torch.

    paint    palette colours, overlays, error maps, colour maps, PNG bytes
    report   typed results for the pages: a segmentation, a comparison, a dashboard row
    charts   Plotly figures
"""
