"""Shared test configuration.

The ``ratatoskr_relay`` / ``ratatoskr_client`` fixtures come from the package's
own pytest plugin (``ratatoskr_client.testing``), loaded through its entry point
exactly as in a user's project.
"""

import logging

import pytest


@pytest.fixture(autouse=True)
def _no_errors_logged_by_default(caplog: pytest.LogCaptureFixture) -> None:
    # Capture at DEBUG so a failing test shows the protocol conversation.
    caplog.set_level(logging.DEBUG, logger="ratatoskr_client")
