"""Rule grading: is a predicted answer the ground truth? — and, as important, *can the rules tell*?

:func:`grade` returns a :class:`Grade` with ``decisive=False`` when rules cannot decide (two free-form phrasings
that differ): that is VLM-R3's "exact match, else ask the judge" and lets :mod:`visionr3.reward.score` call a judge
only where it adds information. A decisive ``False`` (a different letter, a different number) is never sent to a
judge, so a lenient judge cannot turn "B" into "C".

The checks, in order (the first that decides wins):

1. **exact** — case-insensitive equality, then equality under :func:`normalize` (EvalAI's VQA normalisation, the one
   VLM-R3 copied: punctuation, articles, number words, contractions);
2. **choice** — multiple choice (a letter ground truth, or ``options`` given): the prediction may be a letter in any
   usual dress or the option's text; the *chosen option* is compared, and naming two different options is wrong;
3. **yes_no** — VLM-R3's TextVQA rule for yes/no golds;
4. **number** — numbers with optional units/currency, thousands separators ignored;
5. **math** — ``math_verify`` (then ``mathruler`` as a second opinion) on strings that look like mathematics,
   guarded against junk and slow expressions;
6. otherwise different single characters or numbers are decisively wrong, and free-form texts are undecided.

Ground truths that list alternatives with ``/`` (VLM-R3: ``"cat/kitten"``) are split when every piece is a word
without digits, so ``1/2`` and ``km/h`` stay whole; the whole gold is always tried first.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from visionr3.reward.extract import answer_tag


@dataclass(frozen=True)
class Grade:
    """A rule verdict. ``decisive=False`` means "rules cannot tell" (a judge may decide); ``correct`` is then False.

    ``method`` names the check that decided: ``exact``, ``choice``, ``number``, ``math``, ``yes_no`` or ``none`` (no
    prediction to grade).
    """

    correct: bool
    decisive: bool
    method: str


# --- EvalAI normalisation (facebookresearch/mmf processors.py, as copied by VLM-R3's rgrpo.py) -------------------

_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll",
    "hows": "how's", "id've": "i'd've", "i'dve": "i'd've", "im": "i'm", "ive": "i've", "isnt": "isn't", "itd": "it'd",
    "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's",
    "somethingd": "something'd", "somethingd've": "something'd've", "something'dve": "something'd've",
    "somethingll": "something'll", "thats": "that's", "thered": "there'd", "thered've": "there'd've",
    "there'dve": "there'd've", "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})
_PUNCTUATION = tuple(';/[]"{}()=+\\_-><@`,?!')
_COMMA_BETWEEN_DIGITS = re.compile(r"(?<=\d),+(?=\d)")
# EvalAI writes (?!<=\d)(\.)(?!\d) — a typo for a lookbehind that makes it "a period not followed by a digit".
_PERIOD = re.compile(r"\.(?!\d)")


def normalize(text: str) -> str:
    """EvalAI's VQA answer normalisation: lowercase; ``,``/``?`` dropped; punctuation removed (or turned into a space
    when it separates words); periods kept only before a digit (``3.5``); number words to digits (``two`` → ``2``);
    articles dropped; contractions restored; whitespace collapsed. ``"The Red car."`` → ``"red car"``."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    remove_all = _COMMA_BETWEEN_DIGITS.search(text) is not None
    out = text
    for mark in _PUNCTUATION:
        if remove_all or mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    out = _PERIOD.sub("", out)
    words = [_NUMBER_WORDS.get(word, word) for word in out.split()]
    words = [_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES]
    return " ".join(words)


# --- multiple choice ---------------------------------------------------------------------------------------------

