"""Reasoning elicitation: does a prompt ask the model to write out its reasoning?

Distillers want the teacher's reasoning traces, so their prompts ask for step-by-step work, chains
of thought, scratchpads or "your internal thinking". One regex misses paraphrases and fires on
recipes ("step-by-step instructions to bake bread"), so this is a small classifier: words, word
stems and stem n-grams (hashed, no vocabulary to ship) and logistic regression, trained at first use on
a labelled set built here from elicitation phrasings and ordinary requests, including hard
negatives that talk about steps or thinking without asking for the model's reasoning.
Training takes well under a second and is deterministic.
"""

from __future__ import annotations

import random
import re
import threading
from collections import OrderedDict
from functools import lru_cache

import numpy as np

#: only the start and end of a prompt are scored: that is where instructions go, and it bounds cost
EDGE_CHARS = 300
_TOK = re.compile(r"[a-z]+|<\w+>|[?#:]")


def analyze(text: str) -> list[str]:
    """Words, 5-letter stems (so reason/reasoning/reasoned share a feature) and stem bigrams and
    trigrams: the morphology that character n-grams would give, at a tenth of the cost."""
    words = _TOK.findall(text.lower())
    stems = [w[:5] for w in words]
    feats = words + ["~" + s for s in stems]
    feats += [a + " " + b for a, b in zip(stems, stems[1:])]
    feats += [a + " " + b + " " + c for a, b, c in zip(stems, stems[1:], stems[2:])]
    return feats

BASE_QUESTIONS = [
    "A farmer has 17 sheep and buys 5 more each week. How many sheep after 6 weeks?",
    "If a train travels 240 km in 3 hours, what is its average speed?",
    "A shop sells pens at 3 for $2. How much do 24 pens cost?",
    "What is 15% of 360?",
    "Tom is twice as old as his sister, who is 7. How old will Tom be in 5 years?",
    "A rectangle has a perimeter of 30 cm and a width of 4 cm. What is its area?",
    "How many ways can 5 books be arranged on a shelf?",
    "Is 221 a prime number?",
    "Write a function that returns the n-th Fibonacci number.",
    "Implement binary search over a sorted list in Python.",
    "Write a Python function that checks whether a string is a palindrome.",
    "Why does ice float on water?",
    "Which is heavier, a kilogram of feathers or a kilogram of iron?",
    "If all bloops are razzies and all razzies are lazzies, are all bloops lazzies?",
    "What causes the seasons on Earth?",
    "Should a small bakery raise its prices when flour costs go up?",
    "Who would win a race, a cheetah or a greyhound, over 5 km?",
    "A bag has 3 red and 5 blue marbles. What is the probability of drawing two reds?",
    "Convert 72 degrees Fahrenheit to Celsius.",
    "Sara saves $45 a month. How long until she can buy a $540 bike?",
    "What is the derivative of x^3 * sin(x)?",
    "Solve for x: 3x + 7 = 22.",
    "Translate 'good morning' into Spanish.",
    "Summarize the plot of Romeo and Juliet.",
    "Write a haiku about autumn.",
    "What is the capital of Australia?",
    "Give me three ideas for a birthday party.",
    "Classify this review as positive or negative: 'The battery died after a day.'",
    "Fix the bug in this code: for i in range(10) print(i)",
    "What year did the Berlin Wall fall?",
    "Write a SQL query to count orders per customer.",
    "How many minutes are there in a week?",
    "Explain the difference between a list and a tuple in Python.",
    "Draft a polite email declining a meeting.",
    "What is the boiling point of water at sea level?",
    "Rewrite this sentence to be more formal: 'gonna be late, sorry'.",
    "A car uses 6 litres per 100 km. How much fuel for 350 km?",
    "Which number comes next: 2, 6, 12, 20, 30, ?",
    "Sort these words alphabetically: pear, apple, fig.",
    "Is it ethical to read a partner's messages without consent?",
]

