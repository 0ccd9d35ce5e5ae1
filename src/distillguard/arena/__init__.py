"""The arena: a real distillation attack against the shielded model, end to end.

    distillguard arena run --scenario quick|full|ci|FILE.toml [--out DIR]

scenario.py (what a scenario file says) → personas.py (plans: who sends what, when) →
server.py (`distillguard serve` subprocess in arena mode) → client.py (official `openai` clients on
a simulated clock) → attacker.py (student training and radioactivity audit) → metrics.py (numbers
from the exchange log) → report.py (report.html + PNGs). runner.py runs them in that order.
"""
