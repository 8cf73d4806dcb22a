"""Events: construction rules (derived platform, computed hash, status as text)."""

from __future__ import annotations

import hashlib
import inspect

import pytest

from mcpr_store import (
    RequestEvent,
    RequestStatus,
    SchemaVersionEvent,
    SessionClosed,
    SessionEvent,
    platform_for_client,
)


@pytest.mark.parametrize(("name", "platform"), [
    ("claude-ai", "claude"), ("Claude Code", "claude"), ("cursor-vscode", "cursor"),
    ("ChatGPT", "chatgpt"), ("openai-mcp", "chatgpt"), ("GitHub Copilot", "vscode"),
    ("Visual Studio Code", "unknown"), ("vscode", "vscode"), ("VS-Code Insiders", "vscode"),
    ("Windsurf", "windsurf"), ("mcp-inspector", "unknown"), (None, "unknown"), ("", "unknown"),
    ("claude-in-cursor", "claude"),  # first match wins
])
def test_client_platform__first_match_case_insensitive(name: str | None, platform: str) -> None:
    assert platform_for_client(name) == platform
    assert SessionEvent(session_id="s", proxy="p", started_at=1,
                        client_name=name).client_platform == platform


def test_session_event__explicit_platform_is_kept() -> None:
    event = SessionEvent(session_id="s", proxy="p", started_at=1, client_name="claude",
                         client_platform="custom")
    assert event.client_platform == "custom"


def test_request_event__optional_fields_default_to_none_and_status_is_text() -> None:
    event = RequestEvent(request_id="r", ts=1, proxy="p", method="ping",
                         status=RequestStatus.TIMEOUT)
    assert event.status == "timeout" and type(event.status) is str
    assert event.session_id is event.tool is event.error_msg is event.bytes_in is None
    assert RequestEvent(request_id="r", ts=1, proxy="p", status="error").status == "error"


def test_schema_event__hash_and_payload() -> None:
    text = '{"tools":[]}'
    event = SchemaVersionEvent(ts=1, proxy="p", upstream_url="u", method="tools/list",
                               payload=text)
    assert event.content_hash == hashlib.sha256(text.encode()).hexdigest()
    from_dict = SchemaVersionEvent(ts=1, proxy="p", upstream_url="u", method="tools/list",
                                   payload={"tools": []})
    assert from_dict.payload == text and from_dict.content_hash == event.content_hash
    given = SchemaVersionEvent(ts=1, proxy="p", upstream_url="u", method="m", payload="{}",
                               content_hash="abc")
    assert given.content_hash == "abc"
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        SchemaVersionEvent(ts=1, proxy="p", upstream_url="u", method="m", payload={"x": object()})


def test_session_closed__fields() -> None:
    assert SessionClosed(session_id="s", ended_at=5) == SessionClosed("s", 5)


@pytest.mark.parametrize("cls", [RequestEvent, SessionEvent, SchemaVersionEvent])
def test_event_constructor__matches_its_fields(cls: type) -> None:
    """Each ``__new__`` repeats its fields; they must not drift apart."""
    params = list(inspect.signature(cls.__new__).parameters)[1:]
    assert params == list(cls._fields)  # type: ignore[attr-defined]
    for name in cls._fields:  # type: ignore[attr-defined]
        default = inspect.signature(cls.__new__).parameters[name].default
        field_default = cls._field_defaults.get(name, inspect.Parameter.empty)  # type: ignore[attr-defined]
        if name not in ("status", "content_hash", "client_platform"):
            assert default == field_default, name


def test_events__are_immutable() -> None:
    event = RequestEvent(request_id="r", ts=1, proxy="p")
    with pytest.raises(AttributeError):
        event.tool = "x"  # type: ignore[misc]
