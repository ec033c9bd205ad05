"""The client event protocol (rtbus.websocket.events): bytes and text in, events or a sentence out."""

from __future__ import annotations

import pytest

from rtbus.websocket.events import (ClientEvent, InvalidEvent, SubscribeRequest, is_probe,
                                    parse_event, parse_inactivity, parse_subscribe)


@pytest.mark.parametrize("message", [
    '{"event_name": "subscribe", "data": {"channels": ["a"], "last": 3}}',
    b'{"event_name": "subscribe", "data": {"channels": ["a"], "last": 3}}',   # a BINARY message
])
def test_an_event_is_parsed_from_text_or_binary(message):
    assert parse_event(message) == ClientEvent("subscribe", {"channels": ["a"], "last": 3})


def test_missing_data_is_none_and_unknown_keys_are_ignored():
    assert parse_event('{"event_name": "update_presence", "extra": 1}') == ClientEvent("update_presence", None)


@pytest.mark.parametrize("message, sentence", [
    ("not json", "invalid JSON data"),
    (b"\xff\xfe", "invalid JSON data"),
    ("", "invalid JSON data"),
    ("[1, 2]", "an event is a JSON object"),
    ('"subscribe"', "an event is a JSON object"),
    ("null", "an event is a JSON object"),
    ('{"data": {}}', "key 'event_name' is missing"),
    ('{"event_name": 7}', "'event_name' must be a string"),
    ('{"event_name": null}', "'event_name' must be a string"),
    ('{"event_name": ["subscribe"]}', "'event_name' must be a string"),
])
def test_malformed_messages_raise_invalid_event_with_a_sentence(message, sentence):
    with pytest.raises(InvalidEvent, match=sentence):
        parse_event(message)


def test_invalid_event_is_a_value_error():
    # The connection layer catches channel errors (ValueError) and these alike: both keep the connection.
    assert issubclass(InvalidEvent, ValueError)


def test_only_the_single_zero_byte_binary_is_the_probe():
    assert is_probe(b"\x00")
    assert not is_probe("\x00")            # as TEXT it is a (bad) event, not the probe
    assert not is_probe(b"\x00\x00")
    assert not is_probe(b"")


@pytest.mark.parametrize("data, expected", [
    ({"channels": ["a", "b"], "last": 0}, SubscribeRequest(["a", "b"], 0)),
    ({"channels": [], "last": 10**12}, SubscribeRequest([], 10**12)),
    ({"channels": "left to the channel rules", "last": 5, "more": 1}, SubscribeRequest("left to the channel rules", 5)),
])
def test_subscribe_data(data, expected):
    assert parse_subscribe(data) == expected


@pytest.mark.parametrize("data, sentence", [
    (None, "subscribe data must be an object"),
    (["a"], "subscribe data must be an object"),
    ({"last": 0}, "no 'channels'"),
    ({"channels": []}, "no 'last'"),
    ({"channels": [], "last": -1}, "'last' must be a non-negative integer, got -1"),
    ({"channels": [], "last": "3"}, "'last' must be a non-negative integer, got '3'"),
    ({"channels": [], "last": 1.5}, "'last' must be a non-negative integer, got 1.5"),
    ({"channels": [], "last": True}, "'last' must be a non-negative integer, got True"),
    ({"channels": [], "last": None}, "'last' must be a non-negative integer, got None"),
])
def test_bad_subscribe_data_is_refused(data, sentence):
    with pytest.raises(InvalidEvent, match=sentence.replace(".", r"\.")):
        parse_subscribe(data)


def test_the_refusal_shows_at_most_40_characters_of_a_hostile_value():
    with pytest.raises(InvalidEvent) as info:
        parse_subscribe({"channels": [], "last": "x" * 10_000})
    assert len(str(info.value)) < 100


@pytest.mark.parametrize("data, period", [
    ({"inactivity_period": 0}, 0), ({"inactivity_period": 1500}, 1500),
    ({"inactivity_period": 1999.9}, 1999), ({"inactivity_period": 10**15}, 10**15),
])
def test_inactivity_period_in_milliseconds(data, period):
    assert parse_inactivity(data) == period


@pytest.mark.parametrize("data", [None, [], {}, {"inactivity_period": -1}, {"inactivity_period": "soon"},
                                  {"inactivity_period": False}, {"inactivity_period": None}])
def test_bad_inactivity_periods_are_refused(data):
    with pytest.raises(InvalidEvent, match="inactivity_period"):
        parse_inactivity(data)
