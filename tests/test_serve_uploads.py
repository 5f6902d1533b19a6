"""The server's store of uploaded videos: each upload its session's only, and the folder only while it holds any."""

import pytest

from sam2rt.serve.media import MediaError, UploadStore


def test_the_folder_is_made_on_the_first_upload_and_removed_on_close():
    store = UploadStore(max_bytes=1000)
    assert store.folder is None  # a server that gets no upload leaves nothing in the temporary folder
    with pytest.raises(MediaError, match="no such upload"):
        store.path("session", "unknown")
    store.discard_session("session")
    store.close()

    upload_id, path = store.new_path("session", ".MP4")
    assert path.parent == store.folder and path.suffix == ".mp4"
    path.write_bytes(b"frames")
    assert store.path("session", upload_id) == path
    with pytest.raises(MediaError, match="no such upload"):
        store.path("another session", upload_id)  # as unknown as a missing one
    folder = store.folder
    store.close()
    assert not folder.exists()


def test_a_discarded_session_takes_its_uploads_only():
    store = UploadStore(max_bytes=1000)
    mine, my_path = store.new_path("mine", ".mp4")
    theirs, their_path = store.new_path("theirs", ".webm")
    my_path.write_bytes(b"a")
    their_path.write_bytes(b"b")
    store.discard_session("mine")
    assert not my_path.exists() and their_path.exists()
    with pytest.raises(MediaError):
        store.path("mine", mine)
    assert store.path("theirs", theirs) == their_path
    store.close()
