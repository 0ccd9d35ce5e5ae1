"""Scenario files and persona plans (fast: no gateway)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from distillguard.arena.personas import builtin_corpora, plan_scenario
from distillguard.arena.scenario import ScenarioError, builtin_names, load_scenario


def test_builtin_scenarios_load_and_plan() -> None:
    assert {"ci", "quick", "full"} <= set(builtin_names())
    c = builtin_corpora()
    assert (len(c.general), len(c.maths), len(c.coding), len(c.instructions)) == (150, 100, 60, 60)
    for name in ("ci", "quick"):
        sc = load_scenario(name)
        plans = plan_scenario(sc, c)
        assert any(p.label == 1 for p in plans) and any(p.label == 0 for p in plans)
        hydra = [p for p in plans if p.group]
        assert len(hydra) == next(s.hydra for s in sc.personas if s.hydra)
        # the plan is deterministic for a seed
        again = plan_scenario(sc, c)
        assert [(p.name, [x.ts for x in p.conversations]) for p in plans] == \
               [(p.name, [x.ts for x in p.conversations]) for p in again]


def test_attacker_elicits_reasoning_and_benign_chatter_follows_up() -> None:
    sc = load_scenario("quick")
    plans = {p.name: p for p in plan_scenario(sc, builtin_corpora())}
    sweep = plans["maths-sweep-00"]
    spec = next(x for x in sc.personas if x.name == "maths-sweep")
    assert sweep.planned_requests == spec.requests >= 30 and sweep.collect
    assert all("step" in c.turns[0].lower() or "reason" in c.turns[0].lower() or "think" in c.turns[0].lower()
               for c in sweep.conversations)
    chat = [p for n, p in plans.items() if n.startswith("chatter")]
    assert any(len(c.turns) > 1 for p in chat for c in p.conversations)


def test_bad_scenarios_say_what_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="no built-in scenario"):
        load_scenario("nope")
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[[personas]]\nname = "a"\nkind = "searcher"\n')
    with pytest.raises(ScenarioError, match="benign and one attacker"):
        load_scenario(str(bad))
    bad.write_text("name = ")
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load_scenario(str(bad))


def test_cli_bad_scenario_is_one_line() -> None:
    r = subprocess.run([sys.executable, "-m", "distillguard.cli", "arena", "run", "--scenario", "nope"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: no built-in scenario 'nope'") and "Traceback" not in r.stderr
