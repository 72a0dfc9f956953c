"""The control-message codec: lag beacons."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilient_ws._protocol import Beacon, decode_beacon, encode_beacon


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
