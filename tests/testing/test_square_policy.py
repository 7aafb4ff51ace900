"""The scripted square policy (visionr3.testing.square_policy): what it says in each plan, read from the pixels of
the messages it is sent, and that it refuses a conversation it cannot continue with a message that says why."""

import json
import random
import re

import pytest
from PIL import Image

from visionr3.demo.synthetic import make_sample
from visionr3.eval.openai_backend import image_data_url
from visionr3.testing.square_policy import PolicyError, SquarePolicy, square_box, square_colour

QUESTION = "What is the colour of the small square?\nA. yellow\nB. red\nC. blue\nD. green"


def sample(colour: str, size=(224, 224)):
    rng = random.Random(3)
    while (drawn := make_sample(rng, size=size, side=12)).colour != colour:
        pass
    return drawn


def user(image: Image.Image, text: str = QUESTION) -> dict:
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_data_url(image)}},
                                        {"type": "text", "text": text}]}


def call_of(reply: str) -> str:
    return re.search(r"<tool_call>\n(.*)\n</tool_call>", reply, re.S).group(1)


def test_zoom_then_the_colour_of_the_crop():
    drawn = sample("blue")
    policy = SquarePolicy()
    first = policy([user(drawn.image)], "m")
    call = json.loads(call_of(first))
    x1, y1, x2, y2 = call["arguments"]["bbox_2d"]
    assert call["name"] == "image_zoom_in_tool"
    assert x1 <= drawn.box[0] and y1 <= drawn.box[1] and x2 >= drawn.box[2] and y2 >= drawn.box[3]
    crop = drawn.image.crop((x1, y1, x2, y2)).resize(((x2 - x1) * 2, (y2 - y1) * 2))
    conversation = [user(drawn.image), {"role": "assistant", "content": first}, user(crop, "<tool_response>")]
    assert policy(conversation, "m").endswith("<answer>C</answer>")  # C. blue
    with pytest.raises(PolicyError, match="should see 2 image"):  # the crop never came back
        policy([user(drawn.image), {"role": "assistant", "content": first}, {"role": "user", "content": "Error"}], "m")


def test_a_malformed_call_is_not_json_and_an_outside_box_lies_beyond_the_image():
    drawn = sample("red")
    with pytest.raises(json.JSONDecodeError):
        json.loads(call_of(SquarePolicy({"red": "malformed"})([user(drawn.image)], "m")))
    x1, y1, _, _ = json.loads(call_of(SquarePolicy({"red": "outside"})([user(drawn.image)], "m")))["arguments"]["bbox_2d"]
    assert x1 > 224 and y1 > 224


@pytest.mark.parametrize("plan", ["malformed", "outside"])
def test_after_a_bad_call_the_colour_of_the_question_image(plan):
    drawn = sample("red")
    policy = SquarePolicy({"red": plan}, wrong={"red"})
    first = policy([user(drawn.image)], "m")
    second = policy([user(drawn.image), {"role": "assistant", "content": first}, {"role": "user", "content": "x"}], "m")
    assert second.endswith("<answer>A</answer>")  # red is answered wrongly: with the next colour, yellow (A)
    with pytest.raises(PolicyError, match="beyond the script"):
        policy([user(drawn.image), {"role": "assistant", "content": first}, {"role": "assistant", "content": second}], "m")


def test_answer_at_once_in_words_without_options():
    drawn = sample("green")
    assert SquarePolicy({"green": "answer"})([user(drawn.image, "Which colour?")], "m").endswith("<answer>green</answer>")


def test_what_it_cannot_see_is_an_error():
    with pytest.raises(PolicyError, match="holds no image"):
        SquarePolicy()([{"role": "user", "content": "hi"}], "m")
    with pytest.raises(PolicyError, match="no square in the 64x64 image"):
        square_box(Image.new("RGB", (64, 64), (236, 236, 230)))
    with pytest.raises(ValueError, match="plans"):
        SquarePolicy({"purple": "zoom"})
    assert square_colour(sample("yellow").image) == "yellow"
