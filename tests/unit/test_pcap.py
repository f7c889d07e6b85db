"""pcap writer/reader round trip (tshark-readability is checked end to end)."""
import io

import pytest

from bus import pcap


def test_roundtrip():
    buf = io.BytesIO()
    w = pcap.PcapWriter(buf)
    frames = [bytes([i]) * (60 + i) for i in range(10)]
    for i, f in enumerate(frames):
        w.write(f, 1000.5 + i)
    buf.seek(0)
    got = list(pcap.read_pcap(buf))
    assert [f for _, f in got] == frames
    assert abs(got[3][0] - 1003.5) < 1e-5


def test_rejects_garbage_and_truncation():
    with pytest.raises(pcap.PcapError):
        list(pcap.read_pcap(io.BytesIO(b"not a pcap file at all........")))
    buf = io.BytesIO()
    pcap.PcapWriter(buf).write(b"x" * 100, 1.0)
    with pytest.raises(pcap.PcapError):
        list(pcap.read_pcap(io.BytesIO(buf.getvalue()[:-10])))
