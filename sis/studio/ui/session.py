"""One visitor's session and the server process: routing, startup, identity, the latest result per page."""
from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

import pandas  # noqa: F401 - imported up front: plotly peeks at a half-imported pandas when another
import streamlit as st  # session's thread is importing it (st.dataframe), and a chart then fails with AttributeError

from sis import files, host, store
from sis.data import userdata
from sis.studio import jobs

KEEP_CLIPS_H = 24   # uploaded clips and their results are deleted this many hours after they were written


_ROUTED = False


def mark_routed() -> None:
    """Called by the router: from now on this server process knows the st.navigation pages."""
    global _ROUTED
    _ROUTED = True


def ensure_router(page_file: str) -> None:
    """A deep link into pages/ on a server that has not run the router yet gets Streamlit's old
    folder-based navigation; send it through the router, which then opens the same page."""
    if not _ROUTED:
        st.session_state["_deep_link"] = f"pages/{os.path.basename(page_file)}"
        st.switch_page("streamlit_app.py")


def open_on(key: str, choices: dict[str, str]) -> None:
    """A link from another page says which option of the widget ``key`` to open on (``?open=clip``,
    st.page_link's query_params): set it once, before the widget is drawn, and clear the parameter so
    that the visitor's own choice holds from then on."""
    value = st.query_params.get("open")
    if value in choices:
        st.session_state[key] = choices[value]
        del st.query_params["open"]


def follow_deep_link() -> None:
    """Router side of ``ensure_router``."""
    target = st.session_state.pop("_deep_link", None)
    if target:
        st.switch_page(target)


@st.cache_resource
def startup() -> jobs.JobManager:
    """Once per server process: malloc arenas, the job manager (which marks stale runs interrupted
    and reaps orphaned jobs on its own thread)."""
    host.limit_malloc_arenas(2)  # keeps the server's RSS near its working set (docs/memory.md)
    for folder in ("uploads", "videos", "sessions"):  # sessions: visitors' datasets on a shared server
        files.prune_older(store.data_dir() / folder, KEEP_CLIPS_H * 3600)
    return jobs.JobManager()


@st.cache_resource
def inference_gate() -> threading.Semaphore:
    """At most SIS_INFERENCE_SLOTS inferences at once in the server (default 2, 1 on a host under 2 GB):
    an engine already uses every core, so more at once add only memory (each holds its own activations)."""
    default = "1" if host.is_small() else "2"
    return threading.BoundedSemaphore(max(1, int(os.environ.get("SIS_INFERENCE_SLOTS", default))))


def session_id() -> str:
    if "sid" not in st.session_state:
        try:
            from streamlit.runtime.scriptrunner import get_script_run_ctx
            st.session_state.sid = get_script_run_ctx().session_id
        except Exception:
            st.session_state.sid = uuid.uuid4().hex
    return st.session_state.sid


def access() -> userdata.Access:
    return userdata.Access.from_env()


def datasets_home() -> Path:
    """The datasets folder this session sees: every dataset, or on a shared server its own (userdata.Access)."""
    return access().home(session_id())


def latest(slot: str, key: tuple, compute):
    """``compute()`` once per key; the session keeps only the latest result under ``slot``."""
    if st.session_state.get(slot, (None,))[0] != key:
        st.session_state[slot] = (key, compute())
    return st.session_state[slot][1]
