"""engine.tcp.sendbuf.SendBuffer against a plain bytearray model (hypothesis), and its copies."""
from hypothesis import given, settings, strategies as st

from engine.tcp.sendbuf import SMALL, TAIL_MAX, SendBuffer

ops = st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers(0, 3 * TAIL_MAX), st.sampled_from(["bytes", "bytearray", "view"])),
    st.tuples(st.just("consume"), st.integers(0, 2 * TAIL_MAX), st.just("")),
    st.tuples(st.just("view"), st.integers(0, 3 * TAIL_MAX), st.integers(0, 70000)),
), max_size=40)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_matches_a_bytearray(script):
    buf, model, counter = SendBuffer(), bytearray(), 0
    for op, a, b in script:
        if op == "append":
            data = bytes((counter + i) & 0xFF for i in range(a))
            counter += a
            wrapped = {"bytes": data, "bytearray": bytearray(data), "view": memoryview(data)}[b]
            buf.append(wrapped)
            model += data
        elif op == "consume":
            n = min(a, len(model))
            buf.consume(n)
            del model[:n]
        else:
            assert bytes(buf.view(a, b)) == bytes(model[a:a + b])
        assert len(buf) == len(model)
    assert bytes(buf.view(0, len(model))) == bytes(model)


def test_bulk_path_is_zero_copy():
    chunk = bytes(range(256)) * 1024  # a 256 KiB host read
    buf = SendBuffer()
    buf.append(chunk)
    buf.append(chunk)
    v = buf.view(1000, 65536)
    assert isinstance(v, memoryview) and v.obj is chunk  # the segment is the read itself
    buf.consume(len(chunk) + 10)
    v2 = buf.view(0, 1000)
    assert v2.obj is chunk and bytes(v2) == chunk[10:1010]
    across = buf.view(len(chunk) - 20, 40)  # past the end: what is there
    assert bytes(across) == chunk[-10:]


def test_small_writes_gather_into_few_chunks():
    buf = SendBuffer()
    for _ in range(10000):
        buf.append(b"x" * 100)
    assert len(buf) == 1_000_000
    assert len(buf._chunks) <= 1_000_000 // TAIL_MAX + 1
    assert bytes(buf.view(999_990, 100)) == b"x" * 10


def test_consume_more_than_held_is_an_error():
    buf = SendBuffer()
    buf.append(b"abc")
    try:
        buf.consume(4)
    except ValueError:
        pass
    else:
        raise AssertionError("consume past the end accepted")
    assert SMALL < TAIL_MAX
