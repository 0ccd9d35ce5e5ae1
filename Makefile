# Two entry points; each does all the set-up it needs first (idempotent, see scripts/setup.sh).
.PHONY: setup demo serve test bench-setup

setup:
	bash scripts/setup.sh

# The arena's quick scenario: the real gateway, model, detector, policy, watermark, an attack,
# the attacker's student and its radioactivity audit; ends by printing where the report is.
demo: setup
	.venv/bin/distillguard arena run --scenario quick --out runs/arena-quick

serve: setup
	.venv/bin/distillguard serve

test: setup
	.venv/bin/python -m pytest -q

# Benchmarks that compare against LiteLLM install it in a separate environment (.bench-venv),
# so its pinned dependencies never touch the product's.
bench-setup:
	bash bench/setup_litellm.sh
