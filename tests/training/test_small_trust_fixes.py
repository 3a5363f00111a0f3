"""Small faults of issue 24, each by its instance: a skipped id with a lone surrogate, a skip fraction exactly at
its limit, model/collator inputs whose shapes disagree, generate's total with unusable records."""

import pytest
import torch

from qwenvl_data.datasets._processing import SkippedRecord
from qwenvl_data.training._skips import SkipLedger, TooManySkipsError


def test_a_skipped_record_id_with_a_lone_surrogate_is_reported_escaped():
    ledger = SkipLedger(1.0)
    ledger.record(SkippedRecord(0, "bad\ud800id", "bad_image", "missing image"))
    report = ledger.report("run")
    assert report.by_cause["bad_image"]["examples"] == ["bad\\ud800id"]
    assert "bad\\ud800id" in report.describe()
    report.describe().encode("utf-8")  # printable


def test_a_skip_fraction_exactly_at_max_skip_fraction_does_not_stop_and_one_more_does():
    ledger = SkipLedger(0.29)  # 0.29 * 100 is 28.999999999999996 in floats
    for index in range(100):
        ledger.record(SkippedRecord(index, f"r{index}", "bad_image", "x") if index < 29 else {"id": index})
    assert ledger.report("run").skipped == 29
    with pytest.raises(TooManySkipsError, match="30 of the 101 records"):  # over 29%
        ledger.record(SkippedRecord(100, "r100", "bad_image", "x"))


@pytest.mark.parametrize("announce", [True, False])
def test_a_restart_of_the_data_is_said_by_the_main_ranks_ledger_only_and_counted_by_every_rank(announce, capsys):
    from qwenvl_data.datasets._nodes import PassStarted

    ledger = SkipLedger(1.0, announce=announce)
    ledger.record({"id": 0})
    ledger.record(PassStarted("dataset", 1))
    said = "dataset: the data ran out after 1 records of this epoch; reading it again (restart 1 of this reader)"
    assert (said in capsys.readouterr().out) is announce
    assert ledger.report("run").passes_started == 1


# ---- model and collator inputs whose shapes disagree are errors, not broadcasts -------------------------------
@pytest.fixture(scope="module")
def tiny_batch():
    from support.vl_samples import vl_sample

    from qwenvl_data.collate import padded_collate_qwen2_5_vl
    from qwenvl_data.models import qwen2_5_vl_tiny

    model = qwen2_5_vl_tiny().eval()
    return model, padded_collate_qwen2_5_vl([vl_sample((("image", 28, 28),), seed=1), vl_sample(seed=2)])


def test_position_ids_for_one_row_are_refused_for_a_batch_of_two(tiny_batch):
    model, batch = tiny_batch
    length = batch["tokens"].shape[1]
    refusal = rf"position_ids must be \[3, B, L\] = \[3, 2, {length}\] .*got \[3, 1, {length}\]"
    with pytest.raises(ValueError, match=refusal):
        model(**{**batch, "position_ids": batch["position_ids"][:, :1]})


def test_an_attention_mask_of_another_length_is_refused(tiny_batch):
    model, batch = tiny_batch
    length = batch["tokens"].shape[1]
    with pytest.raises(ValueError, match=rf"attention_mask must be \[2, {length}\] .*got \[2, {length - 1}\]"):
        model(**{**batch, "attention_mask": batch["attention_mask"][:, 1:]})


def test_a_negative_grid_is_refused_by_the_model_and_by_the_collator(tiny_batch):
    from support.vl_samples import vl_sample

    from qwenvl_data.collate import padded_collate_qwen2_5_vl
    from qwenvl_data.errors import SampleError

    model, batch = tiny_batch
    grid = batch["image_grid_thw"].clone()
    grid[0, 1:] = -grid[0, 1:]  # t * h * w unchanged: the patch and pad counts still agree
    with pytest.raises(ValueError, match=r"image_grid_thw must hold only positive sizes, got \[\[1, -"):
        model(**{**batch, "image_grid_thw": grid})
    sample = vl_sample((("image", 28, 28),), seed=1)
    sample["image_grid_thw"] = torch.as_tensor(sample["image_grid_thw"]) * torch.tensor([1, -1, -1])
    with pytest.raises(SampleError, match=r"sample 0 \(id unknown\): image_grid_thw must hold only positive sizes, got \[\[1, -"):
        padded_collate_qwen2_5_vl([sample])
