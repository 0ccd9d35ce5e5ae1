"""Watermarks that prove where text came from, and whether a model was trained on it.

    hashing.py     keyed uniforms u(window, token): BLAKE2b(secret) PRF + SplitMix64, no global RNG
    schemes.py     keyed green list (KGW, self-seeding, entropy gate) and Gumbel-max; processors
    detect.py      exact p-values (binomial / gamma tails), dedup of repeated tuples, pooled tests
    keys.py        key ring from a secret file or env var; first key current, others still detected
    processors.py  WatermarkService: processors_for(account, tier, ...) and detect_text(text)
    audit.py       radioactivity: open-weight reading mode and black-box audits with controls
    cli.py         `distillguard watermark detect | audit | new-key`
"""
