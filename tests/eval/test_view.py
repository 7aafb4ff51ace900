"""``visionr3 view``: real records (RecordWriter), real images (Pillow), real rollout-dump lines, a real browser.

The fixture is one synthetic question image — a 1600×1200 canvas with a small blue square — stored as an 800×600
display copy, as the evaluator stores a downscaled question image: the boxes are in source pixels, so a box drawn at
the right place proves the viewBox convention. Chromium (Debian's package, headless, no network) loads the report
from a file: a screenshot must show the pure-red box strokes, and the page's own filters must hide cards.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionr3 import cli
from visionr3.eval.protocol import EvalProtocol
from visionr3.eval.records import RecordWriter, SampleRecord, ToolCall, Turn, sample_key
from visionr3.eval.cards import ViewError, load_cards
from visionr3.eval.view import (
    MAX_SIDE,
    box_rect,
    build_report,
    configure,
    embed_image,
    run,
    write_report,
)
from visionr3.testing.conversations import marked_canvas

SOURCE = (1600, 1200)
SQUARE = (1000, 700, 1040, 740)
CROP = [960, 660, 1080, 780]  # around the square, source pixels
WIDE = [100, 150, 500, 450]  # hrbench's crop (its file is missing)
MALICIOUS = '<script>alert("pwned")</script><img src=x onerror="alert(1)">'


# --- fixture data -------------------------------------------------------------------------------------------------


def _record(benchmark: str, sample_id: str, **fields) -> SampleRecord:
    base = dict(
        key=sample_key(benchmark, sample_id, 0),
        benchmark=benchmark,
        sample_id=sample_id,
        category="colour",
        data_file="synthetic.parquet",
        question="What colour is the small square?",
        options=["red", "blue", "green", "yellow"],
        answer="B",
        answer_text="blue",
        image_size=list(SOURCE),
        seen_size=[812, 616],
        model="tiny-qwen2_5_vl",
        protocol=EvalProtocol(recipe="zoom").as_dict(),
    )
    base.update(fields)
    return SampleRecord(**base)


def write_fixture(folder: Path) -> dict[str, Path]:
    """Eval results (4 samples), a rollout-dump folder (steps 2 and 10) and their images, under ``folder``."""
    canvas = marked_canvas(size=SOURCE, box=SQUARE, colour="blue")
    images = folder / "results.images"
    images.mkdir(parents=True)
    canvas.image.resize((SOURCE[0] // 2, SOURCE[1] // 2)).save(images / "question.png")  # the display copy
    canvas.image.crop(tuple(CROP)).resize((240, 240)).save(images / "vstar_s1_crop1.png")
    canvas.image.save(images / "hrbench_h1_full.png")  # the resize tool's full-resolution re-render
    call = '<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [490, 340, 550, 400]}}</tool_call>'
    bad_call = '<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [1, 2, 3]}}</tool_call>'
    records = [
        _record(
            "vstar", "s1", prediction="B", correct=True, score=1.0,
            reward={"score": 1.0, "accuracy": 1.0, "format": 1.0, "tool": 0.5},
            turns=[
                Turn("assistant", "<think>The square is tiny; zoom in.</think>" + call),
                Turn("tool", "<image>", images=[1]),
                Turn("assistant", bad_call),
                Turn("tool", "Error: bbox_2d must be four numbers"),
                Turn("assistant", "<think>It is blue.</think><answer>B</answer>"),
            ],
            tool_calls=[
                ToolCall("image_zoom_in_tool", {"bbox_2d": [490, 340, 550, 400]}, valid=True, box=CROP, image=1),
                ToolCall("image_zoom_in_tool", {"bbox_2d": [1, 2, 3]}, error="bbox_2d must be four numbers"),
            ],
            crop_boxes=[CROP],
            images=["results.images/question.png", "results.images/vstar_s1_crop1.png"],
            num_turns=3,
        ),
        _record(
            "vstar", "s2", question="Is it <b>bold</b> & blue?", prediction="C", correct=False, score=0.0,
            reward={"score": 0.0, "accuracy": 0.0, "format": 1.0, "tool": 0.0},
            turns=[Turn("assistant", MALICIOUS + "<answer>C</answer>")],
            images=["results.images/question.png"],
            num_turns=1,
        ),
        _record(
            "hrbench", "h1", prediction="A", correct=False, score=0.1,
            reward={"score": 0.1, "accuracy": 0.0, "format": 1.0, "tool": 0.1},
            turns=[
                Turn("assistant", '<tool_call>{"name": "image_resize_tool", "arguments": {}}</tool_call>'),
                Turn("tool", "<image>", images=[1]),
                Turn("assistant", "<tool_call>crop</tool_call>"),
                Turn("tool", "<image>", images=[2]),
                Turn("assistant", "<answer>A</answer>"),
            ],
            tool_calls=[
                ToolCall("image_resize_tool", {}, valid=True, image=1),
                ToolCall("image_zoom_in_tool", {"bbox_2d": [50, 75, 250, 225]}, valid=True, box=WIDE, image=2),
            ],
            crop_boxes=[WIDE],
            images=["results.images/question.png", "results.images/hrbench_h1_full.png", "results.images/gone.png"],
            num_turns=3,
        ),
        _record(
            "hrbench", "h2", prediction="B", correct=True, score=1.0,
            reward={"score": 1.0, "accuracy": 1.0, "format": 1.0, "tool": 0.0},
            turns=[Turn("assistant", "<answer>B</answer>")],
            images=["results.images/deleted_question.png"],
            num_turns=1,
        ),
    ]
    results = folder / "results.jsonl"
    with RecordWriter(results) as writer:
        writer.write_all(records)

    dumps = folder / "rollouts"
    (dumps / "img").mkdir(parents=True)
    canvas.image.save(dumps / "img" / "q.png")
    small = io.BytesIO()
    canvas.image.resize((160, 120)).save(small, format="PNG")
    step2 = [
        {
            "input": "system\nYou are a helpful assistant.\nuser\nWhat colour is the small square?",
            "output": "<think>zoom</think><tool_call>...</tool_call>\n<answer>blue</answer>",
            "gts": "blue", "score": 1.0, "step": 2, "accuracy": 1.0, "format": 1.0, "tool_calls": 1,
            "crop_boxes": [CROP], "image": "img/q.png", "request_id": "req-1",
            "assistant_turns": ["<think>zoom</think><tool_call>...</tool_call>", "<answer>blue</answer>"],
        },
        {
            "input": "user\nWhat colour?", "output": "<answer>red</answer>", "gts": "blue", "score": 0.0, "step": 2,
            "accuracy": 0.0, "tool_calls": 0, "crop_boxes": [], "request_id": "req-2",
            "image": "data:image/png;base64," + base64.b64encode(small.getvalue()).decode(),
        },
    ]
    (dumps / "2.jsonl").write_text("".join(json.dumps(row) + "\n" for row in step2))
    step10 = {"input": "user\nWhat colour?", "output": "blue", "gts": ["blue"], "score": 0.5, "step": 10, "uid": "u-10"}
    (dumps / "10.jsonl").write_text(json.dumps(step10) + "\n")
    return {"results": results, "rollouts": dumps}


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    folder = tmp_path_factory.mktemp("view")
    paths = write_fixture(folder)
    paths["report"] = write_report(
        [paths["results"]], folder / "report.html", title="visionr3 view · fixture <report>"
    )
    return paths


# --- reading the HTML back ----------------------------------------------------------------------------------------


class Page(HTMLParser):
    """The parts of a report the tests look at: cards (data-* and visibility), and per card its SVG and images."""

    def __init__(self, text: str):
        super().__init__()
        self.cards: list[dict] = []
        self.scripts = 0
        self.external: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for name in ("src", "href"):
            if a.get(name) and not a[name].startswith("data:"):
                self.external.append(f"{tag} {name}={a[name]}")
        if tag == "script":
            self.scripts += 1
        if tag in ("link", "iframe", "object", "embed"):
            self.external.append(tag)
        if tag == "article" and "card" in (a.get("class") or ""):
            self.cards.append({**a, "boxes": [], "svg": None, "images": [], "svg_image": None})
        elif self.cards and tag == "svg":
            self.cards[-1]["svg"] = a
        elif self.cards and tag == "image":
            self.cards[-1]["svg_image"] = a
        elif self.cards and tag == "rect" and a.get("class") == "box":
            self.cards[-1]["boxes"].append(tuple(float(a[k]) for k in ("x", "y", "width", "height")))
        elif self.cards and tag == "img":
            self.cards[-1]["images"].append(a["src"])

    def card(self, key: str) -> dict:
        return next(c for c in self.cards if c["data-key"] == key)

    def visible(self) -> list[str]:
        return [c["data-key"] for c in self.cards if "hidden" not in c]


def decode(url: str) -> Image.Image:
    assert url.startswith("data:image/")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


# --- the report's HTML ----------------------------------------------------------------------------------------------


def test_cards_counts_and_filter_attributes(fixture):
    page = Page(fixture["report"].read_text())
    assert [c["data-key"] for c in page.cards] == ["vstar/s1#0", "vstar/s2#0", "hrbench/h1#0", "hrbench/h2#0"]
    attrs = {c["data-key"]: (c["data-benchmark"], c["data-correct"], c["data-tool"]) for c in page.cards}
    assert attrs == {
        "vstar/s1#0": ("vstar", "true", "used"),
        "vstar/s2#0": ("vstar", "false", "unused"),
        "hrbench/h1#0": ("hrbench", "false", "used"),
        "hrbench/h2#0": ("hrbench", "true", "unused"),
    }
    text = fixture["report"].read_text()
    assert '<b id="shown">4</b> of <span id="total">4</span>' in text
    assert "2 of 4 (50.0%)" in text  # correct
    assert '<option value="hrbench">hrbench</option><option value="vstar">vstar</option>' in text
    assert "<dt>shuffle_options</dt><dd>true</dd>" in text  # the protocol, once, in the header
    assert text.count("<dt>shuffle_options</dt>") == 1


def test_untrusted_text_is_escaped_and_page_is_self_contained(fixture):
    text = fixture["report"].read_text()
    page = Page(text)
    assert MALICIOUS not in text and "<script>alert" not in text
    assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in text
    assert "Is it &lt;b&gt;bold&lt;/b&gt; &amp; blue?" in text
    assert "<title>visionr3 view · fixture &lt;report&gt;</title>" in text
    assert page.scripts == 1  # ours only
    assert page.external == []  # every image is a data: URL; no stylesheet, font or script is fetched
    assert "default-src 'none'; img-src data:" in text


def test_boxes_are_svg_rects_in_source_pixels(fixture):
    page = Page(fixture["report"].read_text())
    s1 = page.card("vstar/s1#0")
    # the 800x600 display copy is stretched over a viewBox of the 1600x1200 source, so the box needs no rescaling
    assert s1["svg"]["viewbox"] == "0 0 1600 1200"
    assert (s1["svg_image"]["width"], s1["svg_image"]["height"]) == ("1600", "1200")
    assert decode(s1["svg_image"]["href"]).size == (800, 600)
    assert s1["boxes"] == [(960, 660, 120, 120)]
    assert page.card("hrbench/h1#0")["boxes"] == [(100, 150, 400, 300)]
    assert page.card("vstar/s2#0")["boxes"] == []
    malformed = ([1, 2, 3], [0, 0, float("nan"), 1], [0, 0, True, 1], "x")
    assert box_rect([3, 4, 1, 2]) == (1, 2, 2, 2) and [box_rect(b) for b in malformed] == [None] * 4


def test_tool_images_in_turn_order_downscaled_and_missing_placeholders(fixture):
    text = fixture["report"].read_text()
    page = Page(text)
    s1 = page.card("vstar/s1#0")
    assert [decode(url).size for url in s1["images"]] == [(240, 240)]  # the crop, inline in its tool turn
    h1 = page.card("hrbench/h1#0")
    # the 1600x1200 re-render is embedded at MAX_SIDE on the long side; the missing crop is a placeholder, no crash
    assert [decode(url).size for url in h1["images"]] == [(MAX_SIDE, MAX_SIDE * 3 // 4)]
    assert "missing image: results.images/gone.png" in text
    h2 = page.card("hrbench/h2#0")  # missing question image: a placeholder inside the same SVG frame
    assert h2["svg"]["viewbox"] == "0 0 1600 1200" and h2["svg_image"] is None
    assert "missing image: results.images/deleted_question.png" in text
    assert "bbox_2d must be four numbers" in text  # the invalid call's error, in the calls table and its turn
    gold = '<li class="gold"><b>B.</b> blue <span class="mark gold">gold</span> '
    assert gold + '<span class="mark pred">predicted</span>' in text


def test_embed_image_prefers_the_smaller_encoding_and_reads_data_urls(tmp_path):
    photo = Image.effect_noise((640, 480), 60).convert("RGB")  # noise: JPEG is far smaller than PNG
    photo.save(tmp_path / "noise.png")
    got = embed_image(str(tmp_path / "noise.png"), max_side=320)
    assert got.url.startswith("data:image/jpeg;base64,") and (got.width, got.height) == (640, 480)
    assert decode(got.url).size == (320, 240)
    again = embed_image(got.url.replace("image/jpeg", "image/png"))  # a data: URL is decoded by Pillow, not trusted
    assert (again.width, again.height) == (320, 240)
    marked_canvas(size=(640, 480), box=(300, 200, 320, 220)).image.save(tmp_path / "flat.png")
    assert embed_image(str(tmp_path / "flat.png")).url.startswith("data:image/png;base64,")  # flat canvas: PNG
    with pytest.raises(FileNotFoundError):
        embed_image(str(tmp_path / "absent.png"))


def test_rollout_dumps_folder_in_step_order(fixture, tmp_path):
    out = write_report([fixture["rollouts"]], tmp_path / "rollouts.html")
    text = out.read_text()
    page = Page(text)
    keys = [c["data-key"] for c in page.cards]
    assert keys == ["step 2 · req-1", "step 2 · req-2", "step 10 · u-10"]  # 2.jsonl before 10.jsonl
    attrs = [(c["data-benchmark"], c["data-correct"], c["data-tool"], c["data-kind"]) for c in page.cards]
    assert attrs == [
        ("rollouts", "true", "used", "rollout"),
        ("rollouts", "false", "unused", "rollout"),
        ("rollouts", "unknown", "unknown", "rollout"),
    ]
    first = page.card("step 2 · req-1")
    assert first["svg"]["viewbox"] == "0 0 1600 1200" and first["boxes"] == [(960, 660, 120, 120)]
    assert decode(first["svg_image"]["href"]).size == (1024, 768)
    assert decode(page.card("step 2 · req-2")["svg_image"]["href"]).size == (160, 120)
    assert "<th>format</th><td>1</td>" in text and "<th>tool_calls</th><td>1</td>" in text  # the reward breakdown
    assert "<th>request_id</th><td>req-1</td>" in text  # non-numeric keys are shown apart
    assert "assistant · turn 2</div><pre>&lt;answer&gt;blue&lt;/answer&gt;</pre>" in text
    assert "<th>gts</th><td>[&quot;blue&quot;]</td>" in text
    assert "training steps</th><td>2–10" in text


def test_mixed_inputs_and_command_line_filters(fixture, tmp_path, capsys):
    out = tmp_path / "wrong.html"
    argv = ["view", str(fixture["results"]), str(fixture["rollouts"]), "--out", str(out), "--only", "wrong"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == str(out)
    assert printed[1].startswith("visionr3 view: 3 of 7 samples from 3 file(s) (0 correct, 1 used a tool)")
    assert [c["data-key"] for c in Page(out.read_text()).cards] == ["vstar/s2#0", "hrbench/h1#0", "step 2 · req-2"]
    stats = build_report([fixture["results"]], tmp_path / "b.html", benchmark=["hrbench"], tool="used", limit=5)
    assert (stats.shown, stats.total, stats.used_tool) == (1, 4, 1)
    assert len(load_cards([fixture["results"]])[0]) == 4
    with pytest.raises(ViewError, match="no samples of benchmark vstr; the inputs have: hrbench, vstar"):
        build_report([fixture["results"]], tmp_path / "d.html", benchmark="vstr")
    assert build_report(fixture["results"], tmp_path / "c.html", limit=2).shown == 2


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"foo": 1}\n', r"bad\.jsonl:2: neither a visionr3 eval record .* its keys: foo"),
        ('{"schema": "other/2", "key": "x"}\n', r"bad\.jsonl:2: schema is 'other/2'"),
        ('{"schema": "visionr3.eval.sample/1", "key": "k"}\n', r"bad\.jsonl:2: not a valid visionr3\.eval\.sample/1"),
        ("not json\n", r"bad\.jsonl:2: not JSON"),
        ("[1, 2]\n", r"bad\.jsonl:2: expected a JSON object, got list"),
    ],
)
def test_bad_line_is_a_clear_error(tmp_path, content, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "q", "output": "a", "gts": "a", "score": 1.0, "step": 1}\n' + content)
    with pytest.raises(ViewError, match=message):
        write_report([bad], tmp_path / "r.html")


def test_odd_rollout_fields_are_shown_not_guessed(tmp_path):
    line = {"input": "q", "output": "a", "image": "x.png", "image_size": [64, 48], "crop_boxes": [[1, 2, 3, 4], [5, 6]]}
    (tmp_path / "0.jsonl").write_text(json.dumps(line) + "\n")
    text = write_report([tmp_path], tmp_path / "r.html").read_text()
    card = Page(text).cards[0]
    assert card["svg"]["viewbox"] == "0 0 64 48" and card["svg_image"] is None  # missing image: placeholder frame
    assert card["boxes"] == [(1, 2, 2, 2)]
    assert "not drawn (not four numbers): #2 [5, 6]" in text
    assert (card["data-correct"], card["data-tool"]) == ("unknown", "used")


def test_command_line_reports_bad_input_in_one_line(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    configure(parser)
    (tmp_path / "empty").mkdir()
    for target, message in [(tmp_path / "absent.jsonl", "no such file"), (tmp_path / "empty", "no *.jsonl files")]:
        assert run(parser.parse_args([str(target), "--out", str(tmp_path / "r.html")])) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"visionr3 view: error: {target}") and message in err
    assert not (tmp_path / "r.html").exists()


# --- in a real browser ----------------------------------------------------------------------------------------------


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Debian's Chromium, headless, with no network traffic of its own (flags from the machine notes)."""
    exe = shutil.which("chromium")
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed; CI must install it (`make browser`, Debian package chromium)")
        pytest.skip("chromium is not installed (`make browser` installs Debian's package)")
    profile = tmp_path / f"profile{len(list(tmp_path.glob('profile*')))}"
    command = [
        exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", *args,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_browser_screenshot_shows_the_boxes(fixture, tmp_path):
    png = tmp_path / "shot.png"
    chromium(tmp_path, f"--screenshot={png}", "--window-size=1280,2000", fixture["report"].as_uri())
    shot = Image.open(png).convert("RGB")
    assert shot.size == (1280, 2000)
    colours = shot.getcolors(maxcolors=1 << 20)
    assert len(colours) > 50, "blank screenshot"  # text, badges, images: a rendered page has many colours
    pixels = np.asarray(shot).astype(int)
    ys_all, xs_all = np.nonzero((pixels[..., 0] >= 230) & (pixels[..., 1] <= 40) & (pixels[..., 2] <= 40))
    red = list(zip(xs_all.tolist(), ys_all.tolist()))
    # vstar/s1's 120x120 source box, drawn in a <=460 px wide 1600-px viewBox: a square of ~34 px sides in 3 px
    # strokes (~400 px) plus its label; later cards on the screen add hrbench/h1's wider box (~1200 px).
    assert 300 <= len(red) <= 6000, len(red)
    top = min(red, key=lambda xy: (xy[1], xy[0]))
    square = [(x, y) for x, y in red if top[1] - 5 <= y <= top[1] + 60 and top[0] - 60 <= x <= top[0] + 60]
    xs, ys = sorted(x for x, _ in square), sorted(y for _, y in square)
    assert 25 <= xs[-1] - xs[0] <= 60 and 25 <= ys[-1] - ys[0] <= 60  # the first box is a ~34 px square


@pytest.mark.parametrize(
    "fragment, visible",
    [
        ("#only=wrong&tool=used", ["hrbench/h1#0"]),
        ("#benchmark=vstar&q=PWNED", ["vstar/s2#0"]),
    ],
)
def test_browser_filters_hide_cards(fixture, tmp_path, fragment, visible):
    done = chromium(tmp_path, "--dump-dom", fixture["report"].as_uri() + fragment)
    page = Page(done.stdout)
    assert len(page.cards) == 4
    assert page.visible() == visible
    assert f'<b id="shown">{len(visible)}</b>' in done.stdout
