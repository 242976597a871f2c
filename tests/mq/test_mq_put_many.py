"""put_data_many and put_data: order, mixed sizes (inline, staged in the producer's
buffer, direct into a pool block, general path), validation before anything is published,
partial results on a full channel, close."""

from __future__ import annotations

import threading

import numpy as np
from mq_procs import make_message, message_ok

from fluxon import api_ext_chan, codec
from fluxon.api_error import InvalidArgumentError, ProducerClosedError
from fluxon.api_ext_chan import ChanRole, ChanType, new_or_bind_with_unique_key


def _pair(store, key, capacity=64):
    cfg = {"capacity": capacity}
    handles = [
        new_or_bind_with_unique_key(store, cfg, key, ChanType.MPMC, role).unwrap()
        for role in (ChanRole.PRODUCER, ChanRole.CONSUMER)
    ]
    return handles


def _drain(consumer, n):
    out = []
    while len(out) < n:
        out += consumer.get_data(batch_size=64, try_time=5).unwrap()
    return out


def _spy_direct(monkeypatch) -> list:
    """Sizes of the messages encoded straight into a reserved pool block."""
    direct = []
    real = api_ext_chan._ChanProducer._put_large_fast

    def spy(self, value, n):
        direct.append(n)
        return real(self, value, n)

    monkeypatch.setattr(api_ext_chan._ChanProducer, "_put_large_fast", spy)
    return direct


def test_mixed_sizes_arrive_in_order_and_large_known_shapes_go_direct(store, key, monkeypatch):
    producer, consumer = _pair(store, key)
    direct = _spy_direct(monkeypatch)
    stage = api_ext_chan.STAGE_BYTES
    # Inline, staged (up to STAGE_BYTES: encoded into the producer's buffer, copied by
    # the publishing kernel) and direct, interleaved.
    pads = [0, 4096, 10, 100_000, 4096, stage - 200, stage + 10, 0]
    seq = 0
    got = []
    for _round in range(6):  # later rounds: the shapes are known, large ones go direct
        batch = [make_message(7, seq + i, pad) for i, pad in enumerate(pads)]
        batch.append({"arr": np.arange(700, dtype=np.float64), "seq": seq + len(pads)})
        assert producer.put_data_many(batch, try_time=5).unwrap() == len(batch)
        seq += len(batch)
        got += _drain(consumer, len(batch))
    assert [m["seq"] for m in got] == list(range(seq))
    assert all(message_ok(m) for m in got if "p" in m)
    arrays = [m["arr"] for m in got if "arr" in m]
    assert len(arrays) == 6 and all(np.array_equal(a, np.arange(700.0)) for a in arrays)
    assert direct, "no large message of a known shape was encoded straight into the pool"
    assert min(direct) > stage, "a message up to STAGE_BYTES went direct, not staged"
    producer.close()
    consumer.close()


def test_a_batch_larger_than_the_staging_buffer_grows_it(store, key):
    producer, consumer = _pair(store, key, capacity=256)
    for rnd in range(3):
        batch = [make_message(3, rnd * 200 + i, 5000 + i) for i in range(200)]  # ~1 MB
        assert producer.put_data_many(batch, try_time=5).unwrap() == 200
        got = _drain(consumer, 200)
        assert [m["seq"] for m in got] == [m["seq"] for m in batch]
        assert all(message_ok(m) and len(m["pad"]) == 5000 + i for i, m in enumerate(got))
    producer.close()
    consumer.close()


def test_put_data_stages_mid_sized_messages_and_sends_larger_ones_direct(store, key, monkeypatch):
    producer, consumer = _pair(store, key, capacity=4)
    direct = _spy_direct(monkeypatch)
    stage = api_ext_chan.STAGE_BYTES
    pads = [3000, stage - 200, stage + 10, 300_000]
    seq = 0
    for _round in range(4):  # later rounds: the shape is known (the fast path)
        for pad in pads:
            assert producer.put_data(make_message(4, seq, pad), try_time=5).unwrap() is True
            seq += 1
        got = _drain(consumer, len(pads))
        assert [len(m["pad"]) for m in got] == pads and all(message_ok(m) for m in got)
    assert direct and min(direct) > stage
    # A full channel: a staged message waits for room, then goes out.
    for i in range(4):
        assert producer.put_data(make_message(4, seq + i, 3000), try_time=5).unwrap() is True
    assert producer.put_data(make_message(4, seq + 4, 3000), try_time=0.05).unwrap() is False
    assert len(_drain(consumer, 4)) == 4
    assert producer.put_data(make_message(4, seq + 4, 3000), try_time=5).unwrap() is True
    assert [m["seq"] for m in _drain(consumer, 1)] == [seq + 4]
    producer.close()
    consumer.close()


