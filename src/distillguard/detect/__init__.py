"""Distillation detection: behavioural fingerprints, prompt-embedding topics, account linking.

API for the server (import from the submodules; this package imports nothing heavy):

    from distillguard.detect.online import build_detector, DetectionWorker, store_flags_callback
    detector = build_detector(settings.detect)            # MiniLM embedder, calibrated threshold file
    worker = DetectionWorker(detector, bus.subscribe("detect"), on_update=store_flags_callback(store))
    worker.start(); ...; worker.stop()
    with worker.lock: detector.verdict("acme"); detector.clusters()

Offline: ``distillguard detect replay`` / ``distillguard detect calibrate`` (see ``cli.py``).
"""
