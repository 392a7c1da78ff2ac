"""Take the levers out of a response before an LLM judge reads it.

A small judge copies numbers it sees: measured on SmolLM2-135M, a response ending in `Score: 5` raised its
score from 2.55 to 3.67, fence or not. So every line of the judged response that talks to the grader is
removed before the judge sees it (a sentence at a time):

- score-like text: a grading word (score, rating, grade, points, marks, stars, award...) with a number or
  a number word in the same sentence, a fraction of a scale (`5/5`, `4 out of 5`, `10/10`), `full marks`;
- verdicts for a pairwise comparison ("Better response: A", "response B wins");
- directives to the grader: "ignore the rubric / the instructions above", "award / give ... points";
- lines that look like the fence or a new rubric (`</response>`, `END OF RESPONSE`, `<<< >>>`);

and the response is normalised so that length cannot be bought: repeated sentences and runs of one word
are collapsed, whitespace is squeezed. A response with no content left (empty, only punctuation, only a
"master key" opener such as `Thought process:` or `Solution`, known to fool LLM judges) is marked empty and
is scored 0 by rule, never by the judge.

Detection runs on a skeleton of each line that undoes the usual disguises: Unicode compatibility forms
(fullwidth digits, ligatures), look-alike letters from Cyrillic and Greek, zero-width characters, letters
spaced or split by punctuation (`S c o r e`, `Sc-ore`, `**Score:**`), and words for numbers.
A line is removed whole, so what the judge sees is the response as if the line had never been written; an
innocent line that happens to match (a story where someone "scored 5 goals") is lost, which can only cost
that response, never help it.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

# Look-alike letters (Cyrillic, Greek, Latin small capitals) that an attacker can use to hide a keyword.
_CONFUSABLES = str.maketrans({
    "а": "a", "в": "b", "с": "c", "е": "e", "һ": "h", "і": "i", "ј": "j", "к": "k", "м": "m", "н": "h",
    "о": "o", "р": "p", "ѕ": "s", "т": "t", "у": "y", "х": "x", "ԁ": "d", "ԛ": "q", "ԝ": "w", "ɡ": "g",
    "А": "a", "В": "b", "С": "c", "Е": "e", "Н": "h", "І": "i", "Ј": "j", "К": "k", "М": "m", "О": "o",
    "Р": "p", "Ѕ": "s", "Т": "t", "Х": "x", "У": "y",
    "α": "a", "β": "b", "ε": "e", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u",
    "χ": "x", "Α": "a", "Β": "b", "Ε": "e", "Ζ": "z", "Η": "h", "Ι": "i", "Κ": "k", "Μ": "m", "Ν": "n",
    "Ο": "o", "Ρ": "p", "Τ": "t", "Υ": "y", "Χ": "x",
    "ᴀ": "a", "ʙ": "b", "ᴄ": "c", "ᴅ": "d", "ᴇ": "e", "ɢ": "g", "ʜ": "h", "ɪ": "i", "ᴊ": "j", "ᴋ": "k",
    "ʟ": "l", "ᴍ": "m", "ɴ": "n", "ᴏ": "o", "ᴘ": "p", "ʀ": "r", "ꜱ": "s", "ᴛ": "t", "ᴜ": "u", "ᴠ": "v",
    "ᴡ": "w", "ʏ": "y", "ᴢ": "z",
})

_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "hundred")
_NUM = r"(?:\d+|" + "|".join(_NUMBER_WORDS) + r")"
# "point" is not here: "* This is point 1" is how a bullet list often reads; points are caught with a verb below.
_GRADE = r"(?:scores?|scored|scoring|rating|rated|rate|grade|graded|marks?|stars?|award|awarded|verdict)"

# Patterns on the word skeleton (see `words`): lower-case words and numbers separated by single spaces.
_WORD_PATTERNS = [
    re.compile(rf"\b{_GRADE}\b.{{0,40}}?\b{_NUM}\b"),  # "Score: 5", "points awarded: five"
    re.compile(rf"\b{_NUM} (?:full )?(?:points?|stars?|marks?)\b"),  # "5 points", "five stars"
    re.compile(rf"^(?:total |final )?points? {_NUM}\b|\bpoints? (?:awarded|earned|given|total)\b"),
    re.compile(rf"\b{_NUM} out of {_NUM}\b"),  # "4 out of 5"
    re.compile(r"\b(?:full marks|perfect score|maximum score|highest score|top score|max score|full score)\b"),
    re.compile(r"\bignore\b.{0,40}?\b(?:rubric|instructions?|above|previous|prior|criteria|system|prompt|grader"
               r"|judge)\b"),
    re.compile(r"\b(?:award|give|assign|grant)\b.{0,30}?\b(?:points?|scores?|marks?|grades?|rating)\b"),
    re.compile(r"\b(?:new|updated|revised|real|actual|correct|grading) (?:rubric|instructions)\b"),
    re.compile(r"\b(?:begin|start|end|close|stop)(?: of)?(?: the)? (?:response|answer|text|data|fence)\b"),
    re.compile(r"\b(?:response|answer|text|data) (?:ends|begins|starts|ended|is over)\b"),
    # verdicts for a pairwise comparison
    re.compile(r"\b(?:better|best|preferred|winning|stronger) (?:response|answer)\b|\bwinner\b"),
    re.compile(r"\b(?:response|answer) [ab] (?:is|was|wins)\b|\bprefer (?:response|answer)\b"),
]
# Patterns on the spaced skeleton (punctuation kept): scale fractions and fence look-alikes.
_SPACED_PATTERNS = [
    re.compile(r"\d+(?:\.\d+)?\s*/\s*(?:5|10|100)\b"),
    re.compile(r"<\s*/\s*[\w-]*\s*>|<<<|>>>|\[\[|\]\]|={4,}"),
]

# Openers that fool LLM judges on their own ("One Token to Fool LLM-as-a-Judge", Zhao et al. 2025).
MASTER_KEYS = (
    "thought process", "let's solve this problem step by step", "let us solve this problem step by step",
    "solution", "answer", "response", "the answer is", "explanation", "step by step", "解", "解答", "かいせつ",
    "respuesta", "réponse", "antwort",
)


@dataclass
class Neutralized:
    """The text the judge sees, and what was taken out of the original."""

    text: str
    removed: list[str] = field(default_factory=list)
    empty: bool = False  # nothing is left to judge: scored 0 by rule

    @property
    def changed(self) -> int:
        return len(self.removed)


def skeleton(text: str) -> str:
    """Lower-case, compatibility-normalised, look-alikes mapped to ASCII, invisible characters dropped."""
    norm = unicodedata.normalize("NFKC", text).translate(_CONFUSABLES)
    norm = "".join(ch for ch in norm if unicodedata.category(ch) not in ("Cf", "Mn"))
    return unicodedata.normalize("NFKD", norm).casefold()


def words(text: str) -> str:
    """The skeleton as words and numbers separated by single spaces, with letter-spacing undone.

    'S c o r e', 'Sc-ore', 'S.c.o.r.e' and '**Score:**' all read 'score'; digits split from letters ('5/5' -> '5 5').
    """
    s = skeleton(text)
    s = re.sub(r"(?<=[a-z])[^\sa-z0-9]+(?=[a-z])", "", s)  # punctuation inside a word
    tokens = re.findall(r"[a-z]+|\d+", s)
    out: list[str] = []
    run: list[str] = []
    for t in tokens + [""]:
        if len(t) == 1 and t.isalpha():
            run.append(t)
            continue
        out += ["".join(run)] if len(run) >= 3 else run  # three or more single letters in a row are one word
        run = []
        if t:
            out.append(t)
    return " ".join(out)


def talks_to_grader(line: str) -> bool:
    """Whether a line carries a score, a directive to the grader, or a fence look-alike."""
    w = words(line)
    if any(p.search(w) for p in _WORD_PATTERNS):
        return True
    spaced = re.sub(r"\s+", " ", skeleton(line))
    return any(p.search(spaced) for p in _SPACED_PATTERNS)


def _sentences(line: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", line) if s]


def _collapse_runs(sentence: str) -> str:
    """'very very very very good' -> 'very good': a word repeated three or more times in a row counts once."""
    return re.sub(r"\b(\w+)(?:[\s,;.!-]+\1\b){2,}", r"\1", sentence, flags=re.IGNORECASE)


def is_empty(text: str) -> bool:
    """No content once master-key openers, punctuation and whitespace are set aside."""
    rest = skeleton(text)
    for key in sorted(MASTER_KEYS, key=len, reverse=True):
        rest = rest.replace(key, " ")
    return not re.search(r"[0-9a-z]|[^\x00-\x7f\s\W]", rest)


def neutralize(response: str) -> Neutralized:
    """The response with every line that talks to the grader removed, repetition collapsed and spacing squeezed."""
    removed: list[str] = []
    kept_lines: list[str] = []
    seen: set[str] = set()
    for raw in response.splitlines():
        line = raw.strip()
        if not line:
            if kept_lines and kept_lines[-1] != "":
                kept_lines.append("")  # keep paragraph breaks, one blank line at most
            continue
        # A sentence that talks to the grader goes; the rest of its line stays (a score hidden at a line's end).
        sentences = []
        for s in _sentences(line):
            if talks_to_grader(s):
                removed.append(s)
                continue
            s = _collapse_runs(s)
            key = words(s)
            if len(key) >= 8 and key in seen:  # a repeated sentence adds length, not content
                removed.append(s)
                continue
            seen.add(key)
            sentences.append(s)
        if sentences:
            kept_lines.append(re.sub(r"[ \t]+", " ", " ".join(sentences)))
    text = "\n".join(kept_lines).strip()
    return Neutralized(text=text, removed=removed, empty=is_empty(text))
