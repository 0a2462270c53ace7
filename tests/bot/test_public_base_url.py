"""PUBLIC_BASE_URL must be https (http only for this machine), checked at start-up (SPEC §7)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bot.settings import ConfigurationError, load_settings
from services.delivery.email_message import _check_unsubscribe_url
from tests.bot.test_settings import clean_env


@pytest.mark.parametrize(("given", "kept"), [
    ("https://campaigns.example.org", "https://campaigns.example.org"),
    ("https://campaigns.example.org:8443/bot/", "https://campaigns.example.org:8443/bot/"),
    ("HTTPS://Campaigns.Example.org", "https://campaigns.example.org"),
    ("http://localhost:3000", "http://localhost:3000"),
    ("http://127.0.0.1:4010", "http://127.0.0.1:4010"),
    ("http://[::1]:3000", "http://[::1]:3000"),
])
def test_https_or_a_local_http_url_is_accepted(given: str, kept: str) -> None:
    settings = load_settings(public_base_url=given)
    assert settings.public_base_url == kept
    # What the email sender will check at send time passes too.
    assert _check_unsubscribe_url(settings.link_base_url + "/unsubscribe/abc")


@pytest.mark.parametrize("given", [
    "http://campaigns.example.org", "http://127.0.0.1.example.org", "http://10.0.0.5:3000",
    "ftp://campaigns.example.org", "campaigns.example.org", "https://",
    "https://user:pw@campaigns.example.org", "https://campaigns.example.org/?x=1",
    "https://campaigns.example.org/a b", "https://campaigns.example.org/#top",
])
def test_anything_else_is_refused_naming_the_variable(given: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        load_settings(public_base_url=given)
    [problem] = info.value.problems
    assert problem.variable.startswith("PUBLIC_BASE_URL")
    assert "https://" in str(problem)


@pytest.mark.parametrize("url", ["http://campaigns.example.org", "https://user@x.org"])
def test_run_exits_2_with_one_line(tmp_path: Path, url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bot.cli", "run"], cwd=tmp_path,
        env=clean_env(PUBLIC_BASE_URL=url, DATABASE_URL=f"sqlite:///{tmp_path}/x.db"),
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "PUBLIC_BASE_URL" in lines[0] and "https://" in lines[0] and "fix" in lines[0]