def test_a_bad_value_publishes_nothing_and_names_its_index(store, key):
    producer, consumer = _pair(store, key)
    batch = [make_message(1, 0), make_message(1, 1, 5000), {"bad": object()}, make_message(1, 3)]
    err = producer.put_data_many(batch).unwrap_error()
    assert isinstance(err, InvalidArgumentError) and "values[2]" in err.message
    assert err.details["index"] == 2
    assert not consumer.get_data(batch_size=8, try_time=0.05).is_ok()  # nothing went out
    for bad in ({"a": 1}, 5, None):
        assert isinstance(producer.put_data_many(bad).unwrap_error(), InvalidArgumentError)
    assert producer.put_data_many([]).unwrap() == 0
    producer.close()
    consumer.close()


def test_a_full_channel_gives_the_count_published_then_close(store, key):
    producer, consumer = _pair(store, key, capacity=4)
    batch = [make_message(2, i, 3000 if i % 2 else 0) for i in range(7)]
    assert producer.put_data_many(batch, try_time=0).unwrap() == 4  # the first four fit
    assert producer.put_data_many(batch[4:], try_time=0.05).unwrap() == 0
    got = _drain(consumer, 4)
    assert [m["seq"] for m in got] == [0, 1, 2, 3]
    assert producer.put_data_many(batch[4:], try_time=5).unwrap() == 3
    assert [m["seq"] for m in _drain(consumer, 3)] == [4, 5, 6]
    producer.close()
    err = producer.put_data_many(batch).unwrap_error()
    assert isinstance(err, ProducerClosedError)
    consumer.close()


def test_batches_of_one_shape_decode_trusted_and_mixed_batches_in_full(store, key, monkeypatch):
    producer, consumer = _pair(store, key)
    trusted = []
    real = api_ext_chan._decode_trusted

    def spy(dec, buf, offs, lens):
        got = real(dec, buf, offs, lens)
        trusted.append(got is not None)
        return got

    monkeypatch.setattr(api_ext_chan, "_decode_trusted", spy)
    one_shape = [{"seq": i, "t": -i, "payload": bytes([i]) * i} for i in range(40)]
    mixed = [
        {"seq": i, "t": -i, "payload": b"x"} if i % 3 else {"seq": i, "name": "é" * i}
        for i in range(40)
    ]
    calls = []
    for batch in (one_shape, one_shape, mixed, one_shape, one_shape):
        assert producer.put_data_many(batch, try_time=5).unwrap() == len(batch)
        assert consumer.get_data(batch_size=64, try_time=5).unwrap() == batch
        calls.append(len(trusted))
    # Once the decoder of the shape is known, a batch of that shape alone is decoded
    # trusted; the mixed one fails the constant check and is decoded in full (as is the
    # batch after it: the last decoder is then the other shape's).
    assert all(trusted)
    assert calls[1] > calls[0] and calls[2] == calls[1] and calls[4] > calls[3]


def test_a_batch_larger_than_the_capacity_goes_out_in_parts_in_order(store, key):
    producer, consumer = _pair(store, key, capacity=4)
    batch = [make_message(3, i, i * 7) for i in range(10)]  # all inline, one shape
    scratch = np.zeros(4096, dtype=np.uint8)
    for _ in range(codec.FAST_AFTER + 1):  # the shape is known: all of it on the fast path
        codec.encode_fast(batch[0], scratch, 0, scratch.size)
    got: list = []
    drain = threading.Thread(target=lambda: got.extend(_drain(consumer, len(batch))))
    drain.start()
    # Published four (or fewer) at a time from wherever the last part ended.
    assert producer.put_data_many(batch, try_time=5).unwrap() == len(batch)
    drain.join(timeout=10)
    assert got == batch
