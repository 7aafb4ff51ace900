"""The pure parts of trainer mode ``visionr3_sync`` (visionr3/train/trainer.py) and the weight digests it compares: what the
rollout dump records of the batch's images, and how the weight-sync check decides. The trainer wiring itself runs in
tests/e2e (every run logs the check; the demo's test ties the logged digest to the saved checkpoint)."""

import pytest
import torch
from PIL import Image


def test_batch_image_summary_slices_pixel_values_per_image(processor):
    """Each image's entry is what the processor makes of that image alone: the batch concatenates them in order."""
    from visionr3.rollout.hf.digests import tensor_digest
    from visionr3.train.trainer import batch_image_summary

    images = [Image.new("RGB", (112, 84), (200, 30, 30)), Image.new("RGB", (56, 56), (30, 30, 200))]
    batch = processor.image_processor(images=images, return_tensors="pt")
    summary = batch_image_summary({"pixel_values": batch["pixel_values"], "image_grid_thw": batch["image_grid_thw"]})
    assert [entry["grid_thw"] for entry in summary] == batch["image_grid_thw"].tolist()
    for entry, image in zip(summary, images):
        alone = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
        assert entry["sha256"] == tensor_digest(alone)
        assert entry["mean"] == pytest.approx(alone.double().mean().item())
    assert summary[0]["sha256"] != summary[1]["sha256"]
    assert batch_image_summary(None) == [] and batch_image_summary({}) == []
    with pytest.raises(ValueError, match="pixel rows"):
        batch_image_summary({"pixel_values": batch["pixel_values"][:-1], "image_grid_thw": batch["image_grid_thw"]})


def test_weight_digests_compare_what_a_replica_holds():
    from visionr3.rollout.hf.digests import combined_digest, named_tensor_digests, weight_mismatches
    from visionr3.train.trainer import digest_number

    actor = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4, dtype=torch.float64), "steps": torch.tensor([3])}
    expected = named_tensor_digests(actor.items(), "float32")
    held = named_tensor_digests({k: v.clone() for k, v in actor.items()}.items(), "float32")
    assert weight_mismatches(expected, held) == []
    assert named_tensor_digests([("b", actor["b"])], "float32") != named_tensor_digests([("b", actor["b"])])  # cast first
    assert named_tensor_digests([("steps", actor["steps"])], "float32") == named_tensor_digests([("steps", actor["steps"])])
    stale = {**held, "a": named_tensor_digests([("a", actor["a"] + 1e-6)])["a"]}
    assert weight_mismatches(expected, stale) == ["a"]
    assert weight_mismatches(expected, {**held, "b": None}) == ["b"]  # the replica has no such weight
    assert combined_digest(expected) == combined_digest(dict(reversed(list(expected.items()))))
    assert combined_digest(expected) != combined_digest(stale)
    number = digest_number(combined_digest(expected))
    assert number == int(combined_digest(expected)[:12], 16) and number < 2**48 and float(number) == number
