"""Verifiable instruction following, IFEval style (Zhou et al., 2023): a writing request plus constraints a
program can check, scored by IFEval's own checkers (the 'ifeval' verifier, through the if-verifiable package).

Each prompt is one request (a kind of writing and a topic, from the two lists below, written for this
project) and a compatible set of IFEval instruction types with their arguments, phrased the way IFEval's
checkers describe them. Everything is drawn from the task seed, so the same settings give the same prompts.

What is held out. Requests are cut into a training and a held-out pool by a seeded hash (share
`heldout_share`), and so are the constraint combinations of two or more instructions (the sorted tuple of
their ids). Training prompts pair training requests with training combinations; held-out prompts, and the
`fresh` ones drawn each iteration, pair held-out requests with held-out combinations. Single instructions
are shared by both sides, so every instruction type can be trained on; no held-out request and no held-out
combination ever is. A problem's `question` is its request: the constraint sentences recur across prompts by
design, as an answer-format line does, and must not count as overlap in the contamination audit.

Which instruction types: 22 of IFEval's 25. Left out: length_constraints:number_sentences and
change_case:capital_word_frequency, whose checkers need nltk's punkt data (not installed, and nothing is
downloaded at run time), and detectable_format:constrained_response, which answers a yes/no question (these
requests are writing tasks). combination:repeat_prompt is in: it is given its prompt as an argument.

Contradictions are ruled out by if-verifiable's conflict table plus a few of ours (OUR_CONFLICTS), and by a
check that words and letters a prompt limits are not forced by another of its constraints.

Settings (`task.params`, all optional): min_constraints (default 1) and max_constraints (default 2, see
DEFAULT_MAX) per prompt, drawn evenly; instructions (the allowed ids, default all 22); heldout_share (0.25).
`task.one_shot` is ignored: a worked example does not fit open-ended writing. Completions need room: set
generate/eval max_new_tokens to about 192 (even then three in four of the embedded model's answers hit the cap).
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import itertools
import random
import re
from dataclasses import dataclass, field
from typing import Any

from selfplay.errors import UserError
from selfplay.records import Problem
from selfplay.tasks.base import Split, problem_id

KINDS = [
    "Write a short note to a neighbour about {}.",
    "Write a short blog post about {}.",
    "Write a letter to a friend about {}.",
    "Write a short story about {}.",
    "Write a poem about {}.",
    "Write a diary entry about {}.",
    "Write a short speech for a school assembly about {}.",
    "Write a news report for a local paper about {}.",
    "Write an email to a colleague about {}.",
    "Write a song about {}.",
    "Write a limerick about {}.",
    "Write a short essay about {}.",
    "Write a post for a community notice board about {}.",
    "Write a riddle about {}.",
    "Write a social media post about {}.",
    "Write a short dialogue between two friends about {}.",
    "Write a funny anecdote about {}.",
    "Write a text message to your sister about {}.",
    "Write a short radio announcement about {}.",
    "Write a thank-you card that mentions {}.",
    "Write a short report for a club newsletter about {}.",
    "Write a bedtime story about {}.",
    "Write a short review of a film about {}.",
    "Write a motivational message about {}.",
]
TOPICS = [
    "a lost cat", "the first day at a new school", "learning to ride a bicycle", "a rainy weekend at the seaside",
    "a broken washing machine", "the new town library", "growing tomatoes on a balcony", "a power cut during a storm",
    "a surprise birthday party", "moving to a new city", "a noisy party next door", "missing the last train home",
    "a visit to your grandparents", "a football match that ended in a draw", "saving money for a holiday",
    "an old tree that fell in the park", "learning to bake bread", "a trip to the dentist", "the school science fair",
    "a dog that learned a new trick", "a village bake sale", "the first snow of winter",
    "a parcel that arrived two weeks late", "a hiking trip in the mountains", "an old bicycle found in the attic",
    "a new coffee shop on the corner", "a wallet returned by a stranger", "a road closed for repairs",
    "volunteering at an animal shelter", "cleaning up a beach", "a chess club for beginners",
    "the night sky in summer", "a picnic ruined by wasps", "a neighbour who plays the trumpet",
    "the village summer fair", "a lost umbrella", "a tomato plant that grew too tall", "the first bus of the morning",
    "a bird that nests on a balcony", "a kitchen that smells of burnt toast",
]
REQUESTS = [kind.format(topic) for kind in KINDS for topic in TOPICS]  # no commas: see repeat_prompt + no_comma

# Words a prompt asks for (keywords, first words) and words it limits (forbidden, "less than" counts).
KEYWORDS = ["lantern", "river", "harbor", "meadow", "compass", "pepper", "velvet", "orchard", "blanket", "thunder",
            "ribbon", "mirror", "garden", "candle", "silver", "pencil", "window", "bridge", "forest", "kettle",
            "ladder", "marble", "island", "feather", "tunnel", "basket", "button", "cotton", "puddle", "rocket"]
COMMON = ["very", "really", "just", "good", "great", "nice", "because", "always", "thing", "maybe"]
FIRST_WORDS = ["today", "first", "however", "meanwhile", "finally", "luckily", "sadly", "overall", "yesterday",
               "suddenly"]
END_PHRASES = ["Is there anything else I can help with?", "Any other questions?", "Let me know what you think.",
               "That is all for now.", "See you soon."]
LANGUAGES = {"fr": "French", "es": "Spanish", "de": "German", "it": "Italian", "pt": "Portuguese"}

# How each instruction is asked for; {fields} come from its kwargs (see _fields).
TEMPLATES: dict[str, tuple[str, ...]] = {
    "keywords:existence": ("Include the keywords {kw1} and {kw2} in the response.",
                           "Make sure the words {kw1} and {kw2} appear in your response."),
    "keywords:frequency": ("In your response, the word {keyword} should appear {relation} {frequency} times.",),
    "keywords:forbidden_words": ("Do not include the words {fw1} or {fw2} in the response.",
                                 "Do not use the words {fw1} or {fw2} anywhere in your answer."),
    "keywords:letter_frequency": ("In your response, the letter {letter} should appear {let_relation} "
                                  "{let_frequency} times.",),
    "language:response_language": ("Your ENTIRE response should be in {language_name} language, no other language "
                                   "is allowed.", "Please respond only in {language_name}; no other language is "
                                   "allowed."),
    "length_constraints:number_paragraphs": ("There should be {num_paragraphs} paragraphs. Paragraphs are separated "
                                             "with the markdown divider: ***",),
    "length_constraints:number_words": ("Answer with {relation} {num_words} words.",
                                        "Your response should contain {relation} {num_words} words."),
    "length_constraints:nth_paragraph_first_word": (
        "There should be {num_paragraphs} paragraphs. Paragraphs and only paragraphs are separated with each other "
        "by two new lines. Paragraph {nth_paragraph} must start with the word {first_word}.",),
    "detectable_content:number_placeholders": (
        "The response must contain at least {num_placeholders} placeholders represented by square brackets, such "
        "as [address].",),
    "detectable_content:postscript": ("At the end of your response, please explicitly add a postscript starting "
                                      "with {postscript_marker}",),
    "detectable_format:number_bullet_lists": (
        "Your answer must contain exactly {num_bullets} bullet points. Use the markdown bullet points such as:\n"
        "* This is point 1.\n* This is point 2",),
    "detectable_format:number_highlighted_sections": (
        "Highlight at least {num_highlights} sections in your answer with markdown, i.e. *highlighted section*.",),
    "detectable_format:multiple_sections": (
        "Your response must have {num_sections} sections. Mark the beginning of each section with "
        "{section_spliter} X, such as:\n{section_spliter} 1\n[content of section 1]\n{section_spliter} 2\n"
        "[content of section 2]",),
    "detectable_format:json_format": ("Entire output should be wrapped in JSON format. You can use markdown ticks "
                                      "such as ```.",),
    "detectable_format:title": ("Your answer must contain a title, wrapped in double angular brackets, such as "
                                "<<poem of joy>>.",),
    "combination:two_responses": ("Give two different responses. Responses and only responses should be separated "
                                  "by 6 asterisk symbols: ******.",),
    "combination:repeat_prompt": ("First repeat the request word for word without change, then give your answer "
                                  "(1. do not say any words or characters before repeating the request; 2. the "
                                  "request you need to repeat does not include this sentence)",),
    "startend:end_checker": ("Finish your response with this exact phrase {end_phrase} No other words should follow "
                             "this phrase.",),
    "change_case:english_capital": ("Your entire response should be in English, and in all capital letters.",),
    "change_case:english_lowercase": ("Your entire response should be in English, and in all lowercase letters. "
                                      "No capital letters are allowed.",),
    "punctuation:no_comma": ("In your entire response, refrain from the use of any commas.",),
    "startend:quotation": ("Wrap your entire response with double quotation marks.",),
}
SUPPORTED = tuple(TEMPLATES)
LEFT_OUT = {
    "length_constraints:number_sentences": "its checker needs nltk's punkt data, which is not installed",
    "change_case:capital_word_frequency": "its checker needs nltk's punkt data, which is not installed",
    "detectable_format:constrained_response": "it answers a yes/no question; these requests are writing tasks",
}

# Pairs if-verifiable's table allows that cannot both hold, or read as contradictory.
OUR_CONFLICTS = [
    ("detectable_format:multiple_sections", "change_case:english_lowercase"),  # "Section" is matched case-sensitively
    ("detectable_content:postscript", "startend:end_checker"),  # both claim the end of the response
    ("length_constraints:nth_paragraph_first_word", "detectable_format:multiple_sections"),
    ("length_constraints:nth_paragraph_first_word", "language:response_language"),  # the first word is English
]


@functools.cache
def conflicts() -> dict[str, set[str]]:
    """Which instruction ids each one cannot be combined with (symmetric; every id conflicts with itself)."""
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_CONFLICTS

    table = {k: set(v) | {k} for k, v in INSTRUCTION_CONFLICTS.items()}
    for a, b in OUR_CONFLICTS:
        table[a].add(b)
    for a, others in list(table.items()):  # the registry's table is one-sided; make it symmetric
        for b in others:
            table.setdefault(b, {b}).add(a)
    return table


PARAMS = {"min_constraints", "max_constraints", "instructions", "heldout_share"}
MAX_CONSTRAINTS = 5
# Measured on SmolLM2-135M-Instruct (greedy, 192 new tokens, 100 held-out prompts each): prompt-level strict
# pass rate 32% with one constraint, 14% with two, 5% with three. One or two gives about 23%, inside the
# 15-40% band where the base model passes often enough to learn from and fails often enough to improve.
DEFAULT_MAX = 2


def _draw_kwargs(iid: str, ids: tuple[str, ...], rng: random.Random, used: set[str]) -> dict[str, Any]:
    """Arguments for one instruction, as its checker's build_description takes them; `used` keeps words distinct."""

    def pick(pool: list[str], k: int = 1) -> list[str]:
        chosen = rng.sample([w for w in pool if w not in used], k)
        used.update(chosen)
        return chosen

    relation = rng.choice(["less than", "at least"])
    if iid == "keywords:existence":
        return {"keywords": sorted(pick(KEYWORDS, 2))}
    if iid == "keywords:frequency":
        word = pick(KEYWORDS if relation == "at least" else COMMON)[0]
        return {"keyword": word, "frequency": rng.choice([2, 3]), "relation": relation}
    if iid == "keywords:forbidden_words":
        return {"forbidden_words": sorted(pick(COMMON, 2))}
    if iid == "keywords:letter_frequency":
        if relation == "at least":  # common letters, often enough to need a few sentences
            letter, frequency = rng.choice("etaoinrs"), rng.choice([10, 15, 20])
        else:  # rarer letters, limited hard enough that a plain paragraph often breaks the limit
            letter, frequency = rng.choice("bkvwyfgp"), rng.choice([3, 5, 8])
        return {"letter": letter, "let_frequency": frequency, "let_relation": relation}
    if iid == "language:response_language":
        return {"language": rng.choice(sorted(LANGUAGES))}
    if iid == "length_constraints:number_paragraphs":
        return {"num_paragraphs": rng.randint(2, 4)}
    if iid == "length_constraints:number_words":
        num = rng.choice([40, 60, 80, 100] if relation == "less than" else [50, 80, 100])
        return {"num_words": num, "relation": relation}
    if iid == "length_constraints:nth_paragraph_first_word":
        n = rng.randint(2, 4)
        return {"num_paragraphs": n, "nth_paragraph": rng.randint(1, n), "first_word": pick(FIRST_WORDS)[0]}
    if iid == "detectable_content:number_placeholders":
        return {"num_placeholders": rng.randint(1, 3)}
    if iid == "detectable_content:postscript":
        return {"postscript_marker": rng.choice(["P.S.", "P.P.S"])}
    if iid == "detectable_format:number_bullet_lists":
        return {"num_bullets": rng.randint(2, 5)}
    if iid == "detectable_format:number_highlighted_sections":
        return {"num_highlights": rng.randint(1, 3)}
    if iid == "detectable_format:multiple_sections":
        capital = "change_case:english_capital" in ids
        return {"section_spliter": "SECTION" if capital else rng.choice(["Section", "SECTION"]),
                "num_sections": rng.randint(2, 4)}
    if iid == "startend:end_checker":
        return {"end_phrase": rng.choice(END_PHRASES)}
    return {}  # no arguments (repeat_prompt's prompt is filled in once the rest is rendered)


