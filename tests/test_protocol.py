"""The control-message codec: lag beacons."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilient_ws import ProtocolViolation
from resilient_ws._core.protocol import (
    Beacon,
    Grant,
    Resume,
    ack_of,
    decode_beacon,
    decode_control,
    encode_ack,
    encode_beacon,
    grant_headers,
    parse_grant,
    parse_resume,
    resume_headers,
)


def test_beacon_round_trip() -> None:
    beacon = Beacon(lag=0.0123, max_lag=1.5, stall=45.25)
    decoded = decode_beacon(encode_beacon(beacon))
    assert decoded is not None
    assert decoded.lag == pytest.approx(0.0123)
    assert decoded.max_lag == pytest.approx(1.5)
    assert decoded.stall == pytest.approx(45.25)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"hello",
        b"rws1 ",
        b"rws1 lag=1 max=2",
        b"rws1 lag=x max=1 stall=0",
        b"rws1 lag=-1 max=1 stall=0",
        b"rws1 lag=nan max=1 stall=0",
        b"rws1 lag",
        b"rws1 " + b"x" * 200,
    ],
)
def test_malformed_beacons_are_ignored(payload: bytes) -> None:
    assert decode_beacon(payload) is None


@given(st.binary(max_size=200))
def test_decoder_never_raises(payload: bytes) -> None:
    beacon = decode_beacon(payload)
    assert beacon is None or min(beacon.lag, beacon.max_lag, beacon.stall) >= 0


@given(st.floats(0, 1e6), st.floats(0, 1e6), st.floats(0, 1e6))
def test_any_beacon_fits_a_control_frame(lag: float, max_lag: float, stall: float) -> None:
    data = encode_beacon(Beacon(lag, max_lag, stall))
    assert len(data) <= 125
    assert decode_beacon(data) is not None


# ---- control messages and handshake headers ----------------------------------------------


def test_ack_round_trip() -> None:
    fields = decode_control(encode_ack(12345))
    assert fields is not None
    assert ack_of(fields) == 12345


def test_ordinary_pongs_are_not_control_messages() -> None:
    assert decode_control(b"") is None
    assert decode_control(b"\x00\x01keepalive") is None


@pytest.mark.parametrize(
    "payload",
    [b"rws1 ", b"rws1 ack", b"rws1 =3", b"rws1 ack=x", b"rws1 ack=-1", b"rws1 ack=inf",
     b"rws1 " + b"a=1 " * 40,
     # float() would take these: the grammar is plain decimals (issue 11).
     b"rws1 ack=1_0", b"rws1 ack=+3", b"rws1 ack=3e0", b"rws1 lag=nan", b"rws1 lag=.5",
     b"rws1 lag=5.", b"rws1 ack=\xd9\xa3", b"rws1 ACK=3", b"rws1 a\xffk=3"],
)  # fmt: skip
def test_malformed_control_messages_raise_with_close_code_4001(payload: bytes) -> None:
    with pytest.raises(ProtocolViolation) as info:
        decode_control(payload)
    assert info.value.code == 4001


def test_fractional_ack_is_malformed() -> None:
    with pytest.raises(ProtocolViolation):
        ack_of({"ack": 1.5})


def test_unknown_fields_are_ignored() -> None:
    fields = decode_control(b"rws1 ack=3 future=7")
    assert fields is not None
    assert ack_of(fields) == 3


@given(st.binary(max_size=200))
def test_control_decoder_raises_only_control_errors(payload: bytes) -> None:
    try:
        fields = decode_control(payload)
    except ProtocolViolation:
        return
    assert fields is None or all(v >= 0 for v in fields.values())


@given(
    st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_]{0,5}", fullmatch=True),
        st.from_regex(r"[0-9]{1,6}(\.[0-9]{1,4})?", fullmatch=True),
        min_size=1,
        max_size=5,
    )
)
def test_control_decoder_takes_every_message_of_the_grammar(fields: dict[str, str]) -> None:
    payload = ("rws1 " + " ".join(f"{k}={v}" for k, v in fields.items())).encode()
    assert decode_control(payload) == {k: float(v) for k, v in fields.items()}


def test_resume_headers_round_trip() -> None:
    resume = Resume(session="s3ss-ion_1", token="t0k3n", received=41, replay_from=7)
    assert parse_resume(resume_headers(resume)) == resume
    assert parse_resume({}) is None


def test_grant_headers_round_trip() -> None:
    grant = Grant(session="abc", token="def", resumed=True, received=0, replay_from=1)
    assert parse_grant(grant_headers(grant)) == grant


@pytest.mark.parametrize(
    "change",
    [
        {"RWS-Token": None},
        {"RWS-Token": "has space"},
        {"RWS-Token": "x" * 65},
        {"RWS-Received": "-1"},
        {"RWS-Received": "1e3"},
        {"RWS-Received": "9" * 19},
        {"RWS-Replay-From": "0"},
    ],
)
def test_malformed_resume_headers_raise(change: dict[str, str | None]) -> None:
    headers = resume_headers(Resume("abc", "def", 1, 2))
    for name, value in change.items():
        if value is None:
            del headers[name]
        else:
            headers[name] = value
    with pytest.raises(ProtocolViolation):
        parse_resume(headers)


@pytest.mark.parametrize("resumed", [None, "yes", "2"])
def test_malformed_grant_raises(resumed: str | None) -> None:
    headers = grant_headers(Grant("abc", "def", False, 0, 1))
    if resumed is None:
        del headers["RWS-Resumed"]
    else:
        headers["RWS-Resumed"] = resumed
    with pytest.raises(ProtocolViolation):
        parse_grant(headers)
