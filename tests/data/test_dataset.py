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
