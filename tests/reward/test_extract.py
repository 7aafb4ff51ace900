"""Answer extraction: tags (first/last/split), \\boxed{} with nested braces, last line, description, final answer."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from visionr3.reward.extract import answer_tag, boxed, description, final_answer, last_line, tag_contents

TWO_ANSWERS = "<answer>first</answer> then <answer> second </answer>"


@pytest.mark.parametrize(
    ("text", "which", "expected"),
    [
        ("<answer>red</answer>", "last", "red"),
        ("<answer>\n  red \n</answer>", "last", "red"),
        (TWO_ANSWERS, "first", "first"),
        (TWO_ANSWERS, "last", "second"),
        (TWO_ANSWERS, "split", "second"),
        ("no tags here", "first", None),
        ("no tags here", "last", None),
        ("no tags here", "split", None),  # the released code judged the whole response here
        ("<answer></answer>", "last", ""),
        ("<answer>multi\nline</answer>", "last", "multi\nline"),
        # an unclosed final tag: only split accepts it (truncated final answers)
        ("<think>x</think><answer>cut off", "last", None),
        ("<think>x</think><answer>cut off", "split", "cut off"),
        ("<answer>a</answer><answer>unclosed", "last", "a"),
        ("<answer>a</answer><answer>unclosed", "split", "unclosed"),
        ("closing only</answer>", "split", None),
        ("<answer>a</answer> trailing </answer>", "split", "a"),
    ],
)
def test_answer_tag(text, which, expected):
    assert answer_tag(text, which) == expected


def test_answer_tag_rejects_unknown_mode():
    with pytest.raises(ValueError, match="which"):
        answer_tag("<answer>a</answer>", "middle")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"\boxed{42}", "42"),
        (r"so \boxed{ B }.", "B"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\sqrt{\frac{a}{b}}} end", r"\sqrt{\frac{a}{b}}"),
        (r"first \boxed{1} then \boxed{2}", "2"),
        (r"\boxed {7}", "7"),
        (r"\boxed{}", ""),
        (r"no box", None),
        (r"\boxed{1} and an unclosed \boxed{2", None),  # a truncated final box is not an answer
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
    ],
)
def test_boxed(text, expected):
    assert boxed(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("reasoning\nthe answer: B\n", "the answer: B"),
        ("one line", "one line"),
        ("a\n\n   \n  b  \n\n", "b"),
        ("", None),
        ("\n \n", None),
    ],
)
def test_last_line(text, expected):
    assert last_line(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<description> a red car </description><think>x</think>", "a red car"),
        ("<description>one</description><description>two</description>", "one"),
        ("<description></description>", ""),
        ("<think>no description</think>\\boxed{B}", None),  # not the whole response (Vision-SR1's leak)
        ("<description>unclosed", None),
    ],
)
def test_description(text, expected):
    assert description(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>x</think><answer>red</answer>", "red"),
        ("<answer>\\boxed{B}</answer>", "B"),
        ("<answer>The answer is \\boxed{\\frac{1}{2}}.</answer>", "\\frac{1}{2}"),
        ("<answer>old</answer> <answer>new</answer>", "new"),
        ("<think>x</think> \\boxed{3}", "3"),  # no tag: the last box
        ("\\boxed{1} <answer>2</answer>", "2"),  # the tag wins over a box outside it
        ("<think>x</think>\nso it is B", None),  # no last-line fallback by default
        ("", None),
    ],
)
def test_final_answer(text, expected):
    assert final_answer(text) == expected


TAG_SOUP = st.lists(
    st.sampled_from(["<answer>", "</answer>", "\\boxed{", "{", "}", "<description>", "</description>", "\n", "x", " "])
    | st.text(max_size=5),
    max_size=30,
).map("".join)


@settings(max_examples=100, deadline=None)
@given(TAG_SOUP)
def test_extraction_never_raises(text):
    for which in ("first", "last", "split"):
        result = answer_tag(text, which)
        assert result is None or result == result.strip()
    for extract in (boxed, last_line, description, final_answer):
        result = extract(text)
        assert result is None or isinstance(result, str)


@settings(max_examples=100, deadline=None)
@given(st.text().filter(lambda s: "<answer>" not in s and "</answer>" not in s))
def test_tagged_text_round_trips(content):
    assert answer_tag(f"junk<answer>{content}</answer>", "last") == content.strip()
    assert answer_tag(f"junk<answer>{content}</answer>", "split") == content.strip()


@settings(max_examples=100, deadline=None)
@given(TAG_SOUP)
def test_tag_scanning_matches_the_papers_regexes(text):
    """The str.find scans give exactly re.findall / re.search results (they exist only to stay linear)."""
    assert tag_contents(text, "<answer>", "</answer>") == re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)
    assert tag_contents(text, "{", "}") == re.findall(r"\{(.*?)\}", text, re.DOTALL)
    first = re.search(r"<answer>(.*?)</answer>", text, re.DOTALL)
    assert answer_tag(text, "first") == (first.group(1).strip() if first else None)
    found = re.search(r"<description>(.*?)</description>", text, re.DOTALL)
    assert description(text) == (found.group(1).strip() if found else None)
