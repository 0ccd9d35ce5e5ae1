"""The shielded API: an OpenAI-compatible gateway in front of one engine.

    app = create_app(settings)                  # distillguard.gateway.app
    distillguard serve --config FILE            # the same app under uvicorn, graceful SIGTERM

Routes: POST /v1/chat/completions, POST /v1/completions (JSON or SSE), GET /v1/models[/{id}],
GET /metrics (Prometheus), GET /health, and /admin/* behind the admin token (admin.py).

Modules, in the order a request meets them:
  middleware.py     pure-ASGI body-size limit (413) and request metrics
  auth.py           key -> (key record, account), cached in memory (no DB read per request)
  schemas.py        request validation (400 naming the parameter)
  policy.py         the hook: app.state.policy.decide(ctx) -> Decision (allow / throttle /
                    degrade / verify / block, logits processors, limit scale)
  limits.py         RPM/TPM per key and per account; tokens reserved before, settled after
  openai_routes.py  the request path top to bottom, responses, SSE, the exchange event
  errors.py         OpenAI's error JSON
  metrics.py        Prometheus registry of the app's own
  stub.py           a canned upstream for benchmarks and tests (never a fallback model)
"""