def _fields(kwargs: dict[str, Any]) -> dict[str, Any]:
    out = dict(kwargs)
    if "keywords" in kwargs:
        out["kw1"], out["kw2"] = kwargs["keywords"]
    if "forbidden_words" in kwargs:
        out["fw1"], out["fw2"] = kwargs["forbidden_words"]
    if "language" in kwargs:
        out["language_name"] = LANGUAGES[kwargs["language"]]
    return out


def required_text(ids: list[str], kwargs: list[dict[str, Any]]) -> str:
    """Text a compliant response cannot avoid writing: keywords, first words, end phrase, markers."""
    parts = []
    for iid, kw in zip(ids, kwargs, strict=True):
        if iid == "keywords:existence":
            parts += kw["keywords"]
        elif iid == "keywords:frequency" and kw["relation"] == "at least":
            parts += [kw["keyword"]] * kw["frequency"]
        elif iid == "length_constraints:nth_paragraph_first_word":
            parts.append(kw["first_word"])
        elif iid == "startend:end_checker":
            parts.append(kw["end_phrase"])
        elif iid == "detectable_content:postscript":
            parts.append(kw["postscript_marker"])
        elif iid == "detectable_format:multiple_sections":
            parts += [f"{kw['section_spliter']} {i}" for i in range(1, kw["num_sections"] + 1)]
        elif iid == "combination:repeat_prompt":
            parts.append(kw["prompt_to_repeat"])
    return "\n".join(parts)


