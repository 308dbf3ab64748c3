"""What visitors upload: photos, clips and dataset zips, checked against the server's limits."""
from __future__ import annotations

import uuid
from pathlib import Path

import streamlit as st

from sis import files, store, video
from sis.data import userdata
from sis.data.dataset import extract_dataset_zip, list_pairs
from sis.data.images import ImageError, load_image
from sis.studio.ui.session import access, datasets_home

MAX_UPLOAD_FILES = 8


MAX_UPLOAD_MB = 25  # also server.maxUploadSize in .streamlit/config.toml


MAX_IMAGE_MP = 40


MAX_VIDEO_MB = 200  # server.maxUploadSize in .streamlit/config.toml; photos are held to MAX_UPLOAD_MB here


SERVER_FOLDER = "a folder on this server (typed below)"


def training_sources(camvid: Path | None) -> dict[str, Path | None]:
    """What the Fine-tune page may train on, by label: CamVid when present, the datasets this session sees,
    the zips it uploaded, and (None) a typed server folder where the operator allows it (userdata.Access)."""
    out: dict[str, Path | None] = {}
    if camvid is not None:
        val = len(list_pairs(camvid, "val")) if (camvid / "val").is_dir() else 0
        out[f"CamVid ({len(list_pairs(camvid, 'train'))} train frames, {val} val)"] = camvid
    for ds in userdata.list_datasets(datasets_home()):
        out[f"{ds.name} ({len(ds.frames)} frames, from the Correct page)"] = ds.root
    for name, root in st.session_state.get("_ft_zips", {}).items():
        if Path(root).is_dir():  # uploads are pruned after KEEP_CLIPS_H hours
            out[f"{name} (uploaded zip)"] = Path(root)
    if access().server_paths:
        out[SERVER_FOLDER] = None
    return out


def stash_dataset_zip(upload) -> Path:
    """Extract an uploaded SegNet-layout zip under data/uploads/ once per upload; it is then listed for
    this session (training_sources). Raises DatasetError for a zip that is not a dataset."""
    zips = st.session_state.setdefault("_ft_zips", {})
    key = f"{upload.name} #{upload.file_id[:6]}"
    if key not in zips or not Path(zips[key]).is_dir():
        zips[key] = str(extract_dataset_zip(upload.getvalue(), store.data_dir() / "uploads" / uuid.uuid4().hex))
    return Path(zips[key])


def _loaded(upload):
    """The LoadedImage of an st.file_uploader / st.camera_input file; ImageError says why it cannot be used."""
    if upload.size > MAX_UPLOAD_MB * 2**20:
        raise ImageError(f"{upload.name} is {upload.size / 2**20:.0f} MB, above the {MAX_UPLOAD_MB} MB limit")
    return load_image(upload.getvalue(), max_pixels=MAX_IMAGE_MP * 10**6, name=upload.name)


def read_upload(upload):
    """The LoadedImage of an st.file_uploader / st.camera_input file, or None after showing
    the one-sentence reason it cannot be used."""
    try:
        return _loaded(upload)
    except ImageError as e:
        st.error(str(e))
        return None


def usable_uploads(uploads: list) -> list:
    """The photos of ``uploads`` that can be read, in their order, after one sentence for each that cannot
    (read_upload's); each file is checked once per session."""
    checked = st.session_state.setdefault("_upload_checks", {})
    good = []
    for up in uploads:
        if up.file_id not in checked:
            try:
                _loaded(up)
                checked[up.file_id] = ""
            except ImageError as e:
                checked[up.file_id] = str(e)
        if checked[up.file_id]:
            st.error(checked[up.file_id])
        else:
            good.append(up)
    return good


def _copy(upload, target: Path) -> None:
    """The upload's bytes to ``target`` in 1 MB pieces (getvalue() would hold a second copy of a clip)."""
    import shutil
    upload.seek(0)
    with open(target, "wb") as f:
        shutil.copyfileobj(upload, f, 2**20)


