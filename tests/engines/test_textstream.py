"""Stop-string scanning and incremental detokenizing, piece by piece."""

from __future__ import annotations

import pytest

from distillguard.engines.textstream import (
    ByteDetokenizer,
    DiffDetokenizer,
    StopScanner,
)


def scan(pieces: list[str], stops: list[str]) -> tuple[list[str], bool]:
    s = StopScanner(stops)
    out = [s.feed(p) for p in pieces]
    if not s.stopped:
        out.append(s.flush())
    return out, s.stopped


def test_stop_across_pieces_is_cut_and_never_emitted() -> None:
    out, stopped = scan(["Hello wo", "rld. E", "ND more"], ["END"])
    assert "".join(out) == "Hello world. " and stopped
    out, stopped = scan(["ab", "<|", "im", "_end|>", "zz"], ["<|im_end|>"])
    assert out == ["ab", "", "", "", ""] and stopped


def test_held_prefix_is_released_when_it_turns_out_not_to_be_a_stop() -> None:
    out, stopped = scan(["a E", "N", "x"], ["END"])
    assert out == ["a ", "", "ENx", ""] and not stopped


def test_earliest_of_several_stops_wins() -> None:
    out, _ = scan(["one two three"], ["three", "two"])
    assert "".join(out) == "one "


def test_no_stops_emits_everything_at_once() -> None:
    out, stopped = scan(["a", "b"], [])
    assert out == ["a", "b", ""] and not stopped


def test_flush_after_stop_emits_nothing() -> None:
    s = StopScanner(["x"])
    assert s.feed("axb") == "a" and s.stopped and s.flush() == "" and s.feed("more") == ""


@pytest.mark.parametrize("text", ["naïve café", "日本語", "emoji 🙂!"])
def test_byte_detokenizer_joins_split_characters(text: str) -> None:
    data = text.encode()
    pieces = [data[i : i + 1] for i in range(len(data))]  # one byte per "token"
    d = ByteDetokenizer(lambda i: pieces[i])
    out = [d.add(i) for i in range(len(pieces))] + [d.flush()]
    assert "".join(out) == text and "\ufffd" not in "".join(out)


def test_diff_detokenizer_waits_for_complete_characters() -> None:
    data = "a🙂b".encode()

    def decode(ids: list[int]) -> str:
        return bytes(data[i] for i in ids).decode("utf-8", errors="replace")

    d = DiffDetokenizer(decode)
    out = [d.add(i) for i in range(len(data))]
    assert out == ["a", "", "", "", "🙂", "b"] and d.flush() == ""