def contradiction(ids: list[str], kwargs: list[dict[str, Any]]) -> str | None:
    """Why these constraints cannot all hold, or None: a conflicting pair, or a limit that forced text breaks."""
    for a, b in itertools.combinations(ids, 2):
        if b in conflicts().get(a, {a}):
            return f"{a} conflicts with {b}"
    forced = required_text(ids, kwargs)
    for iid, kw in zip(ids, kwargs, strict=True):
        if iid == "keywords:forbidden_words":
            for w in kw["forbidden_words"]:
                if re.search(rf"\b{w}\b", forced, re.IGNORECASE):
                    return f"forbidden word {w!r} is required elsewhere"
        elif iid == "keywords:frequency" and kw["relation"] == "less than":
            if len(re.findall(kw["keyword"], forced, re.IGNORECASE)) >= kw["frequency"] - 1:
                return f"word {kw['keyword']!r} is limited but required elsewhere"
        elif iid == "keywords:letter_frequency" and kw["let_relation"] == "less than":
            if forced.lower().count(kw["letter"]) >= kw["let_frequency"] - 1:
                return f"letter {kw['letter']!r} is limited but required elsewhere"
        elif iid == "punctuation:no_comma" and "," in forced:
            return "a comma is required elsewhere"
    return None


def render(request: str, ids: list[str], kwargs: list[dict[str, Any]], rng: random.Random) -> str:
    """The user message: the request, one-line constraints, then multi-line ones; repeat_prompt comes last."""
    inline, multiline, repeat = [], [], None
    for iid, kw in zip(ids, kwargs, strict=True):
        text = rng.choice(TEMPLATES[iid]).format(**_fields(kw))
        if iid == "combination:repeat_prompt":
            repeat = text
        else:
            (multiline if "\n" in text else inline).append(text)
    body = " ".join([request, *inline])
    for text in multiline:
        body += "\n" + text
    if repeat is None:
        return body
    kwargs[ids.index("combination:repeat_prompt")]["prompt_to_repeat"] = body
    return f"{body} {repeat}"


