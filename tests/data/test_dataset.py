"""verl's RLHFDataset machinery with our image hook: rows with images survive on a machine without torchvision."""

import io

import pandas as pd
import pytest
from omegaconf import OmegaConf
from PIL import Image
from verl.utils.dataset.rl_dataset import RLHFDataset

from visionr3.data.dataset import VisionRLDataset
from visionr3.processing import torchvision_usable


def _png(size, colour):
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def parquet_file(tmp_path):
    rows = [
        {
            "data_source": "synthetic",
            "prompt": [{"role": "user", "content": "<image>What colour is the image?"}],
            "images": [{"bytes": _png(size, colour), "path": None}],
            "reward_model": {"style": "rule", "ground_truth": colour},
            "extra_info": {"index": i},
        }
        for i, (size, colour) in enumerate([((1600, 1200), "red"), ((300, 500), "blue")])
    ]
    path = tmp_path / "train.parquet"
    pd.DataFrame(rows).to_parquet(path)
    return path


def _config(**overrides):
    base = {"max_prompt_length": 2048, "filter_overlong_prompts": True, "prompt_key": "prompt", "image_key": "images"}
    return OmegaConf.create({**base, **overrides})


def test_rows_with_images_load_and_are_budgeted(parquet_file, model_dir, processor):
    from visionr3.processing import load_tokenizer

    config = _config(max_pixels=64 * 28 * 28 if processor.image_processor.patch_size == 14 else 64 * 32 * 32)
    dataset = VisionRLDataset(str(parquet_file), load_tokenizer(model_dir), config, processor)
    assert len(dataset) == 2, "no row may be dropped by the prompt-length filter"
    factor = processor.image_processor.patch_size * 2
    for i, expected_colour in enumerate(["red", "blue"]):
        row = dataset[i]
        images, videos, _ = VisionRLDataset._process_multi_modal_info(row["raw_prompt"], dataset.image_patch_size, config)
        assert videos is None and len(images) == 1
        width, height = images[0].size
        assert width % factor == 0 and height % factor == 0
        assert width * height <= config.max_pixels
        assert images[0].getpixel((1, 1)) == Image.new("RGB", (1, 1), expected_colour).getpixel((0, 0))


@pytest.mark.skipif(torchvision_usable(), reason="documents the CPU failure of verl's stock hook")
def test_stock_dataset_silently_drops_image_rows_on_cpu(parquet_file, tiny_model_dirs):
    """Why VisionRLDataset exists: verl's own hook imports qwen_vl_utils, fails, and the filter drops every row."""
    from visionr3.processing import load_processor, load_tokenizer

    model_dir = tiny_model_dirs["qwen2_5_vl"]
    dataset = RLHFDataset(str(parquet_file), load_tokenizer(model_dir), _config(), load_processor(model_dir))
    assert len(dataset) == 0


# -- building at scale: tokens counted from headers, images never decoded, lengths cached, bad rows named ----------


def _hf_image_parquet(path, rows):
    """Rows written as the public sets are (``datasets`` ``Image`` features, which decode when a row is read)."""
    import datasets

    features = datasets.Features({
        "data_source": datasets.Value("string"),
        "prompt": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
        "images": datasets.List(datasets.Image()),
        "reward_model": {"style": datasets.Value("string"), "ground_truth": datasets.Value("string")},
    })
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))
    return path


def _row(text, images, answer="red"):
    return {
        "data_source": "synthetic",
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}],
        "images": images,
        "reward_model": {"style": "rule", "ground_truth": answer},
    }


def _image(size, **options):
    return {"bytes": _png(size, "red"), "path": None, **options}


def _verl_length(dataset, example):
    """verl 0.9.1's own count (RLHFDataset.maybe_filter_out_long_prompts' doc2len, multimodal branch): pixels
    decoded, resized and run through the processor."""
    from verl.utils.dataset.rl_dataset import RLHFDataset
    from verl.utils.tokenizer import build_multimodal_processor_inputs

    messages = RLHFDataset._build_messages(dataset, example, key="prompt")
    raw = dataset.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    images, videos, audios = dataset._process_multi_modal_info(messages, dataset.image_patch_size, dataset.config)
    if images is None:
        return len(dataset.processor.tokenizer(text=raw, add_special_tokens=False)["input_ids"])
    inputs = build_multimodal_processor_inputs(
        dataset.processor, text=[raw], images=images, videos=videos, audio=audios,
        mm_processor_kwargs=dataset.mm_processor_kwargs,
    )
    return len(inputs["input_ids"][0])


