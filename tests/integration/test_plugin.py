"""The pytest plugin, used exactly as a user would: a test file in a fresh
project (strict asyncio mode, no conftest) using only the two fixtures.

The user test is the one printed in docs/testing.md, so the docs cannot drift.
"""

import re
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

DOC = Path(__file__).resolve().parents[2] / "docs" / "testing.md"


def block_from_docs(name: str, language: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(rf"<!-- {name} -->\s*```{language}\n(.*?)```", text, re.S)
    assert match, f"docs/testing.md lost its <!-- {name} --> code block"
    return match.group(1)


def user_test_from_docs() -> str:
    return block_from_docs("user-test", "python")


#: The user's project has this plugin and pytest-asyncio/pytest-aiohttp (loaded from
#: their entry points, as there), not this project's own test tools: hypothesis and
#: xdist would be two thirds of each run's CPU and are no part of what is tested.
BASE = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:xdist", "-q")
#: pytest-asyncio's default mode, spelled out so a change of default cannot hide a failure.
STRICT = (*BASE, "-o", "asyncio_mode=strict")


def test_documented_user_test_passes_in_strict_mode_without_warnings(pytester: pytest.Pytester):
    pytester.makepyprojecttoml(block_from_docs("user-ini", "toml"))
    pytester.makepyfile(test_user=user_test_from_docs())
    result = pytester.runpytest_subprocess(*STRICT)
    result.assert_outcomes(passed=1, warnings=0)
    # pytest-asyncio prints its warning about an unset loop scope at start-up, on
    # stderr, outside pytest's warning count.
    assert "Warning" not in result.stderr.str()


def test_documented_fake_time_test_passes(pytester: pytest.Pytester):
    pytester.makepyprojecttoml(block_from_docs("user-ini", "toml"))
    pytester.makepyfile(test_clock=block_from_docs("user-test-clock", "python"))
    result = pytester.runpytest_subprocess(*STRICT)
    result.assert_outcomes(passed=1, warnings=0)


def test_async_tests_using_the_fixtures_need_no_marker_in_strict_mode(pytester: pytest.Pytester):
    pytester.makepyprojecttoml(block_from_docs("user-ini", "toml"))
    pytester.makepyfile(
        test_unmarked="""
import pytest
import pytest_asyncio


@pytest_asyncio.fixture
async def bot(ratatoskr_client):
    return await ratatoskr_client()


async def test_direct(ratatoskr_client):
    client = await ratatoskr_client()
    assert await client.enter_document("doc")


async def test_through_a_user_fixture(bot):
    assert await bot.enter_document("doc")


@pytest.mark.parametrize("doc", ["a", "b"])
async def test_parametrized(ratatoskr_client, doc):
    assert await (await ratatoskr_client()).enter_document(doc)


class TestInAClass:
    async def test_method(self, ratatoskr_relay):
        assert ratatoskr_relay.running


@pytest.mark.usefixtures("ratatoskr_relay")
async def test_usefixtures():
    pass


def test_sync_test_is_not_marked(ratatoskr_relay_config, request):
    assert request.node.get_closest_marker("asyncio") is None


async def test_other_async_tests_still_need_the_marker():
    pass
"""
    )
    result = pytester.runpytest_subprocess(*STRICT)
    result.assert_outcomes(passed=7, failed=1)
    result.stdout.fnmatch_lines(["*test_other_async_tests_still_need_the_marker*"])


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
    result = pytester.runpytest_subprocess(*BASE)
    result.assert_outcomes(passed=3)
