"""Review actions shared by the admin API and the CLI: exempt, ban, unban, verify, unverify.

Review state lives in the account's flags (``banned`` / ``exempt`` / ``verified``, each
``{"at": ts, "by": who, "note": text}``) so it survives restarts and reaches a server in another
process (its RiskBoard re-reads the flags every ``policy.board_refresh_s`` seconds). Ban and
exempt exclude each other: setting one clears the other.
"""

from __future__ import annotations

import time
from typing import Any

from distillguard.policy.state import RiskBoard, review_from_flags
from distillguard.store.base import Account, Store, StoreError

ACTIONS = ("exempt", "unexempt", "ban", "unban", "verify", "unverify")


def review_flags(action: str, by: str | None = None, note: str | None = None) -> dict[str, Any]:
    """The flags change an action makes (None deletes a flag, as ``Store.update_account`` merges)."""
    stamp = {"at": time.time(), "by": by or "admin", "note": note or ""}
    if action == "exempt":
        return {"exempt": stamp, "banned": None}
    if action == "unexempt":
        return {"exempt": None}
    if action == "ban":
        return {"banned": stamp, "exempt": None}
    if action == "unban":
        return {"banned": None}
    if action == "verify":
        return {"verified": stamp}
    if action == "unverify":
        return {"verified": None}
    raise ValueError(f"unknown review action {action!r}; expected one of {', '.join(ACTIONS)}")


def apply_review(store: Store, name: str, action: str, *, by: str | None = None, note: str | None = None,
                 board: RiskBoard | None = None, verified_tier: str | None = None) -> Account:
    """Persist the review in the account's flags (and show it to ``board`` at once). ``verify``
    also moves the account to ``verified_tier`` when one is given. Raises StoreError for an
    unknown account, ValueError for an unknown action."""
    flags = review_flags(action, by, note)
    if store.get_account(name) is None:
        raise StoreError(f"unknown account {name!r}")
    tier = verified_tier if action == "verify" else None
    acc = store.update_account(name, tier=tier, flags=flags)
    if board is not None:
        board.set_review(name, review_from_flags(acc.flags))
    return acc
