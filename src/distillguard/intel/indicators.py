"""Imported threat indicators, in the form the policy matches per request: three hash sets.

What is matched (everything else in a bundle is kept for the record but not matched):

* ``[ipv4-addr:value = '…']`` / ``[ipv6-addr:value = '…']``: the client address;
* ``[network-traffic:extensions.'http-request-ext'.request_header.'User-Agent' = '…']``;
* ``[x-distillguard-prompt-skeleton:hashes.'SHA-256' = '…']``: a prompt-template fingerprint,
  the SHA-256 of the first or last ``k`` tokens of the prompt's *skeleton*
  (``distillguard.detect.templates.skeleton_tokens``: numbers, quotes and long content words
  masked), so a template matches whatever question is poured into it and no prompt text is shared.

Storage: one JSON file (``policy.indicators.file``), written by ``distillguard intel import`` and
re-read by the server when its mtime changes. Matching costs two set lookups plus, only when
template fingerprints are loaded, one skeleton pass over the last user message and a few hashes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: token counts of the head/tail windows that are fingerprinted
FINGERPRINT_SIZES = (8, 12)
#: a window needs this many literal word tokens (not masks, not punctuation) to be a fingerprint:
#: "<w> <n> ?" says nothing about a template
MIN_LITERAL_WORDS = 4
#: characters skeletonised at each end of a long prompt
WINDOW_CHARS = 400

_STIX_STR = r"'((?:[^'\\]|\\.)*)'"
_IP_RE = re.compile(r"\[(ipv4-addr|ipv6-addr):value\s*=\s*" + _STIX_STR + r"\]")
_UA_RE = re.compile(r"\[network-traffic:extensions\.'http-request-ext'\.request_header\.'User-Agent'\s*=\s*" + _STIX_STR + r"\]")
_TPL_RE = re.compile(r"\[x-distillguard-prompt-skeleton:hashes\.'SHA-256'\s*=\s*'([0-9a-fA-F]{64})'\]")


class IndicatorError(ValueError):
    """A bundle or indicator file is invalid; the message says what to fix."""


def stix_quote(value: str) -> str:
    """A STIX pattern string literal: backslash and quote escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _unquote(body: str) -> str:
    return re.sub(r"\\(.)", r"\1", body)


def ip_pattern(ip: str) -> str:
    kind = "ipv6-addr" if ":" in ip else "ipv4-addr"
    return f"[{kind}:value = {stix_quote(ip)}]"


def user_agent_pattern(ua: str) -> str:
    return f"[network-traffic:extensions.'http-request-ext'.request_header.'User-Agent' = {stix_quote(ua)}]"


def template_pattern(digest: str) -> str:
    return f"[x-distillguard-prompt-skeleton:hashes.'SHA-256' = '{digest}']"


def _literal_words(tokens: list[str]) -> int:
    return sum(1 for t in tokens if t.isalpha() and len(t) >= 2)


def fingerprint_windows(text: str) -> list[tuple[str, int, str]]:
    """(scope, k, sha256) for the head and tail windows of the prompt's skeleton that carry enough
    literal template words. The hash input is ``"{scope}{k}:" + tokens joined by spaces``."""
    from distillguard.detect.templates import skeleton_tokens

    # only the ends matter: skeletonise at most WINDOW_CHARS from each end (long prompts stay cheap)
    if len(text) <= 2 * WINDOW_CHARS:
        head = tail = skeleton_tokens(text)
    else:
        head, tail = skeleton_tokens(text[:WINDOW_CHARS]), skeleton_tokens(text[-WINDOW_CHARS:])
    out = []
    for k in FINGERPRINT_SIZES:
        if len(head) < k or len(tail) < k:
            continue
        for scope, part in (("head", head[:k]), ("tail", tail[-k:])):
            if _literal_words(part) < MIN_LITERAL_WORDS:
                continue
            digest = hashlib.sha256(f"{scope}{k}:{' '.join(part)}".encode()).hexdigest()
            out.append((scope, k, digest))
    return out


@dataclass(frozen=True)
class Match:
    kind: str  # "ip" | "user_agent" | "template"
    indicator_id: str


@dataclass
class IndicatorSet:
    """value -> indicator id, per kind; plus the raw records for listing."""

    ips: dict[str, str] = field(default_factory=dict)
    user_agents: dict[str, str] = field(default_factory=dict)
    templates: dict[str, str] = field(default_factory=dict)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ips) + len(self.user_agents) + len(self.templates)

    def match(self, ip: str | None, user_agent: str | None, text: str | None) -> list[Match]:
        out: list[Match] = []
        if ip and self.ips:
            iid = self.ips.get(ip)
            if iid:
                out.append(Match("ip", iid))
        if user_agent and self.user_agents:
            iid = self.user_agents.get(user_agent)
            if iid:
                out.append(Match("user_agent", iid))
        if text and self.templates:
            for _scope, _k, digest in fingerprint_windows(text):
                iid = self.templates.get(digest)
                if iid:
                    out.append(Match("template", iid))
                    break
        return out

    # ------------------------------------------------------------------ building
    def add_indicator(self, indicator_id: str, pattern: str, record: dict[str, Any]) -> int:
        """Index the comparisons we understand in ``pattern``; returns how many were indexed."""
        n = 0
        for _kind, body in _IP_RE.findall(pattern):
            self.ips[_unquote(body)] = indicator_id
            n += 1
        for body in _UA_RE.findall(pattern):
            self.user_agents[_unquote(body)] = indicator_id
            n += 1
        for digest in _TPL_RE.findall(pattern):
            self.templates[digest.lower()] = indicator_id
            n += 1
        if n:
            self.records[indicator_id] = record
        return n

    def to_json(self) -> dict[str, Any]:
        return {"format": "distillguard-indicators/1", "indicators": sorted(self.records.values(), key=lambda r: r["id"])}

    @classmethod
    def from_records(cls, records: list[dict[str, Any]]) -> IndicatorSet:
        s = cls()
        for r in records:
            s.add_indicator(r["id"], r["pattern"], r)
        return s


def load_indicators(path: Path | str) -> IndicatorSet:
    """The indicator file; a missing file is an empty set."""
    p = Path(path)
    if not p.is_file():
        return IndicatorSet()
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise IndicatorError(f"indicator file {p} is not valid JSON ({exc}); re-run `distillguard intel import`") from exc
    if not isinstance(data, dict) or not isinstance(data.get("indicators"), list):
        raise IndicatorError(f"indicator file {p} has no 'indicators' list; re-run `distillguard intel import`")
    try:
        return IndicatorSet.from_records(data["indicators"])
    except (KeyError, TypeError) as exc:
        raise IndicatorError(f"indicator file {p} has a malformed record ({exc}); re-run `distillguard intel import`") from exc


def save_indicators(indicators: IndicatorSet, path: Path | str) -> None:
    """Write atomically (a server may be re-reading it)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=p.name, dir=p.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(indicators.to_json(), fh, indent=1, ensure_ascii=False)
    os.replace(tmp, p)
