from client.sse import SSEMessage, parse_sse


def test_messages_are_split_on_blank_lines_with_their_fields() -> None:
    lines = ["id: 3", "event: step", 'data: {"id":3}', "", ": keepalive", "", "data: a", "data: b", ""]
    assert list(parse_sse(lines)) == [
        SSEMessage(event="step", data='{"id":3}', id="3"),
        SSEMessage(comment=True),
        SSEMessage(event="message", data="a\nb", id="3"),
    ]


def test_a_message_cut_off_before_its_blank_line_is_dropped() -> None:
    assert list(parse_sse(["id: 1", "data: {}", "", "id: 2", "data: {"])) == [SSEMessage(data="{}", id="1")]


def test_a_message_without_data_is_not_dispatched_but_its_id_carries_on() -> None:
    lines = ["id: 7", "event: step", "", "retry: 100", "", "data: x", ""]
    assert list(parse_sse(lines)) == [SSEMessage(data="x", id="7")]


def test_one_space_after_the_colon_is_dropped_and_unknown_fields_are_ignored() -> None:
    lines = ["data:x", "data:  y", "colour: red", "event:step", ""]
    assert list(parse_sse(lines)) == [SSEMessage(event="step", data="x\n y")]
