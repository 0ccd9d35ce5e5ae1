"""Turning a stream of token ids into text pieces, cut at stop strings.

Local engines produce one token at a time. Two things make "just decode each token" wrong:
a character may span several tokens (UTF-8 bytes split by byte-level BPE), and a stop string
may span several tokens, so text that could be the start of a stop string must be held back
until we know. Both are handled here, once, for every local engine.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Sequence


class StopScanner:
    """Feed text as it is generated; get back what is safe to emit and whether a stop hit."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.text = ""  # everything accepted so far (emitted + held back), before any cut
        self.emitted = 0  # characters of ``text`` already handed out
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Add ``piece``; return the newly emittable text (maybe empty)."""
        if self.stopped:
            return ""
        start = max(0, self.emitted - max((len(s) for s in self.stops), default=0))
        self.text += piece
        cut = self._first_stop(start)
        if cut is not None:
            self.stopped = True
            out = self.text[self.emitted : cut]
            self.text = self.text[:cut]
            self.emitted = cut
            return out
        safe = len(self.text) - self._held_suffix()
        out = self.text[self.emitted : safe]
        self.emitted = max(self.emitted, safe)
        return out

    def flush(self) -> str:
        """Generation ended without a stop: release whatever was held back."""
        if self.stopped:
            return ""
        out = self.text[self.emitted :]
        self.emitted = len(self.text)
        return out

    def _first_stop(self, start: int) -> int | None:
        cut = None
        for s in self.stops:
            i = self.text.find(s, start)
            if i != -1 and (cut is None or i < cut):
                cut = i
        return cut

    def _held_suffix(self) -> int:
        # Longest suffix of the text that is a proper prefix of some stop string.
        best = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:k]):
                    best = k
                    break
        return best


class ByteDetokenizer:
    """For tokenizers that give each token's exact bytes (llama.cpp)."""

    def __init__(self, token_bytes: Callable[[int], bytes]):
        self._token_bytes = token_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, token_id: int) -> str:
        return self._decoder.decode(self._token_bytes(token_id))

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


class DiffDetokenizer:
    """For tokenizers that only decode id sequences (transformers).

    Decodes a short window of recent ids and emits the growth, waiting while the window ends
    in an incomplete character (U+FFFD), the same scheme TGI and vLLM use.
    """

    def __init__(self, decode: Callable[[list[int]], str]):
        self._decode = decode
        self._ids: list[int] = []
        self._prefix = 0  # window start
        self._read = 0  # ids before this are already emitted

    def add(self, token_id: int) -> str:
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            out = new_text[len(prefix_text) :]
            self._prefix, self._read = self._read, len(self._ids)
            return out
        return ""

    def flush(self) -> str:
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return new_text[len(prefix_text) :]
