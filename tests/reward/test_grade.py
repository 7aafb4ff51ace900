"""Rule grading: exact/EvalAI, multiple choice, yes/no, numbers and units, math equivalence, "/" alternatives, and
whether the rules can tell at all (``decisive``)."""

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from visionr3.reward.grade import Grade, grade, normalize

CARS = ("blue car", "red car", "green car", "white car")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Red car.", "red car"),
        ("  two   apples ", "2 apples"),
        ("1,000", "1000"),
        ("3.5", "3.5"),
        ("It's a dog!", "it 's dog"),
        ("dont", "don't"),
        ("left-hand side", "left hand side"),
        ("yes, it is", "yes it is"),
        ("A", ""),
    ],
)
def test_normalize(text, expected):
    assert normalize(text) == expected


EXACT = [
    ("red", "red", (), Grade(True, True, "exact")),
    ("Red.", "red", (), Grade(True, True, "exact")),
    ("The red car", "red car", (), Grade(True, True, "exact")),
    ("two", "2", (), Grade(True, True, "exact")),
    ("The answer is Paris", "paris", (), Grade(True, True, "exact")),
    ("Paris", "<answer> paris </answer>", (), Grade(True, True, "exact")),  # VLM-R3's RL data wraps the gold
    ("crimson", "red", (), Grade(False, False, "exact")),  # free-form: a judge may decide
    ("a", "b", (), Grade(False, True, "exact")),  # different single characters: decisively wrong
    (None, "red", (), Grade(False, True, "none")),
    ("", "red", (), Grade(False, True, "none")),
    ("   ", "red", (), Grade(False, True, "none")),
    ("red", "", (), Grade(False, True, "none")),
]

CHOICE = [
    # letter ground truth, no options: letters in any usual dress
    ("B", "B", (), Grade(True, True, "exact")),
    ("(B)", "B", (), Grade(True, True, "choice")),
    ("B.", "B", (), Grade(True, True, "choice")),
    ("b", "(B)", (), Grade(True, True, "choice")),
    ("The answer is B", "B", (), Grade(True, True, "choice")),
    ("answer: (B)", "B.", (), Grade(True, True, "choice")),
    ("I think it is B.", "B", (), Grade(True, True, "choice")),
    ("C", "B", (), Grade(False, True, "choice")),
    ("A or B", "B", (), Grade(False, True, "choice")),  # two letters: a hedge is wrong
    ("B/C", "B", (), Grade(False, True, "choice")),
    ("The answer is B or C", "B", (), Grade(False, True, "choice")),
    ("red car", "B", (), Grade(False, False, "choice")),  # no options to map the text: undecided
    # with options: the chosen *option* is compared
    ("B. red car", "B", CARS, Grade(True, True, "choice")),
    ("red car", "B", CARS, Grade(True, True, "choice")),
    ("The Red Car.", "B", CARS, Grade(True, True, "choice")),
    ("B", "red car", CARS, Grade(True, True, "choice")),  # text gold, letter prediction
    ("(B) red car", "(B) red car", CARS, Grade(True, True, "exact")),
    ("B. blue car", "B", CARS, Grade(False, True, "choice")),  # letter B but text of A: two options named
    ("blue car", "B", CARS, Grade(False, True, "choice")),
    ("(A) and (B)", "B", CARS, Grade(False, True, "choice")),
    ("E", "B", CARS, Grade(False, True, "choice")),  # no such option
    ("the red one", "B", CARS, Grade(False, False, "choice")),  # paraphrase: a judge may map it
]

YES_NO = [
    ("Yes", "yes", (), Grade(True, True, "exact")),
    ("Yes, it is.", "yes", (), Grade(True, True, "yes_no")),
    ("no, there is none", "No", (), Grade(True, True, "yes_no")),
    ("No.", "yes", (), Grade(False, True, "yes_no")),
    ("yes and no", "yes", (), Grade(False, False, "yes_no")),  # both: undecided
    ("There is nothing there", "no", (), Grade(False, False, "yes_no")),  # words, not substrings
    ("yes " + "x" * 60, "yes", (), Grade(False, False, "yes_no")),  # >= 48 chars: the judge's call
    ("a dog", "yes", (), Grade(False, False, "yes_no")),
]