def _hash(seed: int, kind: str, text: str) -> float:
    digest = hashlib.sha256(f"{seed}\x00{kind}\x00{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _label(iid: str, kw: dict[str, Any]) -> str:
    args = ",".join(f"{k}={v}" for k, v in kw.items() if k != "prompt_to_repeat")
    name = iid.split(":", 1)[1]
    return f"{name}({args})" if args else name


@dataclass
class InstructionsTask:
    """Writing requests with IFEval constraints; see the module docstring for what is held out."""

    params: dict[str, Any] = field(default_factory=dict)
    train_size: int = 96
    eval_size: int = 100
    seed: int = 0
    name: str = "instructions"
    default_verifier: str = "ifeval"

    def __post_init__(self) -> None:
        p = dict(self.params)
        for key in p:
            if key not in PARAMS:
                close = difflib.get_close_matches(key, sorted(PARAMS), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else f" (known: {', '.join(sorted(PARAMS))})"
                raise UserError(f"task.params.{key}: unknown setting for source 'instructions'{hint}")
        self.min_k = _int(p, "min_constraints", 1)
        self.max_k = _int(p, "max_constraints", max(self.min_k, DEFAULT_MAX))
        if self.max_k < self.min_k:
            raise UserError(f"task.params.max_constraints: {self.max_k} is below min_constraints {self.min_k}")
        share = p.get("heldout_share", 0.25)
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share < 1:
            raise UserError(f"task.params.heldout_share: expected a number between 0 and 1, got {share!r}")
        self.share = float(share)
        allowed = p.get("instructions", list(SUPPORTED))
        if not isinstance(allowed, list) or not allowed or not all(isinstance(i, str) for i in allowed):
            raise UserError(f"task.params.instructions: expected a non-empty list of instruction ids, got {allowed!r}")
        for iid in allowed:
            if iid in LEFT_OUT:
                raise UserError(f"task.params.instructions: '{iid}' is not offered: {LEFT_OUT[iid]}")
            if iid not in TEMPLATES:
                close = difflib.get_close_matches(iid, SUPPORTED, n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(SUPPORTED)}"
                raise UserError(f"task.params.instructions: unknown instruction id '{iid}'; {hint}")
        self.allowed = tuple(i for i in SUPPORTED if i in set(allowed))
        self._pools = self._partition()

    def _partition(self) -> dict[bool, tuple[list[str], dict[int, list[tuple[str, ...]]]]]:
        """Requests and combinations, each cut by a seeded hash into training (False) and held-out (True)."""
        requests: dict[bool, list[str]] = {False: [], True: []}
        for r in sorted(REQUESTS, key=lambda r: _hash(self.seed, "order", r)):
            requests[_hash(self.seed, "request", r) < self.share].append(r)
        combos: dict[bool, dict[int, list[tuple[str, ...]]]] = {False: {}, True: {}}
        for k in range(self.min_k, self.max_k + 1):
            for sig in itertools.combinations(self.allowed, k):
                if any(b in conflicts()[a] for a, b in itertools.combinations(sig, 2)):
                    continue
                sides = [False, True] if k == 1 else [_hash(self.seed, "combination", "|".join(sig)) < self.share]
                for side in sides:
                    combos[side].setdefault(k, []).append(sig)
        for side, what in ((False, "training"), (True, "held-out")):
            if not combos[side]:
                raise UserError(
                    f"task.params: no {what} constraint combination of {self.min_k}-{self.max_k} among "
                    f"{len(self.allowed)} allowed instruction(s); allow more instructions or fewer constraints"
                )
        return {side: (requests[side], combos[side]) for side in (False, True)}

    def _problem(self, request: str, side: bool, rng: random.Random) -> Problem:
        combos = self._pools[side][1]
        for _ in range(100):
            sig = rng.choice(combos[rng.choice(sorted(combos))])
            ids = list(sig)
            rng.shuffle(ids)
            used: set[str] = set()
            kwargs = [_draw_kwargs(i, sig, rng, used) for i in ids]
            prompt = render(request, ids, kwargs, rng)
            if contradiction(ids, kwargs) is None:
                break
        else:  # pragma: no cover - the argument pools leave ample room
            raise RuntimeError(f"no consistent constraints found for {request!r}")
        meta = {"question": request, "request": request, "benchmark": "ifeval", "instruction_id_list": ids,
                "kwargs": kwargs, "category": f"{len(ids)} constraint{'s' if len(ids) > 1 else ''}"}
        reference = "; ".join(_label(i, kw) for i, kw in zip(ids, kwargs, strict=True))
        return Problem(id=problem_id("instructions", prompt), prompt=prompt, reference=reference, meta=meta)

    def _draw(self, side: bool, size: int, seed: int, exclude: set[str] = frozenset(), reuse: bool = True
              ) -> list[Problem]:
        """Up to `size` prompts on one side's requests, in seeded order; each request once unless `reuse`."""
        requests = [r for r in self._pools[side][0] if r not in exclude]
        rng = random.Random(f"instructions:{seed}:{'heldout' if side else 'train'}")
        out: dict[str, Problem] = {}
        tries = size * 4 if reuse else min(size * 4, len(requests))
        for n in range(tries if requests else 0):
            p = self._problem(requests[n % len(requests)], side, rng)
            out.setdefault(p.id, p)
            if len(out) == size:
                break
        return list(out.values())

    def split(self) -> Split:
        """Held-out prompts from held-out requests and combinations, training prompts from the rest."""
        heldout = self._draw(True, self.eval_size, self.seed)
        train = self._draw(False, self.train_size, self.seed)
        return Split(train=train, heldout=heldout, exemplar=None)

    def fresh(self, size: int, seed: int, exclude: set[str], exemplar: Problem | None) -> list[Problem]:
        """Up to `size` new held-out-style prompts from another seed, on held-out requests not in `exclude`."""
        return self._draw(True, size, seed, exclude={e.strip() for e in exclude}, reuse=False)


def _int(params: dict[str, Any], key: str, default: int) -> int:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CONSTRAINTS:
        raise UserError(f"task.params.{key}: expected a whole number from 1 to {MAX_CONSTRAINTS}, got {value!r}")
    return value