@pytest.mark.parametrize(
    "mm_processor_kwargs",
    [{}, {"max_pixels": 128 * 32 * 32}],
    ids=["default", "max_pixels"],  # transformers 5's processors ignore max_pixels: so must the count
)
def test_prompt_lengths_are_verls_count_token_for_token(tmp_path, model_dir, processor, mm_processor_kwargs):
    from visionr3.processing import load_tokenizer

    rows = [
        _row("<image>What colour?", [_image((900, 700))]),
        _row("<image>Small one.", [_image((90, 30))]),
        _row("Left <image> and right <image>: which is taller?", [_image((300, 500)), _image((700, 200))]),
        _row("<image>Own budget.", [_image((2000, 1000), max_pixels=64 * 32 * 32)]),
        _row("<image>VisionThink's 2 x target size.", [_image((900, 900), resized_width=560, resized_height=280)]),
        _row("No image at all, a longer question " * 5, []),
    ]
    path = _hf_image_parquet(tmp_path / "train.parquet", rows)
    config = _config(max_pixels=256 * 28 * 28, mm_processor_kwargs=mm_processor_kwargs)
    dataset = VisionRLDataset(str(path), load_tokenizer(model_dir), config, processor)
    assert len(dataset) == len(rows)
    ours = dataset.prompt_lengths(dataset.dataframe)
    raw = dataset.dataframe.with_format("arrow")
    expected = [_verl_length(dataset, {"prompt": raw[i]["prompt"].to_pylist()[0], "images": raw[i]["images"].to_pylist()[0]}) for i in range(len(rows))]
    assert list(ours) == expected


@pytest.fixture(scope="module")
def qwen25(tiny_model_dirs):
    """(tokenizer, processor) of the tiny Qwen2.5-VL: the tests below do not depend on the architecture."""
    from visionr3.processing import load_processor, load_tokenizer

    return load_tokenizer(tiny_model_dirs["qwen2_5_vl"]), load_processor(tiny_model_dirs["qwen2_5_vl"])


def test_building_decodes_no_image_and_rows_keep_their_bytes(tmp_path, qwen25, monkeypatch):
    from PIL import ImageFile

    tokenizer, processor = qwen25
    path = _hf_image_parquet(tmp_path / "train.parquet", [_row("<image>Colour?", [_image((800, 600))])] * 3)
    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size) or real_load(self))
    dataset = VisionRLDataset(str(path), tokenizer, _config(), processor)
    assert len(dataset) == 3 and decoded == []
    item = dataset[0]["raw_prompt"][-1]["content"][0]
    assert item["type"] == "image" and item["bytes"][:4] == b"\x89PNG", "the row carries the stored bytes"
    assert decoded == [], "reading a row opens its image lazily"


def test_second_build_reads_the_lengths_cache(tmp_path, qwen25, monkeypatch):
    tokenizer, processor = qwen25
    path = _hf_image_parquet(tmp_path / "train.parquet", [_row("<image>Colour?", [_image((800, 600))])] * 4)
    first = VisionRLDataset(str(path), tokenizer, _config(), processor)
    counted = []
    real = VisionRLDataset.prompt_lengths
    monkeypatch.setattr(VisionRLDataset, "prompt_lengths", lambda self, df, **kw: counted.append(1) or real(self, df, **kw))
    second = VisionRLDataset(str(path), tokenizer, _config(max_prompt_length=64), processor)  # same counts, new cut
    assert counted == [] and len(first) == 4 and len(second) == 0
    VisionRLDataset(str(path), tokenizer, _config(max_pixels=32 * 32 * 32), processor)  # a new budget: recount
    assert counted == [1]


def test_a_bad_row_names_file_row_and_field(tmp_path, qwen25):
    tokenizer, processor = qwen25
    rows = [_row("<image>Fine.", [_image((64, 64))]), _row("<image>Broken.", [{"bytes": b"not an image", "path": None}])]
    path = tmp_path / "bad.parquet"
    pd.DataFrame(rows).to_parquet(path)
    with pytest.raises(ValueError, match=rf"{path} row 1: field 'images\[0\]': UnidentifiedImageError"):
        VisionRLDataset(str(path), tokenizer, _config(), processor)
    rows[1] = _row("<image> and <image>", [_image((64, 64))])
    pd.DataFrame(rows).to_parquet(path)
    with pytest.raises(ValueError, match=rf"{path} row 1: field 'prompt': AssertionError"):
        VisionRLDataset(str(path), tokenizer, _config(), processor)
    with pytest.raises(ValueError, match="data.mm_processor_kwargs"):  # verl's filter would drop every row
        VisionRLDataset(str(path), tokenizer, _config(mm_processor_kwargs={"size": {"longest_edge": 3136}}), processor)


def _bytes_image(data):
    return {"bytes": data, "path": None}


def _png_mode(size, mode):
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return buf.getvalue()


