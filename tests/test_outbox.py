from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient_ws import SendQueue
from resilient_ws._core.outbox import Message, Outbox, payload_size


def filled(policy: SendQueue, *messages: Message) -> Outbox:
    outbox = Outbox(policy)
    for message in messages:
        outbox.append(message, payload_size(message))
    return outbox


@pytest.mark.parametrize(
    ("message", "size"),
    [("", 0), ("abc", 3), ("é", 2), ("€", 3), ("😀", 4), (b"\x00\xff", 2)],
)
def test_payload_size_is_utf8_length(message: Message, size: int) -> None:
    assert payload_size(message) == size


def test_bounded_by_count() -> None:
    outbox = filled(SendQueue(max_messages=2, max_bytes=100), "a", "b")
    assert len(outbox) == 2
    assert not outbox.has_room(1)
    assert not outbox.has_room(0)


def test_bounded_by_bytes() -> None:
    outbox = filled(SendQueue(max_messages=100, max_bytes=10), b"12345678")
    assert outbox.has_room(2)
    assert not outbox.has_room(3)


def test_non_ascii_text_counts_utf8_bytes() -> None:
    outbox = filled(SendQueue(max_bytes=10), "€€€")  # 9 bytes, 3 characters
    assert outbox.size == 9
    assert outbox.has_room(1)
    assert not outbox.has_room(2)


def test_check_size_refuses_a_message_that_could_never_fit() -> None:
    outbox = Outbox(SendQueue(max_bytes=10))
    outbox.check_size(10)
    with pytest.raises(ValueError, match="11 bytes"):
        outbox.check_size(11)


def test_make_room_drops_oldest_and_reports_them() -> None:
    outbox = filled(SendQueue(max_messages=10, max_bytes=10), "aaa", "bb", "cccc")
    assert outbox.make_room(5) == (2, 5)
    assert outbox.size == 4
    assert outbox.clear() == ["cccc"]


def test_make_room_by_count() -> None:
    outbox = filled(SendQueue(max_messages=2, max_bytes=100), "a", "b")
    assert outbox.make_room(1) == (1, 1)
    assert outbox.clear() == ["b"]


def test_make_room_drops_nothing_when_it_fits() -> None:
    outbox = filled(SendQueue(max_messages=10, max_bytes=10), "a", "b")
    assert outbox.make_room(8) == (0, 0)
    assert len(outbox) == 2


def test_appendleft_puts_a_message_first_even_past_the_bounds() -> None:
    outbox = filled(SendQueue(max_messages=2, max_bytes=100), "second", "third")
    outbox.appendleft("first", 5)
    assert len(outbox) == 3
    assert outbox.size == 16
    assert outbox.popleft() == ("first", 5)


def test_clear_returns_oldest_first_and_empties() -> None:
    outbox = filled(SendQueue(), "a", b"b", "c")
    assert outbox.clear() == ["a", b"b", "c"]
    assert len(outbox) == 0
    assert outbox.size == 0


def test_popleft_on_empty_raises() -> None:
    with pytest.raises(IndexError):
        Outbox(SendQueue()).popleft()


messages = st.one_of(st.text(max_size=8), st.binary(max_size=8))
operations = st.lists(
    st.one_of(
        st.tuples(st.just("append"), messages),
        st.tuples(st.just("appendleft"), messages),
        st.tuples(st.just("popleft"), st.none()),
        st.tuples(st.just("make_room"), st.integers(min_value=0, max_value=40)),
    ),
    max_size=40,
)


@settings(database=None)
@given(
    operations=operations,
    max_messages=st.integers(min_value=1, max_value=6),
    max_bytes=st.integers(min_value=1, max_value=40),
)
def test_operations_keep_size_and_fifo_order(
    operations: list[tuple[str, object]], max_messages: int, max_bytes: int
) -> None:
    outbox = Outbox(SendQueue(max_messages=max_messages, max_bytes=max_bytes))
    model: list[tuple[Message, int]] = []  # oldest first
    for name, argument in operations:
        if name == "append":
            assert isinstance(argument, (str, bytes))
            outbox.append(argument, payload_size(argument))
            model.append((argument, payload_size(argument)))
        elif name == "appendleft":
            assert isinstance(argument, (str, bytes))
            outbox.appendleft(argument, payload_size(argument))
            model.insert(0, (argument, payload_size(argument)))
        elif name == "popleft" and model:
            assert outbox.popleft() == model.pop(0)
        elif name == "make_room":
            assert isinstance(argument, int)
            count, dropped = outbox.make_room(argument)
            assert dropped == sum(size for _, size in model[:count])
            del model[:count]
            assert outbox.has_room(argument) or not model
        assert len(outbox) == len(model)
        assert outbox.size == sum(size for _, size in model)
    assert outbox.clear() == [message for message, _ in model]
    assert outbox.size == 0
