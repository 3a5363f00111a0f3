"""A damaged WebDataset shard (cut between two members, cut inside one, not a tar at all) is a named, counted
skip under on_error=skip, its unread records reported as unknown, and an error naming the shard under raise;
the records before the damage and the other shards are read."""

import tarfile

import pytest

from qwenvl_data.datasets import streaming_chat_dataset
from qwenvl_data.errors import DamagedShardError
from test_shards import write_tar



def _cut_tar(tmp_path, where: str):
    """A 16-sample tar ``bad.tar`` damaged as ``where`` says, and a good ``good.tar``; returns (path, samples read
    before the damage)."""
    bad = write_tar(tmp_path / "bad.tar", 0, 16)
    write_tar(tmp_path / "good.tar", 100, 104)
    data = bad.read_bytes()
    if where == "not_a_tar":
        bad.write_bytes(b"this is a text file, not a tar archive\n" * 40)
        return bad, 0
    with tarfile.open(bad) as tar:
        members = tar.getmembers()
    tenth_json = members[2 * 9]  # sample 9's JSON
    if where == "between_members":  # sample 8 may have had more members: it goes with the unread rest
        bad.write_bytes(data[: tenth_json.offset])
        return bad, 8
    bad.write_bytes(data[: tenth_json.offset_data + 3])  # sample 9's header announced sample 8 complete
    return bad, 9


@pytest.mark.parametrize("where", ["between_members", "inside_a_member", "not_a_tar"])
def test_a_damaged_shard_is_a_named_counted_skip_and_the_rest_is_read(tmp_path, where):
    bad, complete = _cut_tar(tmp_path, where)
    dataset = streaming_chat_dataset(None, source="webdataset", data_files=str(tmp_path / "*.tar"),
                                     on_error="skip", shuffle_buffer_size=1)  # fmt: skip
    ids = [sample["id"] for sample in dataset]
    assert ids == [f"r{i}" for i in range(complete)] + [f"r{i}" for i in range(100, 104)]
    assert {cause: n for cause, n in dataset.stats.items() if n} == {"damaged_shard": 1}
    examples = dataset.processor.stats.report().by_cause["damaged_shard"]["examples"]
    assert examples == ["bad.tar"]


@pytest.mark.parametrize("where", ["between_members", "not_a_tar"])
def test_a_damaged_shard_under_raise_is_an_error_naming_it(tmp_path, where):
    bad, complete = _cut_tar(tmp_path, where)
    dataset = streaming_chat_dataset(None, source="webdataset", data_files=str(bad), shuffle_buffer_size=1)
    refusal = (rf"sample bad.tar#{complete} \(bad.tar\): shard {bad} is damaged after {complete} records "
               r"\(ReadError: .*\); the rest of it was not read \(how many records it held is unknown\)")
    with pytest.raises(DamagedShardError, match=refusal):
        list(dataset)