def stash_photos(uploads) -> Path:
    """The uploaded photos written once into a folder of the data folder's uploads/ (a worker reads them
    from there); photos that cannot be read are left out (read_upload has said why)."""
    key = "_photos:" + ",".join(u.file_id for u in uploads)
    folder = Path(st.session_state.get(key) or store.data_dir() / "uploads" / uuid.uuid4().hex)
    if key not in st.session_state or not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        for i, u in enumerate(uploads):
            got = read_upload(u)
            if got is not None:
                files.atomic_write(folder / f"{i:02d}-{Path(u.name).stem}.png", lambda tmp: got.image.save(tmp, "PNG"))
        st.session_state[key] = str(folder)
    return folder


def probed_clip(path: Path) -> tuple[Path, video.VideoInfo]:
    """The clip at ``path`` and its probe, probed once per session; raises video.VideoError."""
    key = f"_probe:{path}"
    if key not in st.session_state:
        st.session_state[key] = (path, video.probe(path))
    return st.session_state[key]


def stash_clip(upload) -> tuple[Path, video.VideoInfo] | None:
    """Write an st.file_uploader clip to the data folder once (a worker process reads it from there)
    and probe it; None after showing the one-sentence reason it cannot be used."""
    if upload.size > MAX_VIDEO_MB * 2**20:
        st.error(f"{upload.name} is {upload.size / 2**20:.0f} MB, above the {MAX_VIDEO_MB} MB limit for clips")
        return None
    key = f"_clip:{upload.file_id}"
    if key not in st.session_state:
        suffix = Path(upload.name).suffix.lower()
        path = store.data_dir() / "uploads" / f"{upload.file_id}{suffix}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            files.atomic_write(path, lambda tmp: _copy(upload, tmp))
            st.session_state[key] = probed_clip(path)
        except (video.VideoError, files.DiskFullError) as e:
            files.remove(path)
            st.session_state[key] = str(e)
    got = st.session_state[key]
    if isinstance(got, str):
        st.error(got.replace(f"{upload.file_id}{Path(upload.name).suffix.lower()}", upload.name))
        return None
    return got


def keep_uploads(key: str) -> None:
    """on_change of a source picker: the files in uploader ``key`` kept for the session, since an uploader
    that is not drawn (another source picked) loses its files."""
    files_now = st.session_state.get(key)
    if files_now:
        st.session_state[f"_kept:{key}"] = list(files_now) if isinstance(files_now, list) else [files_now]


def _still_here(sentence: str, key: str, kept_key: str) -> None:
    """The one sentence saying what an empty uploader still holds from before, and Clear, which drops it."""
    c1, c2 = st.columns([4, 1])
    c1.caption(f"Still here from before: {sentence}")
    if c2.button("Clear", key=f"{key}:clear"):
        st.session_state.pop(kept_key, None)
        st.rerun()


def kept_uploads(key: str, uploads: list) -> list:
    """What uploader ``key`` holds, or where it came back empty after another source was picked, the files
    it held then (with a sentence saying so and a way to drop them)."""
    kept_key = f"_kept:{key}"
    if uploads:
        st.session_state.pop(kept_key, None)
        return uploads
    kept = st.session_state.get(kept_key) or []
    if kept:
        _still_here(f"{', '.join(u.name for u in kept)}. Upload others to replace them.", key, kept_key)
    return kept


def kept_clip(key: str = "vid_upload") -> tuple[Path, video.VideoInfo] | None:
    """With clip uploader ``key`` empty: the clip this session uploaded last, still on disk (an uploader that
    was not drawn, another source picked, comes back empty), with a sentence saying so and a way to drop it."""
    last = st.session_state.get("_last_clip")
    if last is None or Path(last) == video.SAMPLE_CLIP or not Path(last).is_file():
        return None
    _still_here("the clip you uploaded. Upload another to replace it.", key, "_last_clip")
    try:
        return probed_clip(Path(last))
    except video.VideoError:
        return None
