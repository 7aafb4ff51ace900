"""``visionr3 prepare``: every public format, written small in its own layout with real images, through the real CLI.

The output is read back with pyarrow and, for representative formats, with verl's own dataset class (our
``VisionRLDataset``, prompt-length filter included: verl's own filter silently drops rows it cannot process, ours
stops naming the row). A VisionThink Smart
row goes on through verl's ``AgentLoopWorker``: the policy's first view is the target size and the resize tool
renders the original at twice that. Bad records of each kind stop the command with file, row, id and field, or are
skipped, counted and listed.
"""

import base64
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from visionr3.cli import main
from visionr3.data import converters, prompts
from visionr3.data.prepare import FORMATS, benchmark_name, parse_path_map
from visionr3.data.rows import RowError

COLOURS = ["red", "blue", "green", "yellow"]


def encoded(size, colour, fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


def write_image(path: Path, size, colour, fmt="JPEG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encoded(size, colour, fmt))
    return path


def write_jsonl(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def vstar_record(i, **changes):
    record = {
        "image": f"direct_attributes/sa_{i}.jpg",
        "text": f"What is the colour of the cup?\n(A) {COLOURS[i]}\n(B) black\n(C) white\n(D) pink\n"
        "Answer with the option's letter from the given choices directly.",
        "label": "A",
        "category": "direct_attributes",
        "question_id": i,
    }
    record.update(changes)
    return {k: v for k, v in record.items() if v is not None}


# --- one small source per format (two records each) --------------------------------------------------------------


def build_visionthink(tmp_path, smart):
    import datasets

    features = {
        "problem": datasets.Value("string"),
        "images": datasets.List(datasets.Image()),
        "original_answer": datasets.Value("string"),
        "doc_id": datasets.Value("string"),
        "data_source": datasets.Value("string"),
    }
    data = {
        "problem": ["<image>\nWhat colour is the square?", "<image>\nWhat is written on the sign?"],
        "images": [[{"bytes": encoded((896, 672), c), "path": None}] for c in ("red", "blue")],
        "original_answer": ["red", "STOP"],
        "doc_id": ["chartqa_1", "ocr_2"],
        "data_source": ["open_source", "open_source_require_high"],
    }
    if smart:
        features["info"] = {name: datasets.Value("int64") for name in ("tgt_width", "tgt_height")}
        features["info"]["use_tool"] = datasets.Value("bool")
        data["info"] = [
            {"tgt_width": 112, "tgt_height": 84, "use_tool": True},
            {"tgt_width": 224, "tgt_height": 168, "use_tool": False},
        ]
    datasets.Dataset.from_dict(data, features=datasets.Features(features)).save_to_disk(tmp_path / "visionthink")
    return tmp_path / "visionthink", []


def build_vlm_r3(tmp_path):
    write_image(tmp_path / "vlm_r3/images/textvqa/1.jpg", (640, 480), "red")
    write_image(tmp_path / "vlm_r3/images/gqa/2.jpg", (320, 480), "blue")
    records = [
        {"image_path": "textvqa/1.jpg", "question": "What colour is the wall?", "answer": "<answer>red</answer>",
         "source": "textvqa"},
        {"image_path": "gqa/2.jpg", "question": "Is the sky blue?", "answer": "<answer>yes</answer>", "source": "gqa"},
    ]
    (tmp_path / "vlm_r3/rl.json").write_text(json.dumps(records))
    return tmp_path / "vlm_r3/rl.json", ["--image-root", str(tmp_path / "vlm_r3/images")]


def build_vision_sr1(tmp_path):
    """As a Hugging Face snapshot: a folder of parquet shards written by `datasets` (image features included)."""
    import datasets

    data = {
        "images": [[{"bytes": encoded((300, 200), c), "path": None}] for c in ("red", "blue")],
        "problem": ["<image>What colour is the image?", "How many squares are there?"],
        "answer": ["red", "3"],
    }
    text = datasets.Value("string")
    features = datasets.Features({"images": datasets.List(datasets.Image()), "problem": text, "answer": text})
    (tmp_path / "sr1/data").mkdir(parents=True)
    datasets.Dataset.from_dict(data, features=features).to_parquet(tmp_path / "sr1/data/train-00000-of-00001.parquet")
    return tmp_path / "sr1", []


def build_deepeyes(tmp_path):
    import pandas as pd

    rows = [
        {
            "data_source": "vstar",
            "prompt": [{"role": "system", "content": "tools..."}, {"role": "user", "content": "<image>\nWhat colour?"}],
            "images": [{"bytes": encoded((1000, 800), "red"), "path": None}],
            "ability": "perception",
            "env_name": "visual_toolbox_v2",
            "reward_model": {"ground_truth": "red", "style": "model"},
            "extra_info": {
                "answer": "red", "index": "train_7", "question": "What colour is the square?", "split": "train"
            },
        },
        {  # data_thinklite_reasoning_acc: no env (trained without tools), here without an image
            "data_source": "thinklite_eureka",
            "prompt": [{"role": "user", "content": "What is 2+2? Put the final answer in \\boxed{}."}],
            "images": [],
            "ability": "math",
            "env_name": "",
            "reward_model": {"ground_truth": "4", "style": "model"},
            "extra_info": {"answer": "4", "index": "train_8", "question": "What is 2+2?", "split": "train"},
        },
    ]
    pd.DataFrame(rows).to_parquet(tmp_path / "deepeyes.parquet")
    return tmp_path / "deepeyes.parquet", []


def build_vstar(tmp_path):
    for i in range(2):
        write_image(tmp_path / f"vstar_bench/direct_attributes/sa_{i}.jpg", (1600, 1200), COLOURS[i])
    return write_jsonl(tmp_path / "vstar_bench/test_questions.jsonl", [vstar_record(0), vstar_record(1, label="B")]), []


def build_mmvp(tmp_path):
    for i in (1, 2):
        write_image(tmp_path / f"MMVP/MMVP Images/{i}.jpg", (224, 224), COLOURS[i])
    with open(tmp_path / "MMVP/Questions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Index", "Question", "Options", "Correct Answer"])
        writer.writerow([1, "Are the butterfly's wings closer to being open or closed?", "(a) Open (b) Closed", "(a)"])
        writer.writerow([2, "Are the butterfly's wings closer to being open or closed?", "(a) Open (b) Closed", "(b)"])
    return tmp_path / "MMVP/Questions.csv", []


def build_cvbench(tmp_path):
    write_image(tmp_path / "CV-Bench/img/2D/count/ade20k_10.png", (512, 384), "red", "PNG")
    write_image(tmp_path / "CV-Bench/img/3D/depth/omni3d_1.png", (512, 384), "blue", "PNG")
    records = [
        {
            "idx": 0, "type": "2D", "task": "Count", "filename": "img/2D/count/ade20k_10.png", "source": "ADE20K",
            "prompt": "How many organs are in the image? Select from the following choices.\n"
            "(A) 3\n(B) 2\n(C) 1\n(D) 0",
            "question": "How many organs are in the image?", "choices": [3, 2, 1, 0], "answer": "(C)",
        },
        {
            "idx": 1, "type": "3D", "task": "Depth", "filename": "img/3D/depth/omni3d_1.png", "source": "Omni3D",
            "prompt": "Which is closer to the camera?\n(A) the chair\n(B) the table", "answer": "(B)",
        },
    ]
    return write_jsonl(tmp_path / "CV-Bench/test_2d.jsonl", records), []


def build_hrbench(tmp_path, rows=None):
    rows = rows or [
        {"index": 10, "question": "What colour is the car?", "answer": "B", "A": "red", "B": "blue", "C": "green",
         "D": "white", "category": "single", "cycle_category": "10",
         "image": base64.b64encode(encoded((1024, 768), "blue", "JPEG")).decode()},
        {"index": 11, "question": "What colour is the car?", "answer": "A", "A": "blue", "B": "green", "C": "white",
         "D": "red", "category": "cross", "cycle_category": "10",
         "image": base64.b64encode(encoded((1024, 768), "blue", "JPEG")).decode()},
    ]
    path = tmp_path / "hr_bench_4k.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    return path, []


def mme_record(i, **changes):
    """A record of MME-RealWorld's official annotation JSON."""
    record = {
        "Question_id": f"perception/remote_sensing/color/{i:04d}",
        "Image": f"remote_sensing/{i:05d}_Toronto.png",
        "Text": "What is the colour of the roof?",
        "Question Type": "Multiple Choice",
        "Answer choices": [f"(A) {COLOURS[i]}", "(B) black", "(C) white", "(D) pink",
                           "(E) The image does not feature the roof."],
        "Ground truth": "AB"[i],
        "Category": "color",
        "Subtask": "Remote Sensing",
        "Task": "Perception",
    }
    record.update(changes)
    return {k: v for k, v in record.items() if v is not None}


def build_mme_realworld(tmp_path, records=None):
    for i in range(2):
        write_image(tmp_path / f"MME-RealWorld/remote_sensing/{i:05d}_Toronto.png", (1500, 1000), COLOURS[i], "PNG")
    path = tmp_path / "MME-RealWorld/MME-RealWorld.json"
    path.write_text(json.dumps(records or [mme_record(0), mme_record(1)]))
    return path, []


def build_mme_realworld_lmms_eval(tmp_path, name="MME-RealWorld-CN-Lmms-eval"):
    """lmms-eval's parquet layout: base64 image text in ``bytes``, lettered ``multi-choice options``."""
    import pandas as pd

    rows = [
        {"bytes": base64.b64encode(encoded((800, 600), "red")).decode(), "path": "monitoring/1.png", "index": 7,
         "question": "车辆是什么颜色？", "multi-choice options": ["(A) 红色", "(B) 蓝色", "(C) 白色"],
         "answer": "A", "category": "Perception/Monitoring", "l2-category": "vehicle/attribute/color"},
        {"bytes": base64.b64encode(encoded((640, 480), "blue")).decode(), "path": "ad/2.png", "index": 8,
         "question": "What should the car do next?", "multi-choice options": ["(A) stop", "(B) turn left"],
         "answer": "(B)", "category": "Reasoning/Autonomous_Driving", "l2-category": "intention"},
    ]
    folder = tmp_path / name / "data"
    folder.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(folder / "train-00000-of-00001.parquet")
    return tmp_path / name


BUILDERS = {
    "visionthink_general": lambda tmp: build_visionthink(tmp, smart=False),
    "visionthink_smart": lambda tmp: build_visionthink(tmp, smart=True),
    "vlm_r3": build_vlm_r3,
    "vision_sr1": build_vision_sr1,
    "deepeyes": build_deepeyes,
    "vstar": build_vstar,
    "mmvp": build_mmvp,
    "cvbench": build_cvbench,
    "hrbench": build_hrbench,
    "mme_realworld": build_mme_realworld,
}

# format -> (agent_name (or one per row), data_sources, ground truths, image sizes per row, a text the first prompt
# contains)
EXPECTED = {
    "visionthink_general": ("visionr3_visionthink", ["open_source", "open_source_require_high"], ["red", "STOP"],
                            [[(896, 672)], [(896, 672)]], "Here is the image and question:\n<image>\nWhat colour"),
    "visionthink_smart": ("visionr3_visionthink", ["open_source", "open_source_require_high"], ["red", "STOP"],
                          [[(896, 672)], [(896, 672)]], "You may call ONE function tool per step"),
    "vlm_r3": ("visionr3_vlm_r3", ["textvqa", "gqa"], ["red", "yes"], [[(640, 480)], [(320, 480)]],
               '<image>What colour is the wall?\nYou need to first think about the reasoning process in your mind'),
    "vision_sr1": ("visionr3_vision_sr1", ["vision_sr1"] * 2, ["red", "3"], [[(300, 200)], [(300, 200)]],
                   "What colour is the image?<image> You are tasked with analyzing an image/video"),
    "deepeyes": (["visionr3_agent", "single_turn_agent"], ["vstar", "thinklite_eureka"], ["red", "4"],
                 [[(1000, 800)], []],
                 "<image>\nWhat colour is the square?\nThink first, call **image_zoom_in_tool** if needed"),
    "vstar": ("visionr3_agent", ["vstar"] * 2, ["A", "B"], [[(1600, 1200)], [(1600, 1200)]],
              "<image>\nWhat is the colour of the cup?\nA. red\nB. black\nC. white\nD. pink\n"
              "Answer with the option's letter from the given choices.\nThink first"),
    "mmvp": ("visionr3_agent", ["mmvp"] * 2, ["A", "B"], [[(224, 224)], [(224, 224)]],
             "closed?\nA. Open\nB. Closed\nAnswer with the option's letter"),
    "cvbench": ("visionr3_agent", ["cvbench"] * 2, ["C", "B"], [[(512, 384)], [(512, 384)]],
                "<image>\nHow many organs are in the image?\nA. 3\nB. 2\nC. 1\nD. 0\nAnswer with"),
    "hrbench": ("visionr3_agent", ["hrbench_4k"] * 2, ["B", "A"], [[(1024, 768)], [(1024, 768)]],
                "What colour is the car?\nA. red\nB. blue\nC. green\nD. white\nAnswer with"),
    "mme_realworld": ("visionr3_agent", ["mme_realworld"] * 2, ["A", "B"], [[(1500, 1000)], [(1500, 1000)]],
                      "<image>\nWhat is the colour of the roof?\nA. red\nB. black\nC. white\nD. pink\n"
                      "E. The image does not feature the roof.\nAnswer with"),
}


def prepare(tmp_path, format_name, *extra, out_name="out.parquet"):
    tmp_path.mkdir(parents=True, exist_ok=True)
    source, args = BUILDERS[format_name](tmp_path)
    out = tmp_path / out_name
    code = main(["prepare", format_name, str(source), "--out", str(out), *args, *extra])
    return code, source, out


def read_rows(path):
    return pq.read_table(path).to_pylist()


def image_size(entry):
    data = entry["bytes"] if entry.get("bytes") is not None else Path(entry["image"]).read_bytes()
    return Image.open(io.BytesIO(data)).size


# --- every format through the CLI ----------------------------------------------------------------------------------


def test_help_lists_every_format_from_the_installed_command():
    visionr3 = Path(sys.executable).parent / "visionr3"
    done = subprocess.run([str(visionr3), "prepare", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for name in FORMATS:
        assert name in done.stdout
    assert "--on-error" in done.stdout and "--keep-paths" in done.stdout


@pytest.mark.parametrize("format_name", list(EXPECTED))
def test_each_format_converts_to_rows(tmp_path, capsys, format_name):
    code, source, out = prepare(tmp_path, format_name)
    assert code == 0
    assert capsys.readouterr().out.strip() == f"prepare {format_name}: wrote 2 rows to {out}"
    rows = read_rows(out)
    agent, data_sources, truths, sizes, prompt_text = EXPECTED[format_name]
    assert [row["agent_name"] for row in rows] == ([agent] * 2 if isinstance(agent, str) else agent)
    assert [row["data_source"] for row in rows] == data_sources
    assert [row["reward_model"]["ground_truth"] for row in rows] == truths
    assert [[image_size(image) for image in row["images"]] for row in rows] == sizes
    assert prompt_text in rows[0]["prompt"][-1]["content"]
    for i, row in enumerate(rows):
        assert row["extra_info"]["index"] == i
        assert row["extra_info"]["question"] and "<image>" not in row["extra_info"]["question"]
        assert sum(m["content"].count("<image>") for m in row["prompt"]) == len(row["images"])
        assert all(image.get("path") is None for image in row["images"])  # bytes: self-contained for Ray jobs
    assert not list(tmp_path.glob(".*.partial")) and not list(tmp_path.glob("*.skipped.jsonl"))


@pytest.mark.parametrize("format_name", list(EXPECTED))
def test_a_relative_source_path_reads_the_same_images(tmp_path, monkeypatch, format_name):
    """README's commands pass relative paths (``visionr3 prepare mmvp MMVP/Questions.csv ...``): the image root
    derived from a relative source must not be joined twice (it read ``MMVP/MMVP/MMVP Images/1.jpg``)."""
    source, args = BUILDERS[format_name](tmp_path)
    monkeypatch.chdir(tmp_path)
    relative = [str(Path(a).relative_to(tmp_path)) if a.startswith(str(tmp_path)) else a for a in args]
    assert main(["prepare", format_name, str(source.relative_to(tmp_path)), "--out", "out.parquet", *relative]) == 0
    assert [[image_size(i) for i in row["images"]] for row in read_rows(tmp_path / "out.parquet")] == EXPECTED[
        format_name][3]


@pytest.mark.parametrize("image_root", [None, "MMVP", "MMVP/MMVP Images", "./MMVP/../MMVP"])
def test_mmvp_from_a_relative_path_keeps_the_images_absolute_path(tmp_path, monkeypatch, image_root):
    build_mmvp(tmp_path)
    monkeypatch.chdir(tmp_path)
    extra = ["--image-root", image_root] if image_root else []
    assert main(["prepare", "mmvp", "MMVP/Questions.csv", "--out", "mmvp.parquet", "--keep-paths", *extra]) == 0
    rows = read_rows(tmp_path / "mmvp.parquet")
    assert [row["images"][0]["image"] for row in rows] == [str(tmp_path / f"MMVP/MMVP Images/{i}.jpg") for i in (1, 2)]


def test_hrbench_image_references_are_resolved(tmp_path):
    """VLMEvalKit's TSVs store a shared image once; other rows hold that row's index instead (HR-Bench's cycles)."""
    source, _ = build_hrbench(tmp_path)
    rows = list(csv.DictReader(open(source, newline=""), delimiter="\t"))
    rows[0]["image"] = "11"  # row 0 refers forward to row 1 (index 11)
    rows.append({**rows[1], "index": "12", "image": "404"})
    with open(source, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "out.parquet"
    assert main(["prepare", "hrbench", str(source), "--out", str(out), "--on-error", "skip"]) == 0
    written = read_rows(out)
    assert [r["extra_info"]["source_id"] for r in written] == ["10", "11"]
    assert written[0]["images"][0]["bytes"] == written[1]["images"][0]["bytes"]
    skipped = json.loads((tmp_path / "out.skipped.jsonl").read_text())
    assert skipped["row"] == 2
    assert "refers to the image of index '404', which no row of the file holds" in skipped["message"]


def test_multiple_choice_rows_keep_what_evaluation_needs(tmp_path):
    assert prepare(tmp_path, "cvbench")[0] == 0
    first, second = (row["extra_info"] for row in read_rows(tmp_path / "out.parquet"))
    assert first["options"] == ["3", "2", "1", "0"]  # source order: evaluation shuffles, not prepare
    assert (first["answer"], first["answer_text"], first["source_id"]) == ("C", "1", "0")
    assert (first["category"], first["type"], first["source_dataset"]) == ("Count", "2D", "ADE20K")
    assert first["benchmark"] == "cvbench"
    assert first["question_stem"] == "How many organs are in the image?"
    assert first["question"] == prompts.mc_question(first["question_stem"], first["options"])
    assert first["prompt_style"] == "zoom"
    assert second["options"] == ["the chair", "the table"]
    assert second["question_stem"] == "Which is closer to the camera?"


def test_per_format_extra_info(tmp_path):
    assert prepare(tmp_path / "smart", "visionthink_smart")[0] == 0
    smart = read_rows(tmp_path / "smart/out.parquet")
    assert [r["extra_info"]["use_tool"] for r in smart] == [True, False]
    resized = [(r["images"][0]["resized_width"], r["images"][0]["resized_height"]) for r in smart]
    assert resized == [(224, 168), (448, 336)]  # 2 x info.tgt_*: visionr3_visionthink halves it for the first view
    assert smart[0]["extra_info"]["doc_id"] == "chartqa_1"
    assert prepare(tmp_path / "mmvp", "mmvp")[0] == 0
    assert [r["extra_info"]["pair_id"] for r in read_rows(tmp_path / "mmvp/out.parquet")] == [0, 0]
    assert prepare(tmp_path / "hr", "hrbench")[0] == 0
    hr = read_rows(tmp_path / "hr/out.parquet")
    assert [(r["extra_info"]["category"], r["extra_info"]["cycle_category"]) for r in hr] == [
        ("single", "10"), ("cross", "10")]
    assert prepare(tmp_path / "de", "deepeyes")[0] == 0
    de = read_rows(tmp_path / "de/out.parquet")
    assert [(r["extra_info"]["env_name"], r["extra_info"]["source_index"]) for r in de] == [
        ("visual_toolbox_v2", "train_7"), ("", "train_8")]
    assert de[1]["prompt"] == [{"role": "user", "content": "What is 2+2? Put the final answer in \\boxed{}."}]


def test_mme_realworld_in_both_layouts_keeps_task_subtask_and_category(tmp_path, capsys):
    assert prepare(tmp_path / "json", "mme_realworld")[0] == 0
    capsys.readouterr()
    first = read_rows(tmp_path / "json/out.parquet")[0]["extra_info"]
    assert (first["task"], first["subtask"], first["fine_category"]) == ("Perception", "Remote Sensing", "color")
    assert first["category"] == "Remote Sensing/color"
    assert first["source_id"] == "perception/remote_sensing/color/0000"
    assert first["options"][-1] == "The image does not feature the roof."  # letters stripped, source order kept

    source = build_mme_realworld_lmms_eval(tmp_path / "lmms")
    out = tmp_path / "lmms.parquet"
    assert main(["prepare", "mme_realworld", str(source), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"prepare mme_realworld: wrote 2 rows to {out}"
    rows = read_rows(out)
    assert [row["data_source"] for row in rows] == ["mme_realworld_cn"] * 2  # CN from the snapshot's name
    assert [row["reward_model"]["ground_truth"] for row in rows] == ["A", "B"]
    assert [image_size(row["images"][0]) for row in rows] == [(800, 600), (640, 480)]
    cn, driving = (row["extra_info"] for row in rows)
    assert cn["options"] == ["红色", "蓝色", "白色"] and cn["answer_text"] == "红色"
    assert cn["question"] == "车辆是什么颜色？\nA. 红色\nB. 蓝色\nC. 白色"
    assert (cn["task"], cn["subtask"], cn["fine_category"]) == ("Perception", "Monitoring", "vehicle/attribute/color")
    assert cn["category"] == "Monitoring/vehicle/attribute/color"
    assert (cn["source_id"], cn["benchmark"]) == ("7", "mme_realworld_cn")
    assert (driving["task"], driving["category"]) == ("Reasoning", "Autonomous_Driving/intention")


@pytest.mark.parametrize(
    "name, expected",
    [
        ("MME-RealWorld.json", "mme_realworld"),
        ("MME-RealWorld-CN.json", "mme_realworld_cn"),
        ("MME_RealWorld_CN.json", "mme_realworld_cn"),  # the published name
        ("MME-RealWorld-Lite-lmms-eval", "mme_realworld_lite"),
        ("mme_realworld_cn_lite.parquet", "mme_realworld_cn_lite"),
        ("scenic.json", "mme_realworld"),  # "cn" only as a word of the name
    ],
)
def test_mme_realworld_editions_are_told_apart_by_name(name, expected):
    assert benchmark_name("mme_realworld", Path("/data") / name) == expected


def test_agent_name_picks_its_prompt_style_and_options_override(tmp_path):
    assert prepare(tmp_path, "vstar", "--agent-name", "visionr3_vlm_r3")[0] == 0
    row = read_rows(tmp_path / "out.parquet")[0]
    assert row["agent_name"] == "visionr3_vlm_r3" and row["extra_info"]["prompt_style"] == "vlm_r3"
    assert row["prompt"][0]["content"].startswith("<image>What is the colour of the cup?\nA. red")
    assert row["prompt"][0]["content"].endswith(prompts.VLM_R3_PROMPT)
    source, out = tmp_path / "vstar_bench/test_questions.jsonl", tmp_path / "b.parquet"
    code = main(["prepare", "vstar", str(source), "--out", str(out), "--prompt-style", "visionthink_general",
                 "--agent-name", "my_loop", "--data-source", "vstar_val", "--limit", "1"])
    assert code == 0
    (row,) = read_rows(tmp_path / "b.parquet")
    assert (row["agent_name"], row["data_source"]) == ("my_loop", "vstar_val")
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]
    assert row["prompt"][0]["content"] == prompts.VISIONTHINK_GENERAL_SYSTEM_PROMPT


def test_sft_formats_of_the_cold_start_are_registered(tmp_path, capsys):
    """`visionr3 prepare vlir` runs visionr3.data.sft_rows' converter with the same reading, checks and summary."""
    source, args = build_vlm_r3(tmp_path)
    write_image(tmp_path / "vlm_r3/images/crops/1_0.jpg", (64, 64), "red")
    records = [{"image_path": "textvqa/1.jpg", "question": "What colour is the wall?",
                "response_list": ['<think>Look. {"bbox_2d": [1, 2, 30, 40]}', "It is red.</think><answer>red</answer>"],
                "img_crop_list": ["crops/1_0.jpg"]}]
    source.write_text(json.dumps(records))
    out = tmp_path / "vlir.parquet"
    assert main(["prepare", "vlir", str(source), "--out", str(out), *args]) == 0
    assert capsys.readouterr().out.strip() == f"prepare vlir: wrote 1 rows to {out}"
    (row,) = read_rows(out)
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
    assert [image_size(image) for image in row["images"]] == [(640, 480), (64, 64)]
    source.write_text(json.dumps([{**records[0], "img_crop_list": ["crops/none.jpg"]}]))
    assert main(["prepare", "vlir", str(source), "--out", str(out), *args]) == 1
    assert "row 0: field 'img_crop_list[0]': file not found" in capsys.readouterr().err


# --- the layouts as published ----------------------------------------------------------------------------------------


def test_path_map_reads_absolute_paths_of_the_authors_machine(tmp_path, capsys):
    """VLM-R3's RL json names images by absolute paths on the authors' machine; --path-map sends them here."""
    write_image(tmp_path / "local/textvqa/1.jpg", (640, 480), "red")
    write_image(tmp_path / "local/gqa/2.jpg", (320, 480), "blue")
    records = [
        {"image_path": "/data/vlm_r3/images/textvqa/1.jpg", "question": "What colour is the wall?",
         "answer": "<answer>red</answer>", "source": "textvqa"},
        {"image_path": "/data/vlm_r3/images/gqa/2.jpg", "question": "Is the sky blue?", "answer": "yes",
         "source": "gqa"},
    ]
    source, out = tmp_path / "rl.json", tmp_path / "out.parquet"
    source.write_text(json.dumps(records))
    assert main(["prepare", "vlm_r3", str(source), "--out", str(out)]) == 1
    assert "row 0: field 'image_path': file not found: /data/vlm_r3/images/textvqa/1.jpg" in capsys.readouterr().err

    # the longest OLD wins; NEW may be relative (to --image-root, here the source's folder)
    mapping = ["--path-map", "/data=/nowhere", "--path-map", "/data/vlm_r3/images/=local/"]
    assert main(["prepare", "vlm_r3", str(source), "--out", str(out), "--keep-paths", *mapping]) == 0
    capsys.readouterr()
    rows = read_rows(out)
    assert [row["images"][0]["image"] for row in rows] == [
        str((tmp_path / "local/textvqa/1.jpg").resolve()), str((tmp_path / "local/gqa/2.jpg").resolve())]
    assert rows[0]["extra_info"]["image_path"] == "/data/vlm_r3/images/textvqa/1.jpg"  # the source's own, as written

    source.write_text(json.dumps([{**records[0], "image_path": "/data/vlm_r3/images/textvqa/9.jpg"}]))
    assert main(["prepare", "vlm_r3", str(source), "--out", str(out), *mapping]) == 1
    error = capsys.readouterr().err
    assert f"file not found: {(tmp_path / 'local/textvqa/9.jpg').resolve()} (--path-map of " in error
    assert "/data/vlm_r3/images/textvqa/9.jpg)" in error

    # every converter: V*'s relative paths, through an HF-snapshot-like folder move
    vstar = build_vstar(tmp_path / "v")[0]
    (tmp_path / "v/vstar_bench/direct_attributes").rename(tmp_path / "v/vstar_bench/attributes_moved")
    code = main(["prepare", "vstar", str(vstar), "--out", str(out), "--path-map", "direct_attributes=attributes_moved"])
    assert code == 0 and [image_size(r["images"][0]) for r in read_rows(out)] == [(1600, 1200)] * 2


@pytest.mark.parametrize(
    "value, message",
    [
        ("/data", "'/data': expected OLD=NEW with both sides non-empty"),
        ("=/mnt", "'=/mnt': expected OLD=NEW with both sides non-empty"),
        ("/data=", "'/data=': expected OLD=NEW with both sides non-empty"),
    ],
)
def test_malformed_path_map_is_a_command_line_error(tmp_path, capsys, value, message):
    source, _ = build_vstar(tmp_path)
    assert main(["prepare", "vstar", str(source), "--out", str(tmp_path / "o.parquet"), "--path-map", value]) == 2
    assert f"prepare: --path-map {message}" in capsys.readouterr().err
    assert not (tmp_path / "o.parquet").exists()


def cvbench_published(i, image=True, **changes):
    """A record of CV-Bench's main-branch parquet: every published column, the image embedded as an HF image dict."""
    rows = [
        {"idx": 0, "type": "2D", "task": "Count", "question": "How many organs are in the image?",
         "choices": ["3", "2", "1", "0"], "answer": "(C)",
         "prompt": "How many organs are in the image? Select from the following choices.\n(A) 3\n(B) 2\n(C) 1\n(D) 0",
         "filename": "img/2D/count/ade20k_10.png", "source": "ADE20K", "source_dataset": "ADE20K Validation Set",
         "source_filename": "ADE_val_00000248.jpg", "target_class": None, "target_size": None, "bbox": None},
        {"idx": 1, "type": "2D", "task": "Count", "question": "How many cars are in the image?",
         "choices": ["2", "4", "1", "3"], "answer": "(B)",
         "prompt": "How many cars are in the image? Select from the following choices.\n(A) 2\n(B) 4\n(C) 1\n(D) 3",
         "filename": "img/2D/count/coco_3.png", "source": "COCO", "source_dataset": "COCO 2017 Validation Set",
         "source_filename": "000000011197.jpg", "target_class": "car", "target_size": 3046.0, "bbox": None},
        {"idx": 1438, "type": "3D", "task": "Depth", "question": "Which is closer to the camera, the lamp or the bed?",
         "choices": ["lamp", "bed"], "answer": "(A)",
         "prompt": "Which is closer to the camera, the lamp or the bed?\n(A) lamp\n(B) bed",
         "filename": "img/3D/depth/omni3d_sunrgbd_7.png", "source": "Omni3D", "source_dataset": "SUNRGBD",
         "source_filename": "SUNRGBD/kv2/kinect2data/000065.jpg", "target_class": None, "target_size": None,
         "bbox": [[120.5, 80.0, 200.0, 190.25], [300, 150, 420, 300]]},
    ]
    record = {**rows[i], **changes}
    if image:
        record["image"] = {"bytes": encoded((512, 384 + 16 * i), COLOURS[i]), "path": Path(record["filename"]).name}
    return record


def test_cvbench_as_published_embeds_its_images_and_keeps_its_annotations(tmp_path, capsys, monkeypatch):
    """The main branch ships test_2d/3d.parquet with the images inside, the .jsonl beside them, and no img/ folder."""
    import pandas as pd

    from visionr3.data.prepare import ParquetRowWriter

    monkeypatch.setattr(ParquetRowWriter, "MAX_ROWS", 1)  # the 2D rows' empty boxes alone in the first row group
    folder = tmp_path / "CV-Bench"
    folder.mkdir()
    pd.DataFrame([cvbench_published(0), cvbench_published(1)]).to_parquet(folder / "test_2d.parquet")
    pd.DataFrame([cvbench_published(2)]).to_parquet(folder / "test_3d.parquet")
    write_jsonl(folder / "test_2d.jsonl", [cvbench_published(0, image=False)])
    out = tmp_path / "cvbench_2d.parquet"
    assert main(["prepare", "cvbench", str(folder / "test_2d.parquet"), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"prepare cvbench: wrote 2 rows to {out}"
    ade, coco = read_rows(out)
    assert [image_size(row["images"][0]) for row in (ade, coco)] == [(512, 384), (512, 400)]
    assert (ade["reward_model"]["ground_truth"], coco["reward_model"]["ground_truth"]) == ("C", "B")
    assert coco["extra_info"]["question_stem"] == "How many cars are in the image?"
    kept = ("type", "source_dataset", "source_filename", "target_class", "bbox")
    assert {k: coco["extra_info"][k] for k in kept} == {
        "type": "2D", "source_dataset": "COCO", "source_filename": "000000011197.jpg", "target_class": "car",
        "bbox": []}
    assert (ade["extra_info"]["target_class"], ade["extra_info"]["bbox"]) == ("", [])

    # the snapshot folder: both files, the 3D row's boxes after row groups that had none
    assert main(["prepare", "cvbench", str(folder), "--out", str(out)]) == 0
    depth = read_rows(out)[2]["extra_info"]
    assert (depth["type"], depth["category"], depth["source_dataset"]) == ("3D", "Depth", "Omni3D")
    assert depth["bbox"] == [[120.5, 80.0, 200.0, 190.25], [300.0, 150.0, 420.0, 300.0]]
    assert depth["source_filename"] == "SUNRGBD/kv2/kinect2data/000065.jpg"

    # the jsonl without an img/ folder: the error says where the images are
    capsys.readouterr()
    assert main(["prepare", "cvbench", str(folder / "test_2d.jsonl"), "--out", str(out)]) == 1
    error = capsys.readouterr().err
    missing = (folder / "img/2D/count/ade20k_10.png").resolve()
    assert f"row 0 (id '0'): field 'filename': file not found: {missing}" in error
    assert "prepare test_2d.parquet/test_3d.parquet, which embed it" in error


def test_vision_sr1_moves_a_single_image_placeholder_to_the_end_as_its_dataset_does(tmp_path):
    """Vision-SR1's `_prefix_image_token` (verl/utils/dataset.py) moves one <image> to the end of the problem."""
    import datasets

    problem = "<image>Why are the bikes all stopped? Options: A. red light B. race C. parade D. no gas"
    data = {"images": [[{"bytes": encoded((300, 200), "red"), "path": None}]], "problem": [problem], "answer": ["A"]}
    text = datasets.Value("string")
    features = datasets.Features({"images": datasets.List(datasets.Image()), "problem": text, "answer": text})
    (tmp_path / "sr1/data").mkdir(parents=True)
    datasets.Dataset.from_dict(data, features=features).to_parquet(tmp_path / "sr1/data/train-00000-of-00001.parquet")
    out = tmp_path / "out.parquet"
    assert main(["prepare", "vision_sr1", str(tmp_path / "sr1"), "--out", str(out)]) == 0
    (row,) = read_rows(out)
    expected = "Why are the bikes all stopped? Options: A. red light B. race C. parade D. no gas<image>"
    assert row["prompt"] == [{"role": "user", "content": expected + prompts.SR1_FORMAT}]
    assert row["extra_info"]["question"] == problem.replace("<image>", "")


def test_deepeyes_rows_without_a_tool_env_keep_their_own_prompt_on_a_tool_free_loop(tmp_path, capsys):
    """DeepEyes builds no tool for an empty env_name (ParallelEnv.reset) and feeds the row's own prompt and images."""
    import pandas as pd

    source, _ = build_deepeyes(tmp_path)
    rows = pd.read_parquet(source).to_dict("records")
    own = [{"role": "system", "content": "You are a helpful assistant."},
           {"role": "user", "content": "<image>\nFind x in the figure. Put the final answer in \\boxed{}."}]
    visual = {**rows[1], "prompt": own, "images": [{"bytes": encoded((640, 480), "green"), "path": None}],
              "extra_info": {**rows[1]["extra_info"], "question": "Find x in the figure.", "index": "train_9"}}
    pd.DataFrame([rows[0], visual]).to_parquet(source)
    out = tmp_path / "out.parquet"
    assert main(["prepare", "deepeyes", str(source), "--out", str(out), "--agent-name", "visionr3_agent"]) == 0
    tool_row, free_row = read_rows(out)
    assert (tool_row["agent_name"], free_row["agent_name"]) == ("visionr3_agent", "single_turn_agent")
    assert tool_row["prompt"][0]["content"].endswith(prompts.DEEPEYES_USER_PROMPT)
    assert free_row["prompt"] == own  # the row's instruction, not the zoom prompt rebuilt from extra_info.question
    assert [image_size(image) for image in free_row["images"]] == [(640, 480)]
    info = free_row["extra_info"]
    assert (info["question"], info["env_name"], info["source_index"], info["prompt_style"]) == (
        "Find x in the figure.", "", "train_9", "source")

    capsys.readouterr()
    pd.DataFrame([{**visual, "prompt": [own[0], {"role": "user", "content": "Find x."}]}]).to_parquet(source)
    assert main(["prepare", "deepeyes", str(source), "--out", str(out)]) == 1
    error = capsys.readouterr().err
    assert "row 0 (id 'train_9'): field 'prompt': has 0 <image> placeholder(s) but the row has 1 image(s)" in error
    pd.DataFrame([{**visual, "prompt": [{"role": "user", "content": ["parts"]}]}]).to_parquet(source)
    assert main(["prepare", "deepeyes", str(source), "--out", str(out)]) == 1
    assert "field 'prompt[0]': expected {role: system|user|assistant, content: text}" in capsys.readouterr().err


def test_vstar_and_mme_realworld_keep_their_annotations(tmp_path, capsys, monkeypatch):
    """V*'s sa_*.json beside each image (target objects, [x, y, w, h] boxes); MME-RealWorld's Dataset field."""
    from visionr3.data.prepare import ParquetRowWriter

    monkeypatch.setattr(ParquetRowWriter, "MAX_ROWS", 1)  # a first row group without boxes
    source, _ = build_vstar(tmp_path)
    annotation = {"target_object": ["cup", "spoon"], "bbox": [[100, 200, 50, 40], [10.5, 20, 5, 5]],
                  "question": "What is the colour of the cup?", "options": ["blue", "black", "white", "pink"]}
    (tmp_path / "vstar_bench/direct_attributes/sa_1.json").write_text(json.dumps(annotation))  # sa_0 has none
    out = tmp_path / "out.parquet"
    assert main(["prepare", "vstar", str(source), "--out", str(out)]) == 0
    bare, annotated = (row["extra_info"] for row in read_rows(out))
    assert (bare["target_objects"], bare["target_boxes"]) == ([], [])
    assert annotated["target_objects"] == ["cup", "spoon"]
    assert annotated["target_boxes"] == [[100.0, 200.0, 150.0, 240.0], [10.5, 20.0, 15.5, 25.0]]  # x1, y1, x2, y2

    capsys.readouterr()
    (tmp_path / "vstar_bench/direct_attributes/sa_1.json").write_text(json.dumps({**annotation, "bbox": [[1, 2, 3]]}))
    assert main(["prepare", "vstar", str(source), "--out", str(out)]) == 1
    json_path = (tmp_path / "vstar_bench/direct_attributes/sa_1.json").resolve()
    error = capsys.readouterr().err
    assert f"row 1 (id '1'): field 'image': annotation {json_path}: 'bbox' holds a box without 4 numbers" in error

    records = [mme_record(0, Dataset="nuScenes"), mme_record(1)]
    source, _ = build_mme_realworld(tmp_path / "mme", records)
    assert main(["prepare", "mme_realworld", str(source), "--out", str(out)]) == 0
    assert [row["extra_info"]["source_dataset"] for row in read_rows(out)] == ["nuScenes", ""]


# --- verl reads the rows -------------------------------------------------------------------------------------------


def verl_dataset(path, model_dir, **config):
    from omegaconf import OmegaConf

    from visionr3.data.dataset import VisionRLDataset
    from visionr3.processing import load_processor, load_tokenizer

    base = {"max_prompt_length": 4096, "filter_overlong_prompts": True, "prompt_key": "prompt", "image_key": "images",
            "cache_dir": str(Path(path).parent / "verl_cache"), "max_pixels": 256 * 28 * 28}
    config = OmegaConf.create({**base, **config})
    return VisionRLDataset(str(path), load_tokenizer(model_dir), config, load_processor(model_dir))


# Two formats cover the storage paths: image paths (--keep-paths, where a "bytes" key would break verl) and bytes with a text-only row.
@pytest.mark.parametrize("format_name, extra", [("vstar", ["--keep-paths"]), ("deepeyes", [])])
def test_verl_dataset_keeps_every_row(tmp_path, tiny_model_dirs, format_name, extra):
    code, _, out = prepare(tmp_path, format_name, *extra)
    assert code == 0
    dataset = verl_dataset(out, tiny_model_dirs["qwen2_5_vl"])
    assert len(dataset) == 2, "verl's prompt-length filter drops rows it cannot process"
    for i, (size_row, truth) in enumerate(zip(EXPECTED[format_name][3], EXPECTED[format_name][2])):
        item = dataset[i]
        contents = [c for m in item["raw_prompt"] if isinstance(m["content"], list) for c in m["content"]]
        images = [c for c in contents if c["type"] == "image"]
        assert [formats_image_size(c) for c in images] == size_row
        agent = EXPECTED[format_name][0]
        assert item["agent_name"] == (agent if isinstance(agent, str) else agent[i])
        assert item["reward_model"]["ground_truth"] == truth
    if extra == ["--keep-paths"]:
        path = (tmp_path / "vstar_bench/direct_attributes/sa_0.jpg").resolve()
        assert read_rows(out)[0]["images"] == [{"image": str(path)}]


def formats_image_size(item):
    from visionr3.processing import open_image

    return open_image(item).size


def test_visionthink_smart_row_first_view_is_the_target_and_resize_renders_twice_it(tmp_path, tiny_model_dirs):
    """prepare -> parquet -> verl's dataset -> verl's AgentLoopWorker with visionr3_visionthink and the resize tool."""
    import torch

    from visionr3.config import config_path
    from visionr3.processing import load_processor, load_tokenizer
    from visionr3.testing.agent_harness import compose_verl_config, run_agent_loop_worker
    from visionr3.testing.scripted_server import ScriptedServer

    model_dir = tiny_model_dirs["qwen2_5_vl"]
    code, _, out = prepare(tmp_path, "visionthink_smart", "--limit", "1")
    assert code == 0
    # (verl's prompt-length filter is covered by test_verl_dataset_keeps_every_row; it costs ~8 s per dataset)
    row = verl_dataset(out, model_dir, filter_overlong_prompts=False)[0]
    assert row["agent_name"] == "visionr3_visionthink"
    config = compose_verl_config([
        f"actor_rollout_ref.model.path={model_dir}",
        f"actor_rollout_ref.rollout.multi_turn.tool_config_path={config_path('tools', 'resize.yaml')}",
        f"actor_rollout_ref.rollout.agent.agent_loop_config_path={config_path('agent_loop.yaml')}",
        "data.max_response_length=3072",
    ])
    tokenizer = load_tokenizer(model_dir)
    rollout = config.actor_rollout_ref.rollout
    call = '<think>too small</think>\n<tool_call>\n{"name": "resize_image", "arguments": {"action": "resize"}}\n'
    call += "</tool_call>"
    server = ScriptedServer(tokenizer, [[call, "<answer>red</answer>"]], prompt_length=rollout.prompt_length,
                            response_length=rollout.response_length)
    batch = run_agent_loop_worker(config, server, [row])
    assert server.calls[0].image_sizes == ((112, 84),)  # info.tgt_width x tgt_height: VisionThink's first view
    assert server.calls[1].image_sizes == ((112, 84), (224, 168))  # the original, re-rendered at 2 x target
    source = Image.open(io.BytesIO(encoded((896, 672), "red")))
    processor = load_processor(model_dir)
    rendered = source.resize((224, 168), Image.Resampling.LANCZOS)  # from the source, not an upscale of the view
    expected = processor.image_processor(images=[rendered], return_tensors="pt")
    pixel_values = batch.non_tensor_batch["multi_modal_inputs"][0]["pixel_values"]
    assert torch.allclose(pixel_values[-expected["pixel_values"].shape[0]:], expected["pixel_values"])
    assert batch.non_tensor_batch["valid_tool_calls"][0] == 1


def test_large_sources_are_written_in_row_groups_with_a_stated_image_type(tmp_path, monkeypatch):
    """Text-only rows first (an inferred images type would be a list of nulls), then image rows, one row group each."""
    from visionr3.data.prepare import ParquetRowWriter

    monkeypatch.setattr(ParquetRowWriter, "MAX_ROWS", 1)
    import pandas as pd

    source, _ = build_deepeyes(tmp_path)
    pd.read_parquet(source).iloc[::-1].to_parquet(source)
    out = tmp_path / "out.parquet"
    assert main(["prepare", "deepeyes", str(source), "--out", str(out), "--workers", "2"]) == 0
    assert pq.ParquetFile(out).metadata.num_row_groups == 2
    assert [len(row["images"]) for row in read_rows(out)] == [0, 1]


def test_splits_of_dataset_dicts_and_snapshot_folders(tmp_path, capsys):
    import datasets
    import shutil

    source, _ = build_vision_sr1(tmp_path)  # sr1/data/train-00000-of-00001.parquet
    shutil.copy(source / "data/train-00000-of-00001.parquet", source / "data/test-00000-of-00001.parquet")
    out = tmp_path / "o.parquet"
    assert main(["prepare", "vision_sr1", str(source), "--out", str(out), "--split", "test"]) == 0
    assert "wrote 2 rows" in capsys.readouterr().out
    assert main(["prepare", "vision_sr1", str(source), "--out", str(out)]) == 0
    assert "wrote 4 rows" in capsys.readouterr().out
    split = datasets.Dataset.from_parquet(str(source / "data/test-00000-of-00001.parquet"))
    datasets.DatasetDict({"train": split, "validation": split.select([0])}).save_to_disk(tmp_path / "dd")
    assert main(["prepare", "vision_sr1", str(tmp_path / "dd"), "--out", str(out)]) == 1
    assert "holds splits ['train', 'validation']: choose one with --split" in capsys.readouterr().err
    assert main(["prepare", "vision_sr1", str(tmp_path / "dd"), "--out", str(out), "--split", "validation"]) == 0
    assert "wrote 1 rows" in capsys.readouterr().out


# --- bad records ---------------------------------------------------------------------------------------------------


def write_vstar(tmp_path, records):
    for i in range(4):
        write_image(tmp_path / f"vstar_bench/direct_attributes/sa_{i}.jpg", (64, 48), "red")
    return write_jsonl(tmp_path / "vstar_bench/test_questions.jsonl", records)


VSTAR_BAD = {
    "missing field": (vstar_record(1, label=None), "field 'label': missing"),
    "image not found": (vstar_record(1, image="direct_attributes/nope.jpg"),
                        "field 'image': file not found: {root}/direct_attributes/nope.jpg"),
    "image unreadable": (vstar_record(1, image="broken.jpg"), "field 'image': cannot decode image {root}/broken.jpg"),
    "wrong type": (vstar_record(1, label=2), "field 'label': expected an option letter, got int"),
    "bad options": (vstar_record(1, text="Which?\n(A) red\n(C) blue"),
                    "field 'text': option (C) out of order, expected (B)"),
    "bad answer": (vstar_record(1, label="E"), "field 'label': answer E but only options A-D exist"),
    "empty field": (vstar_record(1, text="  "), "field 'text': empty"),
}


@pytest.mark.parametrize("kind", list(VSTAR_BAD))
def test_bad_vstar_row_stops_with_file_row_id_and_field(tmp_path, capsys, kind):
    record, message = VSTAR_BAD[kind]
    source = write_vstar(tmp_path, [vstar_record(0), record, vstar_record(2)])
    (tmp_path / "vstar_bench/broken.jpg").write_bytes(encoded((64, 48), "red", "JPEG")[:200])  # truncated
    out = tmp_path / "val.parquet"
    assert main(["prepare", "vstar", str(source), "--out", str(out)]) == 1
    root = (tmp_path / "vstar_bench").resolve()
    error = capsys.readouterr().err
    assert f"prepare vstar: error: {source} row 1 (id '1'): {message.format(root=root)}" in error
    assert not out.exists() and not list(tmp_path.glob(".*.partial")), "a failed run leaves no parquet behind"


MME_ROW = "row 0 (id 'perception/remote_sensing/color/0000'): "


@pytest.mark.parametrize(
    "format_name, break_source, message",
    [
        ("vlm_r3",
         lambda p: p.write_text(json.dumps([{**json.loads(p.read_text())[0], "answer": "<answer> </answer>"}])),
         "row 0: field 'answer': empty answer"),
        ("vlm_r3", lambda p: p.write_text(json.dumps([{**json.loads(p.read_text())[0], "question": 7}])),
         "row 0: field 'question': expected text, got int"),
        ("hrbench", lambda p: build_hrbench(p.parent, [{"index": 3, "question": "Q?", "answer": "A", "A": "x", "B": "y",
                                                        "C": "", "D": "", "category": "single", "cycle_category": "1",
                                                        "image": "not base64!" * 10}]),
         "row 0 (id '3'): field 'image': not valid base64"),
        ("mmvp", lambda p: p.write_text("Index,Question,Options,Correct Answer\n1,Open?,Open or closed,(a)\n"),
         "row 0 (id '1'): field 'Options': expected options like '(a) x (b) y', got 'Open or closed'"),
        ("mme_realworld",
         lambda p: p.write_text(json.dumps([mme_record(0, **{"Answer choices": ["(A) red", "(C) blue"]})])),
         MME_ROW + "field 'Answer choices': option (C) out of order, expected (B)"),
        ("mme_realworld", lambda p: p.write_text(json.dumps([mme_record(0, **{"Answer choices": ["red", "blue"]})])),
         MME_ROW + "field 'Answer choices': option 'red' does not start with its letter like '(A) '"),
        ("mme_realworld", lambda p: p.write_text(json.dumps([mme_record(0, **{"Question Type": "Free Form"})])),
         MME_ROW + "field 'Question Type': only multiple choice is supported, got 'Free Form'"),
        ("mme_realworld", lambda p: p.write_text(json.dumps([mme_record(0, **{"Ground truth": "F"})])),
         MME_ROW + "field 'Ground truth': answer F but only options A-E exist"),
        ("mme_realworld", lambda p: p.write_text(json.dumps([mme_record(0, Image="remote_sensing/missing.png")])),
         MME_ROW + "field 'Image': file not found"),
    ],
)
def test_bad_rows_of_other_formats(tmp_path, capsys, format_name, break_source, message):
    source, args = BUILDERS[format_name](tmp_path)
    break_source(source)
    assert main(["prepare", format_name, str(source), "--out", str(tmp_path / "o.parquet"), *args]) == 1
    assert f"{source} {message}" in capsys.readouterr().err


def test_bad_nested_and_placeholder_fields(tmp_path, capsys):
    import datasets

    images = [[{"bytes": encoded((300, 200), "red"), "path": None}]]
    text = datasets.Value("string")
    features = datasets.Features({"problem": text, "answer": text, "images": datasets.List(datasets.Image())})
    sr1 = {"problem": ["<image><image>Compare."], "images": images, "answer": ["a"]}
    datasets.Dataset.from_dict(sr1, features=features).save_to_disk(tmp_path / "sr1")
    assert main(["prepare", "vision_sr1", str(tmp_path / "sr1"), "--out", str(tmp_path / "o.parquet")]) == 1
    assert "row 0: field 'problem': has 2 <image> placeholder(s) but the row has 1 image(s)" in capsys.readouterr().err
    datasets.Dataset.from_dict({"problem": ["<image>Q"], "images": images, "original_answer": ["a"], "doc_id": ["d9"],
                                "info": [{"tgt_height": 84, "use_tool": True}]}).save_to_disk(tmp_path / "smart")
    assert main(["prepare", "visionthink_smart", str(tmp_path / "smart"), "--out", str(tmp_path / "o.parquet")]) == 1
    assert "row 0 (id 'd9'): field 'info.tgt_width': missing" in capsys.readouterr().err
    source, _ = build_hrbench(tmp_path)
    assert main(["prepare", "hrbench", str(source), "--out", str(tmp_path / "o.parquet"), "--keep-paths"]) == 1
    assert "field 'image': --keep-paths needs an image file path" in capsys.readouterr().err


def test_skip_mode_writes_the_good_rows_and_counts_and_lists_the_bad(tmp_path, capsys):
    good = [vstar_record(0), vstar_record(2), vstar_record(3)]
    bad = [
        vstar_record(1, image="direct_attributes/gone.jpg"),
        vstar_record(1, label="Z"),
        vstar_record(1, image="direct_attributes/lost.jpg"),
    ]
    source = write_vstar(tmp_path, [good[0], bad[0], good[1], bad[1], bad[2], good[2]])
    with open(source, "a") as handle:
        handle.write("{not json\n")
    out = tmp_path / "val.parquet"
    assert main(["prepare", "vstar", str(source), "--out", str(out), "--on-error", "skip", "--workers", "2"]) == 0
    captured = capsys.readouterr()
    log = tmp_path / "val.skipped.jsonl"
    assert captured.out.strip() == (
        f"prepare vstar: wrote 3 rows to {out}, skipped 4 (image not found: 2, bad answer: 1, unreadable record: 1; "
        f"listed in {log})"
    )
    assert [r["extra_info"]["source_id"] for r in read_rows(out)] == ["0", "2", "3"]
    skipped = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(s["row"], s["field"], s["kind"]) for s in skipped] == [
        (1, "image", "image not found"), (3, "label", "bad answer"), (4, "image", "image not found"),
        (6, "(json)", "unreadable record"),
    ]
    assert "line 7 is not valid JSON" in skipped[-1]["message"]
    assert "skipped: " in captured.err
    assert main(["prepare", "vstar", str(source), "--out", str(out), "--on-error", "skip", "--limit", "1"]) == 0
    assert len(read_rows(out)) == 1 and "wrote 1 rows" in capsys.readouterr().out


def test_nothing_written_and_bad_command_lines(tmp_path, capsys):
    source = write_vstar(tmp_path, [vstar_record(0, label="Q")])
    assert main(["prepare", "vstar", str(source), "--out", str(tmp_path / "o.parquet"), "--on-error", "skip"]) == 1
    assert "no rows written" in capsys.readouterr().err and not (tmp_path / "o.parquet").exists()
    assert main(["prepare", "vstar", str(source), "--out", str(tmp_path / "o.csv")]) == 2
    assert main(["prepare", "vstar", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o.parquet")]) == 1
    assert "source not found" in capsys.readouterr().err


# --- the pure parts ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [("B", "B"), ("b", "B"), ("(B)", "B"), ("(c)", "C"), (" D. ", "D"), ("A", "A")],
)
def test_answer_letter(value, expected):
    assert converters.answer_letter(value, 4, "label") == expected


@pytest.mark.parametrize(
    "value, error", [("E", "only options A-D"), ("BC", "expected an option letter"), (1, "got int")]
)
def test_answer_letter_rejects(value, error):
    with pytest.raises(RowError, match=error):
        converters.answer_letter(value, 4, "label")


def test_option_parsers():
    text = "What is it?\nSecond line.\n(A) a cat\n(B)  a dog \n"
    text += "Answer with the option's letter from the given choices directly."
    assert converters.split_option_lines(text, "text") == ("What is it?\nSecond line.", ["a cat", "a dog"])
    assert converters.split_inline_options("(a) Towards the camera (b) Away from the camera", "Options") == [
        "Towards the camera", "Away from the camera"]
    for bad in ["(A) only one", "no options here", "(A) x\n(B) "]:
        with pytest.raises(RowError) as info:
            converters.split_option_lines("Q?\n" + bad if bad.startswith("(") else bad, "text")
        assert info.value.field == "text" and info.value.kind in ("bad options",)


@pytest.mark.parametrize(
    "value, expected",
    [
        ("<answer>cat/kitten</answer>", "cat/kitten"), ("  7 ", "7"), (3, "3"), (2.0, "2"), (2.5, "2.5"),
        (["a", "b"], "a/b"),
    ],
)
def test_answer_normalisation(value, expected):
    assert converters.answer({"a": value}, "a") == expected


@pytest.mark.parametrize(
    "reference, expected",
    [
        ("/data/a/x.jpg", "/mnt/a/x.jpg"),
        ("/data/a/b/x.jpg", "/fast/x.jpg"),  # the longest OLD wins
        ("/data/a", "/mnt/a"),
        ("/database/x.jpg", "/database/x.jpg"),  # whole path components only
        ("rel/x.jpg", "other/x.jpg"),
        ("relative/x.jpg", "relative/x.jpg"),
    ],
)
def test_map_path(reference, expected):
    path_map = parse_path_map(["/data=/mnt", "/data/a/b/=/fast/", "rel=other"])
    assert path_map == (("/data", "/mnt"), ("/data/a/b", "/fast"), ("rel", "other"))
    assert converters.map_path(reference, path_map) == expected


def test_parse_path_map_refuses_an_old_prefix_twice():
    with pytest.raises(ValueError, match="'/data/=/b': /data is mapped twice \\(to /a and /b\\)"):
        parse_path_map(["/data=/a", "/data/=/b"])


@pytest.mark.parametrize(
    "question, num_images, expected",
    [
        ("<image>\nWhat is it?", 1, "What is it?<image>"),
        ("Look at <image> here. ", 1, "Look at  here.<image>"),  # removed where it stood, as Vision-SR1 does
        ("What is it?", 1, "What is it?<image>"),
        ("<image> left <image> right", 2, "<image> left <image> right"),  # several: where the source put them
        ("Compare.", 2, "Compare.<image><image>"),
        ("2+2?", 0, "2+2?"),
    ],
)
def test_vision_sr1_image_placement(question, num_images, expected):
    (message,) = prompts.STYLES["vision_sr1"].messages(question, num_images)
    assert message["content"] == expected + prompts.SR1_FORMAT


def test_mc_prompt_is_the_documented_form():
    expected = "Which?\nA. x\nB. y\nAnswer with the option's letter from the given choices."
    assert prompts.mc_prompt(" Which? ", ["x", "y"]) == expected
