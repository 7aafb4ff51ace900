"""visionr3.platform.verl_fixes: equal-length Qwen-VL rows, packed by TransferQueue's own packing, go through verl's
update_actor data path (maybe_fix_3d_position_ids, then index_select_tensor_dict) — the crash without the fix,
identical rows with it."""

import pytest
import torch
from tensordict import TensorDict


def packed_like_transfer_queue(rows):
    """TransferQueue's SimpleStorageManager._pack_field_values for a pure tensor list: jagged first."""
    try:
        return torch.nested.as_nested_tensor(rows, layout=torch.jagged)
    except (RuntimeError, TypeError):
        return torch.nested.as_nested_tensor(rows, layout=torch.strided)


def rows_of(lengths):
    return [torch.arange(4 * length).reshape(4, length) + 1000 * i for i, length in enumerate(lengths)]


def batch(rows):
    return TensorDict({"position_ids": packed_like_transfer_queue(rows)}, batch_size=[len(rows)])


def test_equal_length_rows_crash_verls_own_fix():
    from verl.utils import tensordict_utils

    data = batch(rows_of([7, 7, 7]))
    tensordict_utils.maybe_fix_3d_position_ids.__wrapped__(data)  # verl's function alone
    with pytest.raises(RuntimeError):  # "split_with_sizes expects ..." in the trainer; a size check here
        tensordict_utils.index_select_tensor_dict(data, [0, 2])


@pytest.mark.parametrize("lengths", [[7, 7, 7], [5, 5], [3, 3, 3, 3]])
def test_equal_length_rows_survive_with_the_fix(lengths):
    from verl.utils import tensordict_utils
    from verl.workers import engine_workers
    from verl.workers.engine import base

    # the plug-in installed the fix where verl's workers call it
    assert engine_workers.maybe_fix_3d_position_ids is tensordict_utils.maybe_fix_3d_position_ids
    assert base.maybe_fix_3d_position_ids.__visionr3_fix__
    rows = rows_of(lengths)
    data = batch(rows)
    engine_workers.maybe_fix_3d_position_ids(data)
    selected = tensordict_utils.index_select_tensor_dict(data, [len(rows) - 1, 0])
    got = selected["position_ids"].unbind()
    assert torch.equal(got[0], rows[-1]) and torch.equal(got[1], rows[0])


def test_other_layouts_are_left_to_verl():
    from verl.utils import tensordict_utils
    from visionr3.platform.verl_fixes import _packed_on_rope_dim

    varied = batch(rows_of([5, 9]))  # the strided fallback: what verl already handles
    assert not _packed_on_rope_dim(varied["position_ids"])
    proper = tensordict_utils.nested_tensor_from_tensor_list(rows_of([6, 6]), ragged_idx=2)  # ragged on L
    assert not _packed_on_rope_dim(proper)
    text = torch.nested.as_nested_tensor([torch.arange(5), torch.arange(5)], layout=torch.jagged)  # 1-D text rows
    assert not _packed_on_rope_dim(text)


def test_replay_buffer_polls_every_quarter_second_unless_told():
    """verl's v1 ReplayBuffer sleeps 2 s between looks for finished rollouts; the plug-in (armed when verl is imported)
    shortens the default, and a caller's own poll_interval still wins."""
    from omegaconf import OmegaConf

    from verl.trainer.ppo.v1 import replay_buffer

    from visionr3.platform.verl_fixes import REPLAY_BUFFER_POLL_S, install_poll_interval

    install_poll_interval(replay_buffer)  # a second install changes nothing
    args = dict(trainer_mode="sync", trainer_config=OmegaConf.create({}), max_off_policy_threshold=None,
                max_off_policy_strategy="drop", sampler_kwargs=OmegaConf.create({}))
    assert replay_buffer.ReplayBuffer(**args).poll_interval == REPLAY_BUFFER_POLL_S
    assert replay_buffer.ReplayBuffer(**args, poll_interval=1.5).poll_interval == 1.5
    assert replay_buffer.ReplayBuffer.__init__.__wrapped__.__defaults__[0] == 2.0  # verl's own, untouched
