"""SIS Studio: the router. Page config, navigation over pages/, shared sidebar."""
import streamlit as st

from sis.studio import catalog, ui

# an emoji favicon: a Material icon there is fetched from the internet, which a host offline cannot reach
st.set_page_config(page_title="SIS Studio", page_icon="🚗", layout="wide")
ui.startup()
ui.mark_routed()

pages = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/segment.py", title="Segment", icon=":material/image_search:"),
    st.Page("pages/video.py", title="Video", icon=":material/movie:"),
    st.Page("pages/correct.py", title="Correct", icon=":material/brush:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare:"),
    st.Page("pages/finetune.py", title="Fine-tune", icon=":material/model_training:"),
    st.Page("pages/benchmark.py", title="Benchmark", icon=":material/speed:"),
]
nav = st.navigation(pages)
ui.follow_deep_link()
with st.sidebar:
    n = len(catalog.available_models())
    st.caption(f"{n} trained model{'s' if n != 1 else ''} available")
    ui.palette_picker()
nav.run()
