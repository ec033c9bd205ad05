"""Channel anchoring, encoding and validation (no database)."""

from __future__ import annotations

import pytest

from rtbus.bus import channels
from rtbus.bus.channels import InvalidChannel, channel_with_db, decode, encode, encode_channel


@pytest.mark.parametrize("channel, anchored", [
    ("broadcast", ["mydb", "broadcast"]),
    (("res.partner", 7), ["mydb", "res.partner", 7]),
    (["res.partner", 7], ["mydb", "res.partner", 7]),
    (("res.partner", 7, "presence"), ["mydb", "res.partner", 7, "presence"]),
    (["mydb", "broadcast"], ["mydb", "broadcast"]),
    (["mydb", "res.partner", 7], ["mydb", "res.partner", 7]),
    (("mydb", "res.partner", 7, "presence"), ["mydb", "res.partner", 7, "presence"]),
])
def test_channel_with_db_shapes(channel, anchored):
    assert channel_with_db("mydb", channel) == anchored


@pytest.mark.parametrize("channel", [
    7, None, {"a": 1}, (), ("res.partner",), ("res.partner", 7.0), ("res.partner", True),
    ("res.partner", 7, 8), ["mydb", "m", 7, "sub", "extra"], ["mydb", "m", "7"],
])
def test_channel_with_db_rejects_unknown_shapes(channel):
    with pytest.raises(InvalidChannel):
        channel_with_db("mydb", channel)


def test_anchored_channel_of_another_database_is_refused():
    with pytest.raises(InvalidChannel, match="otherdb"):
        channel_with_db("mydb", ["otherdb", "broadcast"])


def test_encoding_is_compact_json_like_odoo():
    assert encode("mydb", "broadcast") == '["mydb","broadcast"]'
    assert encode("mydb", ("res.partner", 7)) == '["mydb","res.partner",7]'
    assert encode("mydb", ("res.partner", 7, "presence")) == '["mydb","res.partner",7,"presence"]'
    # UTF-8, not \u escapes: what PostgreSQL's JSON output writes too.
    assert encode("mydb", "café") == '["mydb","café"]'


def test_decode_round_trip_and_errors():
    assert decode('["mydb","res.partner",7]') == ["mydb", "res.partner", 7]
    assert channels.database_of('["db2","broadcast"]') == "db2"
    assert channels.canonical('["mydb", "broadcast"]') == '["mydb","broadcast"]'
    for bad in ("not json", '"broadcast"', '["res.partner",7]', "[]", '{"a":1}'):
        with pytest.raises(InvalidChannel):
            decode(bad)


def test_length_is_bounded():
    longest = "x" * (channels.MAX_ENCODED_CHANNEL_BYTES - len(encode_channel(["db", ""])))
    assert len(encode("db", longest)) == channels.MAX_ENCODED_CHANNEL_BYTES
    with pytest.raises(InvalidChannel, match="bytes"):
        encode("db", longest + "x")
    with pytest.raises(InvalidChannel, match="bytes"):
        decode(encode_channel(["db", longest + "x"]))
    # Counted in UTF-8 bytes, not characters.
    with pytest.raises(InvalidChannel):
        encode("db", "é" * (channels.MAX_ENCODED_CHANNEL_BYTES // 2))
