import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from captum_ssa._utils.batches import BatchStream, is_batch_stream, iterate_batches


def test_one_tensor_and_one_tuple_are_single_batches():
    x, z = torch.randn(4, 3), torch.randn(4, 2)
    (single,) = iterate_batches(x)
    assert torch.equal(single.inputs[0], x) and single.labels is None
    (pair,) = iterate_batches((x, z))
    assert [t.shape for t in pair.inputs] == [x.shape, z.shape] and pair.labels is None
    assert not is_batch_stream(x) and not is_batch_stream((x, z))


def test_data_loader_pairs_give_inputs_and_labels_in_order():
    x, y = torch.randn(10, 3), torch.arange(10)
    batches = list(iterate_batches(DataLoader(TensorDataset(x, y), batch_size=4)))
    assert [b.size for b in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([b.inputs[0] for b in batches]), x)
    assert torch.equal(torch.cat([b.labels for b in batches]), y)


def test_streams_of_tensors_and_of_multi_input_pairs():
    x, z, y = torch.randn(6, 3), torch.randn(6, 2), torch.arange(6)
    assert [b.size for b in iterate_batches([x[:2], x[2:]])] == [2, 4]
    (batch,) = iterate_batches([((x, z), y)])
    assert len(batch.inputs) == 2 and torch.equal(batch.labels, y)
    (only_inputs,) = iterate_batches(DataLoader(TensorDataset(x), batch_size=6))
    assert only_inputs.labels is None


def test_bad_batches_name_the_problem():
    with pytest.raises(TypeError, match="iterable of batches"):
        list(iterate_batches(3))
    with pytest.raises(TypeError, match="batch 1 of inputs"):
        list(iterate_batches([torch.randn(2, 3), "x"]))
    with pytest.raises(ValueError, match="3 inputs but 2 labels"):
        list(iterate_batches([(torch.randn(3, 2), torch.arange(2))]))
    with pytest.raises(ValueError, match="NaN"):
        list(iterate_batches([torch.full((2, 2), float("nan"))]))


def test_a_batch_stream_reads_the_first_batch_once_on_entry_and_every_batch_per_read():
    x = torch.randn(10, 3)
    reads = []

    class Recorded:
        """A re-iterable stream that records each iteration."""

        def __iter__(self):
            reads.append("iteration")
            return iter([x[:4], x[4:8], x[8:]])

    stream = BatchStream(Recorded())
    assert stream.is_stream and not stream.one_shot and stream.length is None
    assert torch.equal(stream.first.inputs[0], x[:4]) and reads == ["iteration"]
    first_read = list(stream.read())
    assert first_read[0] is stream.first and reads == ["iteration"]  # continued, not re-read
    assert [b.size for b in first_read] == [4, 4, 2]
    assert [b.size for b in stream.read()] == [4, 4, 2] and len(reads) == 2


def test_a_batch_stream_of_one_batch_gives_the_same_batch_every_read():
    stream = BatchStream(torch.randn(5, 2))
    assert not stream.is_stream
    assert [batch is stream.first for _ in range(2) for batch in stream.read()] == [True, True]


def test_a_one_shot_stream_reads_once_and_an_empty_stream_is_an_error():
    x = torch.randn(6, 3)
    stream = BatchStream(iter([x[:3], x[3:]]))
    assert stream.one_shot and [b.size for b in stream.read()] == [3, 3]
    with pytest.raises(ValueError, match="one-shot iterator and was read already"):
        stream.read()
    with pytest.raises(ValueError, match="empty stream"):
        BatchStream([])
    assert BatchStream(DataLoader(TensorDataset(x), batch_size=4)).length == 2


def test_batches_with_masks_as_triples_dicts_or_mask_and_their_pieces():
    from captum_ssa._utils.batches import pieces

    ids, y = torch.randint(1, 9, (5, 4)), torch.arange(5)
    mask = torch.ones(5, 4, dtype=torch.long)
    mask[3:, 2:] = 0
    (single,) = iterate_batches(ids, mask=mask)
    assert torch.equal(single.mask, mask) and single.labels is None
    (triple,) = iterate_batches([(ids, y, mask)])
    assert torch.equal(triple.mask, mask) and torch.equal(triple.labels, y)
    (unlabelled,) = iterate_batches([(ids, None, mask)])
    assert unlabelled.labels is None and torch.equal(unlabelled.mask, mask)
    collated = {"input_ids": ids, "attention_mask": mask, "labels": y}
    (from_dict,) = iterate_batches([collated])
    assert torch.equal(from_dict.inputs[0], ids) and torch.equal(from_dict.mask, mask)
    assert torch.equal(from_dict.labels, y)
    (embeds,) = iterate_batches([{"inputs_embeds": torch.randn(5, 4, 3), "label": y}])
    assert embeds.mask is None and embeds.inputs[0].shape == (5, 4, 3)
    # batches of different lengths, from a DataLoader over a TensorDataset(x, y, mask)
    loader = DataLoader(TensorDataset(ids, y, mask), batch_size=2)
    assert [tuple(b.mask.shape) for b in iterate_batches(loader)] == [(2, 4), (2, 4), (1, 4)]
    short = [(ids[:2, :2], y[:2], mask[:2, :2]), (ids[2:], y[2:], mask[2:])]
    assert [b.mask.shape[1] for b in iterate_batches(short)] == [2, 4]
    parts = list(pieces(triple, 2))
    assert [tuple(p.mask.shape) for p in parts] == [(2, 4), (2, 4), (1, 4)]
    assert torch.equal(torch.cat([p.mask for p in parts]), mask)


def test_bad_masked_batches_name_the_problem():
    ids, y = torch.randint(1, 9, (4, 3)), torch.arange(4)
    mask = torch.ones(4, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="mask= is the mask of a single batch"):
        list(iterate_batches([ids], mask=mask))
    with pytest.raises(ValueError, match="batch 1 of inputs has no mask but batch 0 has one"):
        list(iterate_batches([(ids, y, mask), (ids, y)]))
    with pytest.raises(ValueError, match="batch 1 of inputs has a mask but batch 0 has none"):
        list(iterate_batches([(ids, y), (ids, y, mask)]))
    with pytest.raises(ValueError, match="the mask of batch 0 of inputs holds values other than"):
        list(iterate_batches([(ids, y, mask * 3)]))
    with pytest.raises(TypeError, match=r"the mask of batch 0 of inputs has dtype torch\.float"):
        list(iterate_batches([(ids, y, mask.float())]))
    with pytest.raises(ValueError, match="has 4 elements"):
        list(iterate_batches([(ids, y, mask, mask)]))
    with pytest.raises(ValueError, match=r"keys \['attention_mask', 'input_ids', 'token_type_"):
        list(iterate_batches([{"input_ids": ids, "attention_mask": mask, "token_type_ids": mask}]))
    with pytest.raises(ValueError, match="a dict batch holds one of"):
        list(iterate_batches([{"attention_mask": mask}]))
