"""ServerConfig: loopback by default; a bearer token whenever the server listens beyond loopback."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from innermesh.server import ServerConfig, load_or_create_token


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("10.1.2.3", False),
        ("::", False),
    ],
)
def test_loopback_is_recognised(host: str, loopback: bool) -> None:
    """Only loopback addresses run without a token."""
    assert ServerConfig(listen_host=host).loopback is loopback


def test_no_token_on_loopback(tmp_path: Path) -> None:
    """On loopback and without --token-file, no token is required."""
    assert load_or_create_token(ServerConfig(listen_host="127.0.0.1", data_dir=tmp_path)) is None


def test_token_is_made_once_owner_only_beyond_loopback(tmp_path: Path) -> None:
    """Beyond loopback a token is generated into the data dir (mode 0600) and reused on restart."""
    cfg = ServerConfig(listen_host="0.0.0.0", data_dir=tmp_path)
    token = load_or_create_token(cfg)
    assert token and len(token) >= 32
    path = tmp_path / "admin-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_token(cfg) == token


def test_token_file_wins_and_must_not_be_empty(tmp_path: Path) -> None:
    """--token-file gives the token (also on loopback); an empty file is a clear error."""
    f = tmp_path / "t"
    f.write_text("abc\n")
    assert load_or_create_token(ServerConfig(data_dir=tmp_path, token_file=f)) == "abc"
    f.write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        load_or_create_token(ServerConfig(data_dir=tmp_path, token_file=f))


def test_identity_is_stable_for_one_data_dir(tmp_path: Path) -> None:
    """The leader identity depends on host and data dir, so a restarted server keeps its Lease."""
    assert ServerConfig(data_dir=tmp_path).identity == ServerConfig(data_dir=tmp_path).identity
    assert ServerConfig(data_dir=tmp_path / "a").identity != ServerConfig(data_dir=tmp_path / "b").identity
