"""Where the web server may listen without a token: loopback, or beyond it only when the operator says so."""

from __future__ import annotations

import logging

import pytest

from driftline.streams.app.web import FAUST_VIEWS_OFF, web_options
from driftline.streams.errors import ConfigError


def test_beyond_loopback_without_a_token_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match="DRIFTLINE_WEB_TOKEN"):
        web_options("0.0.0.0", None, None, None)  # noqa: S104


def test_loopback_needs_no_token_and_faust_views_are_off() -> None:
    options = web_options("127.0.0.1", None, None, None)
    assert options == FAUST_VIEWS_OFF and all(v is False for v in FAUST_VIEWS_OFF.values())


def test_open_on_purpose_is_allowed_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    assert "web_application_options" not in web_options("0.0.0.0", None, None, None, open_ok=True)  # noqa: S104
    assert "without a token (web_open)" in caplog.text


def test_a_token_installs_the_check() -> None:
    options = web_options("0.0.0.0", "t" * 32, None, None)  # noqa: S104
    assert len(options["web_application_options"]["middlewares"]) == 1