# All patterns run on stripped text and avoid adjacent optional whitespace runs: nested \s* quantifiers backtrack
# polynomially on a policy's degenerate output (thousands of spaces), and grading must stay linear.
_LETTER_ONLY = re.compile(r"(?:\(\s*)?([A-Za-z])(?:\s*\))?[.:)]?")  # fullmatch: "B", "(B)", "B.", "b)"
_LEADING_LETTER = re.compile(r"(?:\(\s*([A-Z])\s*\)|([A-Z])\s*[.:)])\s*(.*)", re.DOTALL)  # "(B) red car", "B. red"
_PHRASED_LETTER = re.compile(  # "The answer is B", "answer: (C)", "the correct option is D"
    r"(?i:answer|option|choice)(?:\s+(?i:is))?(?:\s*[:：])?(?:\s+(?i:option|choice))?\s*(?:\(\s*)?([A-Z])(?![A-Za-z])"
)
_PARENTHESISED_LETTER = re.compile(r"\(\s*([A-Z])\s*\)")
_TRAILING_LETTER = re.compile(r"(?:\b(?i:is)|:)\s*(?:\(\s*)?([A-Z])(?:\s*\))?$")  # "so it is B" (no final period)
_LETTER_LIST = re.compile(  # "A or B", "B/C", "A, D", "B and C": a hedge between options
    r"(?<![A-Za-z])\(?([A-Z])\)?\s*(?:,|/|&|\bor\b|\band\b)\s*\(?([A-Z])\)?(?![A-Za-z])"
)


def _letter_index(letter: str) -> int:
    return ord(letter.upper()) - ord("A")


def _gold_choice(ground_truth: str, options: Sequence[str]) -> int | None:
    """Index of the correct option, or ``None`` when the gold is not a choice (then rules grade it as text)."""
    ground_truth = ground_truth.strip()
    letter = _LETTER_ONLY.fullmatch(ground_truth)
    if letter and (options or letter.group(1).isupper()):
        return _letter_index(letter.group(1))
    if not options:
        return None
    leading = _LEADING_LETTER.match(ground_truth)  # "(B) red car" / "B. red car"
    if leading:
        return _letter_index(leading.group(1) or leading.group(2))
    wanted = normalize(ground_truth)
    matches = [index for index, option in enumerate(options) if normalize(option) == wanted]
    return matches[0] if len(matches) == 1 else None


def _chosen_options(prediction: str, options: Sequence[str]) -> set[int]:
    """Every option the prediction names, by letter (``B``, ``(B)``, ``B.``, ``B. red car``, ``The answer is B``,
    ``so it is B``) or by option text. More than one element means the prediction hedged between options."""
    chosen: set[int] = set()
    prediction = prediction.strip()
    whole = _LETTER_ONLY.fullmatch(prediction)
    if whole:
        return {_letter_index(whole.group(1))}
    rest = prediction
    leading = _LEADING_LETTER.match(prediction)
    if leading:
        chosen.add(_letter_index(leading.group(1) or leading.group(2)))
        rest = leading.group(3)
    chosen.update(_letter_index(letter) for letter in _PHRASED_LETTER.findall(prediction))
    chosen.update(_letter_index(letter) for letter in _PARENTHESISED_LETTER.findall(prediction))
    chosen.update(_letter_index(letter) for letter in _TRAILING_LETTER.findall(prediction.rstrip(".").rstrip()))
    chosen.update(_letter_index(letter) for pair in _LETTER_LIST.findall(prediction) for letter in pair)
    for text in {prediction, rest}:
        wanted = normalize(text)
        if wanted:
            chosen.update(index for index, option in enumerate(options) if normalize(option) == wanted)
    return chosen


def _grade_choice(prediction: str, gold_index: int, options: Sequence[str]) -> Grade:
    chosen = _chosen_options(prediction, options)
    if not chosen:
        return Grade(False, False, "choice")  # free text ("the red one"): a judge may map it to an option
    if len(chosen) > 1:
        return Grade(False, True, "choice")
    (index,) = chosen
    return Grade(index == gold_index, True, "choice")


# --- yes/no, numbers --------------------------------------------------------------------------------------------

_YES_NO_MAX_CHARS = 48  # VLM-R3's textvqa rule: longer answers are sent to the judge


def _grade_yes_no(prediction: str, gold: str) -> Grade:
    """VLM-R3's TextVQA rule, on words rather than substrings (``"nothing"`` does not contain the answer "no")."""
    words = set(normalize(prediction).split())
    has_yes, has_no = "yes" in words, "no" in words
    if len(normalize(prediction)) >= _YES_NO_MAX_CHARS or has_yes == has_no:
        return Grade(False, False, "yes_no")
    return Grade((gold == "yes") == has_yes, True, "yes_no")


