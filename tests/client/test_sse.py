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
