"""The only code that imports Streamlit: what the pages share, each page a thin story over it.

    session  routing, startup, session identity, the latest result per page
    uploads  photos, clips and dataset zips checked against the limits
    serving  engines cached once per process, the inference gate, the pages' library calls
    widgets  model, engine and mode pickers, the legend, a job's progress, the drawing canvas
"""
from sis.studio.ui.serving import (
    KEEP_DRAFTS,
    MODES,
    compare_models,
    correction_draft,
    dashboard_rows,
    engine_choice,
    ensemble_label,
    get_config,
    get_engine,
    offered_ensembles,
    rank_clip,
    rank_photos,
    segment_cached,
)
from sis.studio.ui.session import (
    KEEP_CLIPS_H,
    access,
    datasets_home,
    ensure_router,
    follow_deep_link,
    inference_gate,
    latest,
    mark_routed,
    open_on,
    session_id,
    startup,
)
from sis.studio.ui.uploads import (
    MAX_IMAGE_MP,
    MAX_UPLOAD_FILES,
    MAX_UPLOAD_MB,
    MAX_VIDEO_MB,
    SERVER_FOLDER,
    keep_uploads,
    kept_clip,
    kept_uploads,
    load_image,
    probed_clip,
    read_upload,
    stash_clip,
    stash_dataset_zip,
    stash_photos,
    training_sources,
    usable_uploads,
)
from sis.studio.ui.widgets import (
    adapt_button,
    canvas,
    describe,
    engine_picker,
    follow_job,
    legend,
    mode_picker,
    model_picker,
    palette,
    palette_picker,
    shown,
)