_NUMBER = re.compile(  # fullmatch on stripped text without a final period
    r"(?P<currency>[$€£¥])?\s*(?P<number>[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+−]?\.\d+)"
    r"(?P<gap>\s*)(?P<unit>(?:[A-Za-z%°²³/][A-Za-z%°²³/ ]{0,23})?)"
)


def _number(text: str) -> tuple[float, str] | None:
    """``(value, unit)`` of a number with an optional unit or currency (``"1,000 m²"`` → ``(1000.0, "m²")``).

    A single letter glued to the number (``2x``) is a term, not a unit, and is left to the math check.
    """
    match = _NUMBER.fullmatch(text.strip().rstrip(".").rstrip())
    if not match or (len(match.group("unit")) == 1 and match.group("unit").isalpha() and not match.group("gap")):
        return None
    value = float(match.group("number").replace(",", "").replace("−", "-"))
    unit = (match.group("currency") or "") + " ".join(match.group("unit").lower().split())
    return value, unit


def _grade_numbers(prediction: str, gold: str) -> Grade | None:
    predicted, wanted = _number(prediction), _number(gold)
    if predicted is None or wanted is None:
        return None
    (p_value, p_unit), (g_value, g_unit) = predicted, wanted
    units_agree = p_unit == g_unit or not p_unit or not g_unit
    if not units_agree:
        return Grade(False, False, "number")  # "3 cm" vs "30 mm" or "3 m": a judge may convert
    if math.isclose(p_value, g_value, rel_tol=1e-9, abs_tol=1e-12):
        return Grade(True, True, "number")
    if "%" in p_unit + g_unit and _math_equal(prediction, gold):  # "50%" vs "0.5": math_verify reads % as /100
        return Grade(True, True, "math")
    return Grade(False, True, "number")


# --- math ---------------------------------------------------------------------------------------------------------

_MAX_MATH_CHARS = 120
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
_WORD = re.compile(r"[A-Za-z]{2,}")
_SLOW_POWER = re.compile(  # power towers (nested or chained) and huge exponents: where sympy stalls
    r"\^\s*\{[^}]*\^|\^\s*\([^)]*\^|(?:\^|\*\*)\s*[\w.]+\s*(?:\^|\*\*)|(?:\^|\*\*)\s*[{(]?\s*\d{5,}"
)
_LONG_DIGITS = re.compile(r"\d{16,}")
_OPERATOR = re.compile(r"[+\-*/^=]")


def _looks_math(text: str) -> bool:
    """Short, with no English words outside LaTeX commands, and no expression sympy could spend minutes on.

    math_verify pulls numbers out of free text ("3 apples" parses as 3), so prose must never reach it; power towers
    and factorials (``!``) are where sympy stalls.
    """
    if len(text) > _MAX_MATH_CHARS or _SLOW_POWER.search(text) or _LONG_DIGITS.search(text) or "!" in text:
        return False
    if _WORD.search(_LATEX_COMMAND.sub(" ", text)):
        return False  # prose or units ("3 apples", "\\text{cm}"): rules or a judge, never math_verify
    return any(char.isdigit() for char in text) or "\\" in text or _OPERATOR.search(text) is not None


def _has_symbols(text: str) -> bool:
    return re.search(r"[A-Za-z]", _LATEX_COMMAND.sub(" ", text)) is not None


def _math_parse(text: str, timeout: int | None):
    """Parsed as LaTeX math: without ``$…$`` math_verify's plain-expression fallback reads a prefix, so ``2x`` would
    parse as ``2`` and ``2^{1/2}`` as ``2``."""
    from math_verify import parse

    return parse(text if "$" in text else f"${text}$", parsing_timeout=timeout)


