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
    ("Windsurf", "windsurf"), ("mcp-inspector", "unknown"), ("", "unknown"),
    ("claude-in-cursor", "claude"),  # first match wins
    (None, None),  # no name sent: NULL, as the original stores it
])
def test_client_platform__first_match_case_insensitive(
    name: str | None, platform: str | None
) -> None:
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
    with pytest.raises(ValueError, match="object cannot be written as JSON"):
        SchemaVersionEvent(ts=1, proxy="p", upstream_url="u", method="m", payload={"x": object()})
    with pytest.raises(ValueError, match="nested deeper"):
        deep: list[object] = []
        for _ in range(2_000):
            deep = [deep]
        SchemaVersionEvent(ts=1, proxy="p", upstream_url="u", method="m", payload=deep)


@pytest.mark.parametrize(("value", "text"), [
    # The facts file's own examples of serde_json's output.
    ({"b": 1, "a": [1e-7, 1e22, 0.5, 1.0]}, '{"a":[1e-7,1e22,0.5,1.0],"b":1}'),
    ({"description": "café ☕ 日本"}, '{"description":"café ☕ 日本"}'),
    ({"s": 'quote " back \\ tab \t nl \n bell \x07'},
     '{"s":"quote \\" back \\\\ tab \\t nl \\n bell \\u0007"}'),
    ({"n": [float("nan"), float("inf"), -0.0, 1e-5, 1e-6, 1e16, 1e15, 2**64, -(2**63)]},
     '{"n":[null,null,-0.0,0.00001,1e-6,1e16,1000000000000000.0,1.8446744073709552e19,'
     '-9223372036854775808]}'),
    ({"z": None, "y": True, "x": False, "é": {}, "e": []},
     '{"e":[],"x":false,"y":true,"z":null,"é":{}}'),
])
def test_schema_payload_value__is_written_as_serde_json_writes_it(value: object, text: str) -> None:
    event = SchemaVersionEvent(ts=1, proxy="p", upstream_url="u", method="tools/list",
                               payload=value)
    assert event.payload == text
    assert event.content_hash == hashlib.sha256(text.encode("utf-8")).hexdigest()


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