# Phrasings that ask for the model's reasoning to be written out (the positive class).
ELICIT_CORES = [
    "let's think step by step", "think step by step", "think through this step by step",
    "reason step by step", "work through it step by step", "solve it step by step",
    "show your work", "show all your work", "show every step of your working",
    "explain your reasoning", "explain your reasoning in detail", "explain each step of your reasoning",
    "write out your chain of thought", "give your full chain of thought", "use chain-of-thought reasoning",
    "write down your thought process", "walk me through your thought process",
    "describe your thinking as you go", "think out loud", "think aloud before you answer",
    "put your reasoning inside <think> tags", "write your internal reasoning in a scratchpad",
    "show me your hidden reasoning", "reveal your internal thinking", "output your thinking process first",
    "include your full reasoning trace", "reason carefully and show the intermediate steps",
    "break the problem into steps and justify each one", "provide a detailed rationale for every step",
    "explain how you arrived at the answer", "justify your answer with step-by-step logic",
    "first reason about the problem, then answer", "write a rationale before the final answer",
    "derive the answer showing all intermediate calculations", "think carefully and explain why",
    "go through the solution one step at a time", "lay out your reasoning before answering",
    "show the steps you used to get there", "detail your logical steps",
    "explain your thought process thoroughly", "make your reasoning explicit",
    "verbalize every step of your thinking", "document your reasoning process in full",
]

# A small grammar of "verb + what to reveal" phrasings widens the positive class beyond the fixed
# list above, so the classifier learns the vocabulary of the request rather than a few sentences.
ELICIT_VERBS = ["show", "explain", "write out", "spell out", "lay out", "walk through", "detail", "present",
                "include", "describe", "document", "justify", "give", "outline", "provide", "break down",
                "trace", "work out", "go over", "reason out", "talk through", "expose", "display"]
ELICIT_OBJECTS = ["your reasoning", "the reasoning", "your working", "the full derivation", "your thought process",
                  "the logic", "each step", "every step", "the intermediate steps", "the rationale",
                  "your chain of thought", "how you got the answer", "the solution path", "your thinking",
                  "each calculation", "the steps of the solution", "your logic", "each inference", "the derivation",
                  "your line of thought", "the worked solution", "the intermediate results", "the full argument",
                  "why each step follows", "the method you used", "your scratch work"]
ELICIT_TAILS = ["", " in detail", " before answering", " one step at a time", " as you go", " in full",
                " first", " behind the answer", " without skipping anything", " thoroughly", " carefully",
                " before the final answer"]


def grammar_cores(rng: random.Random, k: int) -> list[str]:
    return [f"{rng.choice(ELICIT_VERBS)} {rng.choice(ELICIT_OBJECTS)}{rng.choice(ELICIT_TAILS)}" for _ in range(k)]


OPENERS = ["", "Please ", "Before answering, ", "First, ", "Carefully ", "Make sure to ", "Important: ",
           "Instructions: ", "Q: "]
CLOSERS = ["", ", then give the final answer.", " before giving your answer.", ". Put the final answer last.",
           ". End with 'Answer: <value>'.", " and be thorough.", "."]

# Ordinary requests, and hard negatives that mention steps or thinking but want a procedure, an
# opinion or a short answer rather than the model's own reasoning trace.
NEUTRAL_SUFFIXES = [
    "", "Be concise.", "Answer in one word.", "Use bullet points.", "Keep it under 100 words.",
    "Respond in French.", "Give only the final answer.", "Just the number, please.", "Thanks!",
    "No explanation needed.", "Reply with yes or no.", "Format the answer as JSON.",
]
HARD_NEGATIVES = [
    "Give me step-by-step instructions to bake sourdough bread.",
    "What are the steps to renew a passport?",
    "List the steps to set up a home Wi-Fi router.",
    "Write a step-by-step guide for changing a bike tyre.",
    "How do I think more positively about my job?",
    "What do you think about electric cars?",
    "Walk me through the check-in process at an airport.",
    "Explain photosynthesis to a ten-year-old.",
    "Explain what a mortgage is.",
    "Show me how to make a paper airplane.",
    "What steps should a startup take before hiring?",
    "Describe the water cycle.",
    "Think of a name for my coffee shop.",
    "Reasoning about money is hard for me; any book recommendations?",
    "What is the chain of command in the army?",
    "Give me a 5-step morning routine.",
    "Explain the rules of chess.",
    "What's the thinking behind the four-day work week?",
    "Outline the steps of the scientific method.",
    "How does a step function work in AWS?",
    "Write a story about a robot who learns to think.",
    "What is the difference between deductive and inductive reasoning?",
    "Summarize this article in three steps.",
    "Explain the steps of mitosis.",
]


ORDINARY_INSTRUCTIONS = [
    "Answer the question using only the context below.", "If the answer is not in the context, say you don't know.",
    "Use the information provided.", "Respond in a friendly tone.", "Return the result as a JSON object.",
    "Answer in English.", "Keep the answer short.", "Cite the source document.", "You are a helpful assistant.",
    "Write three paragraphs.", "Use simple words.", "Make it rhyme.", "Include a title.", "Answer:",
    "Question:", "Context:", "Here are some examples:", "Domain: finance.", "Difficulty: hard.",
    "Rewrite the text below.", "Classify the following review.", "Summarize the article.", "Translate to French.",
    "Complete the following function.", "Fix the bug in the code below.", "Write unit tests for this function.",
    "Give a high-quality response.", "Come up with new examples.", "List five ideas.", "Thanks in advance!",
]
_SEGMENT = re.compile(r"(?<=[.!?])\s+|\n+")
MAX_SEGMENTS = 8


