"""Data-generation intent: does a prompt ask the model to manufacture training data?

Self-Instruct / Alpaca-style extraction does not ask for reasoning; it shows the model a few seed
tasks and asks for many *new, diverse* tasks with high-quality responses, "for training a language
model". Each cue below is one ingredient of that request; a prompt's score combines the cues it
contains (noisy-OR), so one generic word ("generate", "examples") is weak evidence and the full
recipe is strong. Only the prompt's edges are read (where the instructions go).
"""

from __future__ import annotations

import re

import numpy as np

from distillguard.detect.reasoning import _edges

_N = r"(?:a (?:set|list|batch) of )?(?:\d+|a few|several|many|some|ten|twenty|fifty|hundreds? of)"
_ITEM = r"(?:tasks?|instructions?|examples?|questions?|prompts?|problems?|exercises?|samples?|demonstrations?)"
#: (weight, keywords, pattern): the weight is the cue's evidence on its own; the pattern is tried
#: only when one of the keywords occurs (a substring test is much cheaper than a regex search)
CUES: list[tuple[float, tuple[str, ...], re.Pattern[str]]] = [
    # the stated purpose: data for training or fine-tuning a model
    (0.85, ("train", "tun", "distil"),
     re.compile(r"\b(?:for|to)\s+(?:train|training|fine-?tun\w*|distil\w*)\b[^.\n]{0,40}"
                r"\b(?:model|llm|assistant|chatbot|classifier|dataset)\b")),
    # naming the data is weaker: people also ask *about* training sets
    (0.45, ("train", "tuning", "synthetic"),
     re.compile(r"\b(?:training|fine-?tuning|synthetic|instruction[- ]tuning)\s+(?:data|dataset|corpus|examples?|set)\b")),
    (0.4, ("pair",),
     re.compile(r"\b(?:instruction|question|prompt)[- ](?:response|answer|completion|output)\s+pairs?\b")),
    # the recipe: many new, diverse items, each with a (detailed) response
    (0.35, ("come up", "generat", "creat", "write", "produc", "invent", "brainstorm"),
     re.compile(r"\b(?:come up with|generate|create|write|produce|invent|brainstorm)\s+" + _N
                + r"\s+(?:new|novel|more|additional|different|diverse|unique|original)?\s*[\w-]*\s*" + _ITEM + r"\b")),
    (0.3, ("divers", "varied", "different", "novel"),
     re.compile(r"\b(?:diverse|varied|different|novel)\b[^.\n]{0,20}\b" + _ITEM + r"\b")),
    (0.3, ("each", "every"),
     re.compile(r"\b(?:each|every)\s+(?:new\s+)?(?:task|instruction|example|question|item)\b[^.\n]{0,40}"
                r"\b(?:response|answer|solution|output)\b")),
    (0.2, ("here are",),
     re.compile(r"\bhere are (?:some |a few )?(?:examples?|samples?|seed tasks?)\b")),
]


def score_one(text: str) -> float:
    t = _edges(text).lower()
    miss = 1.0
    for w, keys, pat in CUES:
        if any(k in t for k in keys) and pat.search(t):
            miss *= 1.0 - w
    return 1.0 - miss


class DataGenScorer:
    """P-like score in [0, 1] that a prompt asks for model training data (see module doc)."""

    def score(self, texts: list[str]) -> np.ndarray:
        return np.array([score_one(t) for t in texts], dtype=float)
