"""Where blobs live and where devices download them from: what the server's config accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetcast.server import config as server_config
from fleetcast.server.blobs import LocalBlobs, open_blobs
from fleetcast.server.download_links import locate
from fleetcast.server.errors import InvalidRequest
from fleetcast.server.s3blobs import check_endpoint


def test_blobs_and_the_download_base_url_come_from_flags_or_the_environment(tmp_path: Path) -> None:
    config = server_config.load(data_dir=tmp_path, environ={
        "FLEETCAST_BLOBS": "s3://models/fleet", "FLEETCAST_DOWNLOAD_BASE_URL": "https://cdn.example/fleet/",
        "AWS_REGION": "eu-west-3"})
    assert (config.blobs_url, config.download_base_url) == ("s3://models/fleet", "https://cdn.example/fleet")
    assert config.s3_region == "eu-west-3"
    assert open_blobs(config.blobs_url, data_blobs_dir=tmp_path / "blobs",
                      region=config.s3_region).client.meta.region_name == "eu-west-3"   # type: ignore[attr-defined]
    flagged = server_config.load(data_dir=tmp_path, blobs_url="s3://other/p", download_url_expires_s=120,
                                 environ={"FLEETCAST_BLOBS": "s3://models/fleet"})
    assert (flagged.blobs_url, flagged.download_url_expires_s, flagged.download_base_url) == ("s3://other/p", 120, None)


@pytest.mark.parametrize("kwargs, named", [
    ({"blobs_url": "gs://bucket/p"}, "--blobs"),
    ({"download_base_url": "http://cdn.example/p"}, "plain http off loopback"),
    ({"download_base_url": "ftp://cdn.example/p"}, "--download-base-url"),
    ({"download_base_url": "https://user:pw@cdn.example/p"}, "no credentials"),
    ({"download_url_expires_s": 10}, "--download-url-expires-s"),
    ({"download_url_expires_s": 8 * 86400}, "--download-url-expires-s"),
])
def test_bad_blob_settings_are_refused_with_the_flag_named(tmp_path: Path, kwargs: dict, named: str) -> None:
    with pytest.raises(InvalidRequest, match=named):
        server_config.load(data_dir=tmp_path, **kwargs)


@pytest.mark.parametrize("endpoint, refused", [
    ("https://s3.storage.example", False), ("http://127.0.0.1:9000", False),
    ("http://s3.storage.example", True), ("ftp://127.0.0.1", True)])
def test_an_s3_endpoint_off_loopback_must_be_https(endpoint: str, refused: bool) -> None:
    if refused:
        with pytest.raises(InvalidRequest, match="not https"):
            check_endpoint(endpoint)
    else:
        check_endpoint(endpoint)


def test_blobs_may_live_in_a_directory_of_their_own(tmp_path: Path) -> None:
    blobs = open_blobs(str(tmp_path / "shared"), data_blobs_dir=tmp_path / "data" / "blobs")
    sha, _ = blobs.put_bytes(b"shared by replicas")
    assert (tmp_path / "shared" / "sha256" / sha[:2] / sha).read_bytes() == b"shared by replicas"
    with pytest.raises(InvalidRequest, match="--blobs"):
        open_blobs("gs://bucket/p", data_blobs_dir=tmp_path / "blobs")


def test_a_cdn_url_follows_the_blob_layout_and_local_blobs_have_no_presigned_url(tmp_path: Path) -> None:
    blobs = open_blobs("", data_blobs_dir=tmp_path / "blobs")
    assert isinstance(blobs, LocalBlobs)
    sha, _ = blobs.put_bytes(b"model")
    assert locate(blobs, sha, base_url="https://cdn.example/fleet", expires_s=900).url == \
        f"https://cdn.example/fleet/sha256/{sha[:2]}/{sha}"
    assert locate(blobs, sha, base_url=None, expires_s=900).url == ""
    with pytest.raises(InvalidRequest):
        locate(blobs, "../../etc/passwd", base_url="https://cdn.example/fleet", expires_s=900)
