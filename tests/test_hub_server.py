"""The local Hub fixture speaks enough of the Hub protocol for huggingface_hub uploads and downloads."""

from __future__ import annotations

import os
import uuid

import pytest


def test_endpoint_points_to_local_hub(local_hub):
    from huggingface_hub import constants

    assert constants.ENDPOINT == local_hub.url
    assert local_hub.url.startswith("http://127.0.0.1:")
    assert constants.HF_HUB_CACHE.startswith(os.environ["HF_HOME"])


def test_upload_download_roundtrip(local_hub, tmp_path):
    from huggingface_hub import HfApi, hf_hub_download, list_repo_files, model_info
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

    repo_id = f"tester/roundtrip-{uuid.uuid4().hex[:8]}"
    api = HfApi()
    api.create_repo(repo_id)
    api.create_repo(repo_id, exist_ok=True)  # second call: 409 handled by the client
    (tmp_path / "sub").mkdir()
    (tmp_path / "weights.bin").write_bytes(bytes(range(256)) * 10)
    (tmp_path / "sub" / "config.json").write_text('{"a": 1}')
    info = api.upload_folder(repo_id=repo_id, folder_path=tmp_path, commit_message="add files")
    assert len(info.oid) == 40

    assert sorted(list_repo_files(repo_id)) == [".gitattributes", "sub/config.json", "weights.bin"]
    assert model_info(repo_id).sha == info.oid
    local = hf_hub_download(repo_id, "weights.bin")
    assert open(local, "rb").read() == bytes(range(256)) * 10
    assert open(hf_hub_download(repo_id, "sub/config.json"), encoding="utf-8").read() == '{"a": 1}'
    assert api.file_exists(repo_id, "weights.bin") and not api.file_exists(repo_id, "nope.bin")

    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "missing.safetensors")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("tester/does-not-exist", "config.json")

    # a second commit that changes and deletes files; the old revision stays readable by its sha
    api.upload_file(path_or_fileobj=b"v2", path_in_repo="weights.bin", repo_id=repo_id)
    api.delete_file("sub/config.json", repo_id=repo_id)
    assert open(hf_hub_download(repo_id, "weights.bin"), "rb").read() == b"v2"
    assert open(hf_hub_download(repo_id, "weights.bin", revision=info.oid), "rb").read() == bytes(range(256)) * 10
    assert sorted(list_repo_files(repo_id)) == [".gitattributes", "weights.bin"]
