"""The Odoo addon's Odoo-free half (odoo_addon/rtbus_bridge/protocol.py) against rtbus's
own end of the contract: the same signatures, and the channel shapes rtbus encodes."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

from rtbus.auth import client
from rtbus.auth.grants import parse_answer
from rtbus.session import SID_PREFIX_LENGTH, NOTIFY_CHANNEL

_PATH = pathlib.Path(__file__).parents[2] / "odoo_addon" / "rtbus_bridge" / "protocol.py"


@pytest.fixture(scope="module")
def protocol():
    spec = importlib.util.spec_from_file_location("rtbus_bridge_protocol", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Records:
    """What the addon needs of an Odoo recordset: its model name and ids."""

    def __init__(self, name, *ids):
        self._name = name
        self.ids = list(ids)


def test_both_ends_sign_alike(protocol):
    body = b'{"db":"x","channels":[]}'
    sent = client.signature(b"k", "1700000000", body)
    assert protocol.signature(b"k", "1700000000", body) == sent
    assert protocol.is_signed(b"k", "1700000000", sent, body, now=1700000010)
    assert not protocol.is_signed(b"k", "1700000000", sent, body, now=1700001000)
    assert not protocol.is_signed(b"", "1700000000", sent, body, now=1700000010)
    assert (protocol.TIMESTAMP_HEADER, protocol.SIGNATURE_HEADER) == (client.TIMESTAMP_HEADER,
                                                                      client.SIGNATURE_HEADER)


def test_the_notify_names_what_rtbus_listens_for(protocol):
    assert protocol.NOTIFY_CHANNEL == NOTIFY_CHANNEL
    assert protocol.SID_PREFIX_LENGTH == SID_PREFIX_LENGTH
    assert protocol.sid_prefix("x" * 84) == "x" * SID_PREFIX_LENGTH


def test_odoo_channels_become_what_rtbus_encodes(protocol):
    odoo_channels = ["broadcast", Records("res.groups", 1), Records("res.groups", 2, 3),
                     (Records("res.partner", 7), "presence"), Records("res.partner"), object()]
    shapes = [shape for channel in odoo_channels for shape in (protocol.unanchored(channel) or [])]
    assert shapes == ["broadcast", ["res.groups", 1], ["res.groups", 2], ["res.groups", 3],
                      ["res.partner", 7, "presence"]]
    grant = parse_answer("db", {"valid": True, "uid": 2, "partner_id": 7, "channels": shapes})
    assert '["db","res.partner",7,"presence"]' in grant.channels
    assert '["db","res.groups",3]' in grant.channels
