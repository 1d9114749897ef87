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