def _math_equal(prediction: str, gold: str) -> bool | None:
    """``True``/``False`` when both sides parse as mathematics, ``None`` when they do not (or anything goes wrong).

    math_verify's timeouts use ``signal.alarm``, which only works in the main thread (verl may score in a worker
    thread); elsewhere it runs without one, relying on :func:`_looks_math` to keep slow inputs out.
    """
    if not (_looks_math(prediction) and _looks_math(gold)):
        return None
    timeout = 2 if threading.current_thread() is threading.main_thread() else None
    try:
        from math_verify import verify

        parsed_gold, parsed_prediction = _math_parse(gold, timeout), _math_parse(prediction, timeout)
        if not parsed_gold or not parsed_prediction:
            return None
        if verify(parsed_gold, parsed_prediction, timeout_seconds=timeout):
            return True
    except Exception:  # noqa: BLE001 - junk must grade as "not equal", never crash a training step
        return None
    try:
        from mathruler.grader import grade_answer

        # pylatexenc (under mathruler) logs a warning for every malformed macro ("\\frac" without arguments); on
        # policy samples that is log noise, not news
        logging.getLogger("pylatexenc.latex2text").setLevel(logging.ERROR)
        return bool(grade_answer(prediction, gold))
    except Exception:  # noqa: BLE001
        return False


# --- the grader ---------------------------------------------------------------------------------------------------

_ANSWER_PREFIX = re.compile(r"^\s*(?:the\s+)?(?:final\s+|correct\s+)?answer\s*(?:is\s*:?|:)\s*", re.IGNORECASE)
_ALTERNATIVE_SEPARATOR = "/"


def _alternatives(gold: str) -> list[str]:
    """VLM-R3's ``/``-separated alternatives, only when every piece is a word without digits (``1/2`` is a number)."""
    pieces = [piece.strip() for piece in gold.split(_ALTERNATIVE_SEPARATOR)]
    if len(pieces) < 2 or any(not piece or any(char.isdigit() for char in piece) for piece in pieces):
        return []
    return pieces


def _is_atom(text: str) -> bool:
    """A single character or a bare number: two different atoms are decisively different answers."""
    text = text.strip().rstrip(".")
    number = _number(text)
    return len(text) == 1 or (number is not None and not number[1])


def _grade_text(prediction: str, gold: str) -> Grade:
    """One prediction against one (non-choice) gold."""
    if prediction.strip().lower() == gold.strip().lower():
        return Grade(True, True, "exact")
    normalized_prediction, normalized_gold = normalize(prediction), normalize(gold)
    if normalized_gold and normalized_prediction == normalized_gold:
        return Grade(True, True, "exact")
    if normalized_gold in ("yes", "no"):
        return _grade_yes_no(prediction, normalized_gold)
    numbers = _grade_numbers(prediction, gold)
    if numbers is not None:
        return numbers
    equal = _math_equal(prediction, gold)
    if equal is not None:
        # symbols may be units or names the rules cannot see through ("5m" vs "5"): only numbers are decisively unequal
        return Grade(equal, equal or not (_has_symbols(prediction) or _has_symbols(gold)), "math")
    if _is_atom(prediction) and _is_atom(gold):
        return Grade(False, True, "exact")
    return Grade(False, False, "exact")


def grade(prediction: str | None, ground_truth: str, *, options: Sequence[str] = ()) -> Grade:
    """Grade ``prediction`` against ``ground_truth`` by rules (see the module docstring for the order of checks).

    ``options`` are the multiple-choice option texts in letter order (``A`` first). A ground truth wrapped in
    ``<answer>…</answer>`` (VLM-R3's RL data) is unwrapped. Never raises on any input.
    """
    if prediction is None or not prediction.strip() or not ground_truth.strip():
        return Grade(False, True, "none")
    if prediction.strip().lower() == ground_truth.strip().lower():
        return Grade(True, True, "exact")
    gold = answer_tag(ground_truth, "first") or ground_truth.strip()
    prediction = _ANSWER_PREFIX.sub("", prediction.strip()) or prediction.strip()

    gold_index = _gold_choice(gold, options)
    if gold_index is not None:
        return _grade_choice(prediction, gold_index, options)

    grades = [_grade_text(prediction, gold)]
    if not grades[0].correct:
        grades += [_grade_text(prediction, alternative) for alternative in _alternatives(gold)]
    for result in grades:
        if result.correct:
            return result
    if all(result.decisive for result in grades):
        return grades[0]
    undecided = next(result for result in grades if not result.decisive)
    return Grade(False, False, undecided.method)
