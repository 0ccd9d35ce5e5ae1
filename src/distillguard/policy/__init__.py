"""Risk-driven policy: what the gateway does with each request given detection risk, clusters,
review state and imported threat indicators (``engine.RiskPolicy``), what a degraded response
loses (``degrade``), the per-account state it reads (``state.RiskBoard``), review (admin routes,
CLI) and the wiring helper (``wiring.build_policy``)."""