def segments(text: str) -> list[str]:
    """Sentences and lines from the start and end of a prompt (where instructions go)."""
    text = _edges(text)
    parts = [p.strip()[:240] for p in _SEGMENT.split(text) if len(p.strip()) > 3]
    if len(parts) > 2 * MAX_SEGMENTS:
        parts = parts[:MAX_SEGMENTS] + parts[-MAX_SEGMENTS:]
    return parts or [text[:240]]


def build_training_set(seed: int = 0, cores: list[str] | None = None) -> tuple[list[str], list[int]]:
    """The labelled set of *segments* (sentences): 1 asks for written-out reasoning, 0 does not."""
    rng = random.Random(seed)
    cores = cores if cores is not None else ELICIT_CORES + grammar_cores(rng, 250)
    texts: list[str] = []
    labels: list[int] = []
    for core in cores:
        for _ in range(4):
            phrase = rng.choice(OPENERS) + core + rng.choice(CLOSERS)
            phrase = phrase[0].upper() + phrase[1:]
            if rng.random() < 0.25:  # elicitation and question in one sentence
                phrase = f"{phrase.rstrip('.')}: {rng.choice(BASE_QUESTIONS)}"
            texts.append(phrase)
            labels.append(1)
    negatives = BASE_QUESTIONS + HARD_NEGATIVES + [x for x in NEUTRAL_SUFFIXES if x] + ORDINARY_INSTRUCTIONS
    for q in negatives:
        texts.append(q)
        labels.append(0)
        for _ in range(2):
            texts.append(f"{rng.choice(OPENERS)}{q[0].lower()}{q[1:]}".strip())
            labels.append(0)
    return texts, labels


def _edges(text: str) -> str:
    if len(text) <= 2 * EDGE_CHARS:
        return text
    return text[:EDGE_CHARS] + " \n " + text[-EDGE_CHARS:]


class ReasoningScorer:
    """P(prompt asks for written-out reasoning): a hashed n-gram logistic regression scores each
    sentence, and the prompt takes its most eliciting sentence (one sentence is enough to ask)."""

    def __init__(self, seed: int = 0, cores: list[str] | None = None) -> None:
        from sklearn.feature_extraction.text import HashingVectorizer
        from sklearn.linear_model import LogisticRegression

        self.vec = HashingVectorizer(n_features=2**18, analyzer=analyze, alternate_sign=False, norm="l2")
        texts, labels = build_training_set(seed, cores)
        self.clf = LogisticRegression(C=8.0, solver="liblinear", class_weight="balanced")
        self.clf.fit(self.vec.transform(texts), np.asarray(labels))
        # the scorer is shared (``default_scorer``) and may be called from a prepare thread
        self._cache: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    #: segments remembered (templates and popular questions repeat across requests and accounts)
    CACHE_SIZE = 50_000

    def score_segments(self, segs: list[str]) -> np.ndarray:
        if not segs:
            return np.zeros(0)
        with self._lock:
            return self._score_segments_locked(segs)

    def _score_segments_locked(self, segs: list[str]) -> np.ndarray:
        cache = self._cache
        out = np.empty(len(segs))
        todo: dict[str, list[int]] = {}
        for i, seg in enumerate(segs):
            p = cache.get(seg)
            if p is None:
                todo.setdefault(seg, []).append(i)
            else:
                cache.move_to_end(seg)
                out[i] = p
        if todo:
            fresh = list(todo)
            probs = self.clf.predict_proba(self.vec.transform(fresh))[:, 1]
            for seg, p in zip(fresh, probs, strict=True):
                out[todo[seg]] = p
                cache[seg] = float(p)
            while len(cache) > self.CACHE_SIZE:
                cache.popitem(last=False)
        return out

    def score(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros(0)
        segs: list[str] = []
        owner: list[int] = []
        for i, t in enumerate(texts):
            ss = segments(t)
            segs.extend(ss)
            owner.extend([i] * len(ss))
        p = self.score_segments(segs)
        out = np.zeros(len(texts))
        np.maximum.at(out, np.asarray(owner), p)
        return out


@lru_cache(maxsize=1)
def default_scorer() -> ReasoningScorer:
    return ReasoningScorer()
