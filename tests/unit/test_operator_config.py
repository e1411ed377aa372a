"""The operator's settings: admin token and webhooks in RelayConfig and the
TOML file (secrets from files, never shown)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ratatoskr_client.errors import ConfigError
from ratatoskr_client.server import RelayConfig, load_config


def test_secrets_are_never_shown() -> None:
    config = RelayConfig(
        admin_token="adm-1n-secret",
        webhook_url="http://127.0.0.1:9/hooks",
        webhook_secret="hook-secret",
    )
    assert "adm-1n-secret" not in repr(config) and "hook-secret" not in repr(config)
    assert "http://127.0.0.1:9/hooks" in repr(config)


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"admin_token": ""}, "admin_token must be a non-empty string"),
        ({"admin_token": "has space"}, "admin_token must be"),
        ({"webhook_url": "ftp://x", "webhook_secret": "hook-s3cret"}, "webhook_url must be an"),
        ({"webhook_url": "http://x/"}, "webhook_url needs webhook_secret"),
        ({"webhook_secret": "bad secret"}, "webhook_secret must be"),
    ],
)
def test_bad_settings_are_refused_without_showing_them(
    settings: dict[str, str], problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem) as refused:
        RelayConfig(**settings)
    for key, value in settings.items():
        if key != "webhook_url" and value:
            assert value not in str(refused.value)


def test_secret_files_are_read_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "admin").write_text("  admin-from-file\n")
    (tmp_path / "secrets" / "hook").write_text("hook-from-file\n")
    config_file = tmp_path / "relay.toml"
    config_file.write_text(
        'admin_token_file = "secrets/admin"\n'
        'webhook_url = "https://hooks.example.com/r"\n'
        'webhook_secret_file = "secrets/hook"\n'
    )
    config = load_config(config_file)
    assert config.admin_token == "admin-from-file"
    assert config.webhook_secret == "hook-from-file"
    assert load_config(config_file, admin_token="override").admin_token == "override"


def test_secret_file_problems(tmp_path: Path) -> None:
    config_file = tmp_path / "relay.toml"
    config_file.write_text('admin_token_file = "missing"\n')
    with pytest.raises(ConfigError, match="admin_token_file: cannot read"):
        load_config(config_file)
    config_file.write_text('admin_token = "a"\nadmin_token_file = "missing"\n')
    with pytest.raises(ConfigError, match="not both"):
        load_config(config_file)
    config_file.write_text("admin_token_file = 3\n")
    with pytest.raises(ConfigError, match="must be a file path"):
        load_config(config_file)
