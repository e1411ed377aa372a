"""The pytest plugin, used exactly as a user would: a test file in a fresh
project (strict asyncio mode, no conftest) using only the two fixtures.

The user test is the one printed in docs/testing.md, so the docs cannot drift.
"""

import re
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

DOC = Path(__file__).resolve().parents[2] / "docs" / "testing.md"


def user_test_from_docs() -> str:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(r"<!-- user-test -->\s*```python\n(.*?)```", text, re.S)
    assert match, "docs/testing.md lost its <!-- user-test --> code block"
    return match.group(1)


def test_documented_user_test_passes_with_only_the_two_fixtures(pytester: pytest.Pytester):
    pytester.makepyfile(test_user=user_test_from_docs())
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=1)


def test_factory_closes_every_client_and_marker_configures_the_relay(pytester: pytest.Pytester):
    pytester.makepyfile(
        test_more="""
import asyncio
import pytest
from ratatoskr_client import DocumentNotFound, PermissionDenied

made = []

@pytest.mark.asyncio
@pytest.mark.ratatoskr_relay(documents=[{"id": "only-doc"}], presence_ttl=0.5)
async def test_marker(ratatoskr_relay, ratatoskr_client):
    assert ratatoskr_relay.config.presence_ttl == 0.5
    assert not ratatoskr_relay.config.open
    client = await ratatoskr_client()
    made.append(client)
    with pytest.raises(DocumentNotFound):
        await client.enter_document("other-doc")
    with pytest.raises(PermissionDenied):
        await client.enter_document("only-doc")  # no owner, no ACL: nobody may read
    await client.enter_document(client.sidecar("only-doc", "chat"))  # eph: is public

def test_every_client_was_closed():
    assert made and all(c.connection_state.value == "closed" for c in made)

@pytest.mark.asyncio
async def test_open_mode_by_default(ratatoskr_relay, ratatoskr_client):
    assert ratatoskr_relay.config.open
    a = await ratatoskr_client()
    b = await ratatoskr_client(connect=False, heartbeat_interval=0.1)
    await b.connect()
    await a.enter_document("anything")
    await b.enter_document("anything")
    assert len(await a.wait_for_presence("anything", lambda ps: len(ps) == 2, timeout=5)) == 2
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=3)