NUMBERS = [
    ("3.5 cm", "3.5", (), Grade(True, True, "number")),
    ("3.5", "3.5 cm", (), Grade(True, True, "number")),
    ("3.50", "3.5", (), Grade(True, True, "number")),
    ("1,000", "1000", (), Grade(True, True, "exact")),
    ("1,000 m", "1000", (), Grade(True, True, "number")),
    ("$12", "12", (), Grade(True, True, "number")),
    ("-2", "−2", (), Grade(True, True, "number")),
    ("50%", "50", (), Grade(True, True, "number")),
    ("4", "3", (), Grade(False, True, "number")),
    ("4 cm", "3 cm", (), Grade(False, True, "number")),
    ("3 cm", "3 m", (), Grade(False, False, "number")),  # units differ: a judge may convert
    ("30 mm", "3 cm", (), Grade(False, False, "number")),
    ("3 apples", "3 cats", (), Grade(False, False, "number")),
]

MATH = [
    ("\\frac{1}{2}", "0.5", (), Grade(True, True, "math")),
    ("0.5", "\\frac{1}{2}", (), Grade(True, True, "math")),
    ("1/2", "0.5", (), Grade(True, True, "math")),
    ("$\\frac{1}{2}$", "1/2", (), Grade(True, True, "math")),
    ("x+1", "1+x", (), Grade(True, True, "math")),
    ("\\sqrt{2}", "2^{1/2}", (), Grade(True, True, "math")),
    ("2", "1/2", (), Grade(False, True, "math")),
    ("\\frac{1}{3}", "0.5", (), Grade(False, True, "math")),
    ("x+2", "x+1", (), Grade(False, False, "math")),  # symbols: could be units or names, so a judge may look
    ("2", "2x", (), Grade(False, False, "math")),  # "2x" is a term, not 2 with unit x
    # "50%" vs "0.5" is not assumed equal by the number rule; math_verify reads % as /100 and says so
    ("50%", "0.5", (), Grade(True, True, "math")),
    # junk that would stall sympy never reaches it
    ("9^{9^{9^{9}}}", "1", (), Grade(False, False, "exact")),
]

ALTERNATIVES = [
    ("cat", "cat/kitten", (), Grade(True, True, "exact")),
    ("Kitten", "cat / kitten", (), Grade(True, True, "exact")),
    ("dog", "cat/kitten", (), Grade(False, False, "exact")),
    ("1/2", "1/2", (), Grade(True, True, "exact")),  # a fraction is not two alternatives
    ("1", "1/2", (), Grade(False, True, "math")),
    ("km/h", "km/h", (), Grade(True, True, "exact")),
    ("b", "a/b", (), Grade(True, True, "exact")),
]


@pytest.mark.parametrize(
    ("prediction", "ground_truth", "options", "expected"), EXACT + CHOICE + YES_NO + NUMBERS + MATH + ALTERNATIVES
)
def test_grade(prediction, ground_truth, options, expected):
    assert grade(prediction, ground_truth, options=options) == expected


def test_grade_outside_the_main_thread():
    """math_verify's signal-based timeout only works in the main thread; verl may score in a worker thread."""
    results = []
    worker = threading.Thread(target=lambda: results.append(grade("\\frac{1}{2}", "0.5")))
    worker.start()
    worker.join(timeout=30)
    assert results == [Grade(True, True, "math")]


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=40).filter(lambda s: s.strip()))
def test_a_prediction_equal_to_the_gold_is_correct(text):
    result = grade(text, text)
    assert result.correct and result.decisive


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60), st.text(max_size=30), st.lists(st.text(max_size=10), max_size=4))
def test_grade_never_raises_and_correct_is_decisive(prediction, ground_truth, options):
    result = grade(prediction, ground_truth, options=options)
    assert not (result.correct and not result.decisive)
    assert result.method in {"exact", "choice", "number", "math", "yes_no", "none"}


@given(st.sampled_from("ABCDEFGH"), st.sampled_from("ABCDEFGH"))
def test_different_letters_are_decisively_wrong(predicted, gold):
    result = grade(predicted, gold)
    assert result.decisive and result.correct == (predicted == gold)


@pytest.mark.parametrize(
    "text",
    ["answer" + " " * 20_000 + "x", "is" + " " * 20_000 + "(" + " " * 20_000, "A, " * 20_000, "1" * 20_000 + "x1"],
    ids=["answer+spaces", "is+spaces", "letter-list", "digits"],
)
def test_degenerate_predictions_grade_in_linear_time(text):
    """Letter and number patterns avoid nested whitespace quantifiers (the first two took minutes before)."""
    start = time.perf_counter()
    for gold, options in (("B", ()), ("B", CARS), ("red", ()), ("3.5 cm", ()), ("yes", ())):
        grade(text, gold, options=options)
        grade(gold, text, options=options)
    assert time.perf_counter() - start < 2.0
