"""SIS Studio: the router. Page config, navigation over pages/, shared sidebar."""
import streamlit as st

from sis import app, catalog

st.set_page_config(page_title="SIS Studio", page_icon="🛣️", layout="wide")
app.startup()

pages = [
    st.Page("pages/home.py", title="Home", icon="🏠", default=True),
    st.Page("pages/segment.py", title="Segment", icon="🖼️"),
    st.Page("pages/compare.py", title="Compare", icon="📊"),
    st.Page("pages/finetune.py", title="Fine-tune", icon="🏋️"),
    st.Page("pages/benchmark.py", title="Benchmark", icon="⏱️"),
]
nav = st.navigation(pages)
with st.sidebar:
    st.caption(f"{len(catalog.available_models())} models available · CPU/GPU inference with PyTorch")
nav.run()