BAD_ROWS = {
    # name: (row, field, what the error says)
    "bomb": (lambda: _row("<image>Q?", [_bytes_image(_png_mode((12000, 8000), "1"))]), r"images\[0\]",
             r"96000000 pixels, over PIL's decompression-bomb limit|DecompressionBomb"),
    "thin": (lambda: _row("<image>Q?", [_bytes_image(_png((1, 20000), "red"))]), r"images\[0\]",
             "aspect ratio must be smaller than 200"),
    "no ground truth": (lambda: {**_row("<image>Q?", [_image((64, 64))]), "reward_model": {"style": "rule", "ground_truth": None}},
                        r"reward_model\.ground_truth", "missing"),
    "empty ground truth": (lambda: _row("<image>Q?", [_image((64, 64))], answer="  "), r"reward_model\.ground_truth",
                           "empty"),
    "unreadable image": (lambda: _row("<image>Q?", [_bytes_image(b"not an image")]), r"images\[0\]",
                         "UnidentifiedImageError"),
}


@pytest.mark.parametrize("name", BAD_ROWS)
def test_a_row_that_cannot_train_stops_the_build_naming_it(tmp_path, qwen25, name):
    """Each fault in row 1 of a parquet: the build raises naming the file, the row and the field (verl's filter
    would drop the image faults with a traceback; the ground-truth faults would train on a reward of 0)."""
    tokenizer, processor = qwen25
    make, field, says = BAD_ROWS[name]
    path = tmp_path / "bad.parquet"
    pd.DataFrame([_row("<image>Fine.", [_image((64, 64))]), make()]).to_parquet(path)
    with pytest.raises(ValueError, match=rf"{path} row 1: field '{field}': .*({says})"):
        VisionRLDataset(str(path), tokenizer, _config(), processor)


def test_skip_bad_rows_leaves_them_out_and_counts_them(tmp_path, qwen25, capsys):
    """``data.skip_bad_rows=true``: every bad row is left out and counted (the build's log line, ``skipped_rows``),
    the good rows stay in order; nothing is cached from a count that had bad rows."""
    tokenizer, processor = qwen25
    rows = [_row("<image>Fine.", [_image((64, 64))], answer="first")]
    rows += [make() for make, _, _ in BAD_ROWS.values()]
    rows += [_row("<image>Fine too.", [_image((96, 64))], answer="last")]
    path = tmp_path / "mixed.parquet"
    pd.DataFrame(rows).to_parquet(path)
    dataset = VisionRLDataset(str(path), tokenizer, _config(skip_bad_rows=True), processor)
    assert len(dataset) == 2 and dataset.skipped_rows == len(BAD_ROWS)
    assert [dataset[i]["reward_model"]["ground_truth"] for i in range(2)] == ["first", "last"]
    out = capsys.readouterr().out
    assert f"skipped {len(BAD_ROWS)} bad row(s) of {len(rows)} (data.skip_bad_rows=true): {path} row 1: field" in out
    assert "and 0 more" not in out


def test_a_wrong_typed_field_names_the_first_row(tmp_path, qwen25):
    """A parquet column has one type for all its rows: ``reward_model`` written as JSON text, or a ground truth that
    is a struct, is wrong from row 0 on."""
    import json

    tokenizer, processor = qwen25
    rows = [_row("<image>Fine.", [_image((64, 64))]) for _ in range(2)]
    path = tmp_path / "typed.parquet"
    pd.DataFrame([{**row, "reward_model": json.dumps(row["reward_model"])} for row in rows]).to_parquet(path)
    with pytest.raises(ValueError, match=rf"{path} row 0: field 'reward_model.ground_truth': .*reward_model is str"):
        VisionRLDataset(str(path), tokenizer, _config(), processor)
    pd.DataFrame([{**row, "reward_model": {"style": "rule", "ground_truth": {"text": "red"}}} for row in rows]).to_parquet(path)
    with pytest.raises(ValueError, match=rf"{path} row 0: field 'reward_model.ground_truth': .*dict .* not a string"):
        VisionRLDataset(str(path), tokenizer, _config(), processor)


def test_rows_say_where_they_came_from_and_whether_their_pixels_decode(tmp_path, qwen25):
    """After the build's skips, each row still names its file row (``visionr3_row``), and
    :func:`undecodable_image` finds the truncated PNG whose header the build accepted (the trainer's check)."""
    from visionr3.data.dataset import ROW_FIELD, undecodable_image

    tokenizer, processor = qwen25
    whole = _png((64, 64), "red")
    rows = [_row("<image>Cut.", [_bytes_image(whole[: len(whole) // 2])]), BAD_ROWS["no ground truth"][0](),
            _row("<image>Fine.", [_image((64, 64))])]
    path = tmp_path / "rows.parquet"
    pd.DataFrame(rows).to_parquet(path)
    dataset = VisionRLDataset(str(path), tokenizer, _config(skip_bad_rows=True), processor)
    assert len(dataset) == 2 and dataset.skipped_rows == 1
    first, last = dataset[0], dataset[1]
    assert (first[ROW_FIELD], last[ROW_FIELD]) == (f"{path} row 0", f"{path} row 2")
    assert undecodable_image(first["raw_prompt"]) == "images[0]: OSError: image file is truncated"
    assert undecodable_image(last["raw_prompt"]) is None
