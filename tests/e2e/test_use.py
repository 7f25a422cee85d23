"""Using a trained model: sampling through the KV cache, scoring files, dynamic evaluation, and the compressor's
round trip (on a small model trained here for a few steps)."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import SAMPLE, TINY_MODEL, tiny_text

from chargpt.errors import CheckpointError, CompressionError
from chargpt.evaluation.config import DynamicEvalConfig, MixtureConfig
from chargpt.evaluation.scoring import dynamic_score, gradient_rms, split_score
from chargpt.model.config import ModelConfig
from chargpt.model.gpt import GPT
from chargpt.train.checkpoint import save_checkpoint
from chargpt.use.compression import compress, decompress
from chargpt.use.inference import file_sha256, load_adaptable, load_trained, sample

CONFIG = ModelConfig(**TINY_MODEL)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny model trained 150 steps on generated text, saved as the train stage saves it."""
    torch.manual_seed(0)
    model = GPT(CONFIG)
    data = torch.frombuffer(bytearray(tiny_text(20_000)), dtype=torch.uint8).long()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        starts = torch.randint(len(data) - 33, (16, 1), generator=gen)
        chunk = data[starts + torch.arange(33)]
        model(chunk[:, :-1], chunk[:, 1:])[1].backward()
        opt.step()
        opt.zero_grad()
    path = tmp_path_factory.mktemp("model") / "model.pt"
    rms = gradient_rms(model, data.to(torch.uint8), torch.device("cpu"))
    save_checkpoint(path, model, {"model": CONFIG.model_dump()}, step=150, dynamic_rms=rms)
    return path


def test_the_kv_cache_gives_the_full_windows_logits():
    torch.manual_seed(0)
    model = GPT(CONFIG).eval()
    x = torch.randint(0, 256, (3, 32))
    full, _ = model(x)
    cache = model.new_cache()
    pieces = [model(x[:, :5], cache=cache)[0]]
    storage = cache.keys.data_ptr(), cache.values.data_ptr()
    pieces += [model(x[:, t : t + 1], cache=cache)[0] for t in range(5, 20)]
    pieces.append(model(x[:, 20:], cache=cache)[0])  # several positions at once on a non-empty cache
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)
    # one allocation for the whole window, at the first append: no byte copies the cache
    assert (cache.keys.data_ptr(), cache.values.data_ptr()) == storage and cache.length == 32
    assert cache.keys.shape == (CONFIG.n_layer, 3, CONFIG.n_head, CONFIG.context, CONFIG.d_model // CONFIG.n_head)
    with pytest.raises(ValueError, match="window of 33 positions exceeds the model's context 32"):
        model(x[:, :1], cache=cache)


def test_sampling_is_reproducible_and_slides_past_the_context(checkpoint):
    model = load_trained(checkpoint)
    a = sample(model, b"the ", 200, seed=3)  # 200 > context 32: the window restarts several times
    assert len(a) == 200 and a == sample(model, b"the ", 200, seed=3) and a != sample(model, b"the ", 200, seed=4)
    assert sample(model, b"x" * 100, 5, seed=0)  # a prompt longer than the context keeps its last bytes
    greedy = sample(model, b"the model", 20, top_k=1)
    assert greedy == sample(model, b"the model", 20, top_k=1, seed=99)  # top-1 is the argmax whatever the seed
    words = sample(model, b"the ", 300, temperature=0.5, seed=1).split()
    assert sum(w in (b"the", b"byte", b"model", b"and", b"of") for w in words) > len(words) / 3  # it learned words
    with pytest.raises(ValueError, match="at least one byte"):
        sample(model, b"", 5)


def test_dynamic_evaluation_learns_from_what_it_has_scored_only(checkpoint):
    model = load_trained(checkpoint)
    text = torch.frombuffer(bytearray(b"zq9 " * 600), dtype=torch.uint8)  # unlike the training text: learnable here
    static, dynamic = split_score(model, text, 32, 16), dynamic_score(model, text, 32, DynamicEvalConfig(lr=3e-3))
    assert static.bytes_scored == dynamic.bytes_scored == len(text) - 1 and dynamic.bpc < static.bpc - 1.0
    assert dynamic.accuracy > static.accuracy
    before = [p.clone() for p in model.parameters()]
    dynamic_score(model, text, 32, DynamicEvalConfig(lr=3e-3, optimizer="sgd", windows=3, decay=0.01))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the trained model is untouched
    # The first window is scored before any update: the same as static scoring of it.
    first = text[:33]
    assert dynamic_score(model, first, 32, DynamicEvalConfig()).bpc == pytest.approx(
        split_score(model, first, 32, 1).bpc
    )


CASES = {
    "empty": b"",
    "one byte": b"x",
    "random bytes": np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes(),
    "not on a window boundary": tiny_text(5000)[: 32 * 40 + 7],
    "utf-16": "le modèle d'octets, un test en UTF-16 ".encode("utf-16") * 12,
    "shorter than a window": b"the byte model",
}


@pytest.mark.parametrize("name", list(CASES))
def test_the_round_trip_is_byte_exact_and_the_size_is_the_bpc(checkpoint, name):
    model, sha = load_trained(checkpoint), file_sha256(checkpoint)
    data = CASES[name]
    blob, stats = compress(model, sha, data)
    out, _ = decompress(model, sha, blob)
    assert out == data
    if len(data) >= 1000:
        score = split_score(model, torch.frombuffer(bytearray(data), dtype=torch.uint8), 32, 16)
        ideal = score.bytes_scored * score.bpc / 8  # bytes of information the model assigns the data
        lanes = 32  # one stored byte for each lane after the first, and the first byte
        assert stats.compressed_bytes - stats.header_bytes <= ideal * 1.001 + lanes + 4


@pytest.mark.parametrize(
    "settings",
    [
        DynamicEvalConfig(lr=3e-3, windows=2),
        DynamicEvalConfig(lr=0.1, optimizer="sgd", stride=12),
        DynamicEvalConfig(lr=3e-4, optimizer="rms", decay=0.01, stride=12, windows=2),
    ],
)
def test_dynamic_compression_adapts_as_dynamic_evaluation_does(checkpoint, settings):
    (model, rms), sha = load_adaptable(checkpoint), file_sha256(checkpoint)
    data = b"zq9 " * 300 + tiny_text(700)
    blob, stats = compress(model, sha, data, dynamic=settings, rms=rms)
    out, _ = decompress(model, sha, blob, rms=rms)
    assert out == data
    score = dynamic_score(model, torch.frombuffer(bytearray(data), dtype=torch.uint8), 32, settings, rms=rms)
    static, _ = compress(model, sha, data)
    assert stats.compressed_bytes - stats.header_bytes <= score.bytes_scored * score.bpc / 8 * 1.001 + 5
    assert stats.compressed_bytes < len(static)  # it learned the repeats


def test_a_file_coded_with_the_rms_update_is_refused_with_a_model_file_that_lacks_its_rms(checkpoint):
    (model, rms), sha = load_adaptable(checkpoint), file_sha256(checkpoint)
    blob, _ = compress(model, sha, tiny_text(300), dynamic=DynamicEvalConfig(optimizer="rms", lr=3e-4), rms=rms)
    with pytest.raises(CheckpointError, match=r"^old\.pt: holds no dynamic_rms"):
        decompress(model, sha, blob, model_file="old.pt")


@pytest.mark.parametrize(
    "stride, dynamic", [(None, None), (12, None), (None, DynamicEvalConfig(lr=0.1, optimizer="sgd", stride=12))]
)
def test_mixed_compression_is_byte_exact_at_the_mixed_score(checkpoint, stride, dynamic):
    """The size is the mixed BPC that scoring reports (the same mixture, the same bytes in the same order), and the
    context model wins where the text repeats what the tiny model cannot hold."""
    model, sha = load_trained(checkpoint), file_sha256(checkpoint)
    data = b"zq9 " * 300 + tiny_text(700)
    mixture = MixtureConfig(order=6, table_bits=16)
    blob, stats = compress(model, sha, data, dynamic=dynamic, stride=stride, mixture=mixture)
    assert decompress(model, sha, blob)[0] == data
    tensor = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    if dynamic:
        score = dynamic_score(model, tensor, 32, dynamic, mixture=mixture)
    else:
        score = split_score(model, tensor, 32, 16, stride=stride, mixture=mixture)
    assert score.mixed.bpc < score.bpc
    ideal = score.bytes_scored * score.mixed.bpc / 8
    assert ideal - 8 <= stats.compressed_bytes - stats.header_bytes <= ideal * 1.001 + 8
    assert stats.compressed_bytes < len(compress(model, sha, data, dynamic=dynamic, stride=stride)[0])


def test_decoding_refuses_another_model_another_setup_and_damage(checkpoint, tmp_path, monkeypatch):
    model, sha = load_trained(checkpoint), file_sha256(checkpoint)
    blob, _ = compress(model, sha, tiny_text(2000))
    with pytest.raises(CompressionError, match="compressed with the model of sha256 .*decompress with the same model"):
        decompress(model, "0" * 64, blob)
    import chargpt.use.compression as compression

    monkeypatch.setattr(
        compression, "environment", lambda: {"torch": "0.0", "device": "cpu", "cpu_capability": "AVX2", "threads": 1}
    )
    with pytest.raises(CompressionError, match="made on another setup .torch: compressed with '.*', here '0.0'"):
        decompress(model, sha, blob)
    monkeypatch.undo()
    damaged = bytearray(blob)
    damaged[-20] ^= 0xFF
    with pytest.raises(CompressionError, match="damaged payload .its CRC-32 does not match"):
        decompress(model, sha, bytes(damaged))
    with pytest.raises(CompressionError, match="not a chargpt-compressed file"):
        decompress(model, sha, b"PK\x03\x04 a zip")


def test_the_commands_run_from_a_checkpoint(checkpoint, tmp_path, monkeypatch, chargpt_cli):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.txt").write_bytes(tiny_text(3000))

    def run(*args, checkpoint=checkpoint):
        return chargpt_cli(*args, *(["--checkpoint", str(checkpoint)] if checkpoint else []))

    status, out, _ = run("sample", "--prompt", "the ", "--bytes", "50", "--seed", "2")
    assert status == 0 and len(out) == 50
    score = json.loads(run("score", "in.txt")[1])
    assert score["bytes_scored"] == 2999 and 0 < score["bpc"] < 8 and score["stride"] == 32
    assert score["protocol"] == "consecutive windows" and score["precision"] == "fp32"  # no run to follow
    assert json.loads(run("score", "in.txt", "--stride", "8")[1])["protocol"] == "sliding windows (--stride)"
    assert (
        score["accuracy"]
        == round(
            split_score(
                load_trained(checkpoint),
                torch.frombuffer(bytearray((tmp_path / "in.txt").read_bytes()), dtype=torch.uint8),
                32,
                64,
            ).accuracy,
            5,
        )
        and 0 < score["accuracy"] < 1
    )
    dynamic = json.loads(run("score", "in.txt", "--dynamic")[1])
    assert "bpc_dynamic" in dynamic and "accuracy_dynamic" in dynamic and dynamic["dynamic"]["optimizer"] == "adam"
    mixed = json.loads(run("score", "in.txt", "--mix")[1])
    assert (
        mixed["bpc"] == score["bpc"] and 0 < mixed["bpc_mixed"] < 8 and mixed["mixture"] == MixtureConfig().model_dump()
    )
    packed = json.loads(run("compress", "in.txt", "mixed.cgz", "--mix")[1])
    assert packed["protocol"] == "consecutive windows, mixed with a context model"
    assert (
        run("decompress", "mixed.cgz", "mixed.txt")[0] == 0
        and (tmp_path / "mixed.txt").read_bytes() == (tmp_path / "in.txt").read_bytes()
    )
    packed = json.loads(run("compress", "in.txt", "in.cgz")[1])
    assert packed["output_bytes"] == (tmp_path / "in.cgz").stat().st_size
    assert packed["protocol"] == "consecutive windows"
    assert packed["bits_per_byte"] < 8 and run("decompress", "in.cgz", "out.txt")[0] == 0
    assert (tmp_path / "out.txt").read_bytes() == (tmp_path / "in.txt").read_bytes()
    status, _, message = run("sample", "--run", "nope", checkpoint=None)
    assert status == 1 and "models/nope/model.pt: not found" in message and "dvc pull train@nope" in message


def test_the_round_trip_on_the_samples_test_split(checkpoint):
    import bz2

    text = bz2.open(SAMPLE).read()
    test = text[len(text) - 304_488 :]  # the last 5%: the sample's test split
    model, sha = load_trained(checkpoint), file_sha256(checkpoint)
    blob, stats = compress(model, sha, test)
    assert decompress(model, sha, blob)[0] == test
    score = split_score(model, torch.frombuffer(bytearray(test), dtype=torch.uint8), 32, 64)
    assert stats.compressed_bytes - stats.header_bytes <= score.bytes_scored * score.bpc / 8 * 1.001 + 32
    assert math.isfinite(stats.bits_per_byte)


def test_sliding_windows_compress_as_score_with_a_stride_scores(checkpoint):
    model, sha = load_trained(checkpoint), file_sha256(checkpoint)
    data = tiny_text(3000)
    blob, stats = compress(model, sha, data, stride=12)
    assert decompress(model, sha, blob)[0] == data
    score = split_score(model, torch.frombuffer(bytearray(data), dtype=torch.uint8), 32, 16, stride=12)
    assert stats.compressed_bytes - stats.header_bytes <= score.bytes_scored * score.bpc / 8 * 1.001 + 5
    assert len(blob) < len(compress(model, sha, data)[0])  # more context per byte: fewer bits


def test_damage_and_truncation_are_refused_before_any_decoding(checkpoint):
    """Every truncation point and every single-bit flip of a compressed file: refused at once with one
    CompressionError naming the damage (the header's CRC-32, the payload's length and sha256), never decoded."""
    import time

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from chargpt.errors import CompressionError

    model, sha = load_trained(checkpoint), file_sha256(checkpoint)
    data = tiny_text(400)
    blob, _ = compress(model, sha, data)
    assert decompress(model, sha, blob)[0] == data

    def refused(damaged: bytes) -> str:
        start = time.perf_counter()
        with pytest.raises(CompressionError) as err:
            decompress(model, sha, damaged, source="f.cgz")
        assert time.perf_counter() - start < 0.5
        return str(err.value)

    @settings(max_examples=150, deadline=None, database=None)
    @given(st.integers(0, len(blob) - 1))
    def truncated(k):
        assert refused(blob[:k]).startswith("f.cgz: ")

    @settings(max_examples=300, deadline=None, database=None)
    @given(st.integers(0, len(blob) * 8 - 1))
    def flipped(bit):
        damaged = bytearray(blob)
        damaged[bit // 8] ^= 1 << (bit % 8)
        message = refused(bytes(damaged))
        assert "sha256 does not match" in message or "CRC-32" in message or "truncated" in message or \
            "not a chargpt-compressed file" in message, message  # fmt: skip

    truncated()
    flipped()
    assert "payload of" in refused(blob[:-3]) and "damaged payload" in refused(blob[:-1] + bytes([blob[-1] ^ 1]))


def split_blob(blob: bytes) -> tuple[dict, bytes]:
    """A file compress wrote (format 3): its header, inflated, and its payload."""
    import json
    import struct
    import zlib

    from chargpt.use.compression import MAGIC

    (size,) = struct.unpack_from("<I", blob, len(MAGIC))
    head = zlib.decompress(blob[len(MAGIC) + 4 : len(MAGIC) + 4 + size])
    return json.loads(head), blob[len(MAGIC) + 4 + size + 4 :]


def forge(header: dict, payload: bytes, version: int = 3) -> bytes:
    """A file of format 2, 3 or 4 with this header, its CRC-32 and the payload's length and checksum all valid, as
    whoever crafts a file would compute them."""
    import hashlib
    import json
    import struct
    import zlib

    from chargpt.use.compression import MAGIC

    if version == 2:
        header = header | {"format": 2, "payload_bytes": len(payload),
                           "payload_sha256": hashlib.sha256(payload).hexdigest()}  # fmt: skip
        head = json.dumps(header, sort_keys=True).encode()
    else:
        header = header | {"format": version, "payload_bytes": len(payload), "payload_crc32": zlib.crc32(payload)}
        head = zlib.compress(json.dumps(header, sort_keys=True).encode())
    return MAGIC + struct.pack("<I", len(head)) + head + struct.pack("<I", zlib.crc32(head)) + payload


def test_a_format_1_file_as_the_first_release_wrote_it_decodes_byte_exact(checkpoint):
    """The first release (5297e33) wrote MAGIC, the header's length, the header, then the stored bytes and the coder's
    words: no CRC, no payload checksum, and a protocol of context, lanes and dynamic only (no stride)."""
    import hashlib
    import json
    import struct

    from chargpt.use.compression import MAGIC, environment

    model, sha = load_trained(checkpoint), file_sha256(checkpoint)
    data = tiny_text(500)
    _, payload = split_blob(compress(model, sha, data)[0])  # the coding itself has not changed since
    header = {"format": 1, "length": len(data), "sha256": hashlib.sha256(data).hexdigest(), "model_sha256": sha,
              "protocol": {"context": 32, "lanes": 32, "dynamic": None}, **environment()}  # fmt: skip
    head = json.dumps(header, sort_keys=True).encode()
    old = MAGIC + struct.pack("<I", len(head)) + head + payload
    assert decompress(model, sha, old)[0] == data


@pytest.fixture(scope="module")
def small_file(checkpoint):
    """(model, its sha256, 300 bytes compressed with it): what the crafted headers start from."""
    model, sha = load_trained(checkpoint), file_sha256(checkpoint)
    return model, sha, compress(model, sha, tiny_text(300))[0]


CRAFTED = [  # (change to a valid header, what the one line says)
    (lambda h: h | {"length": 10**15}, "declares 1,000,000,000,000,000 bytes, more than --max-length"),
    (lambda h: h | {"length": -5}, "length: Input should be greater than or equal to 0"),
    (lambda h: h | {"length": 1.5}, "length: Input should be a valid integer"),
    (lambda h: h | {"threads": 10**6}, "threads 1000000 exceeds this machine's"),
    (lambda h: h | {"threads": 0}, "threads: Input should be greater than or equal to 1"),
    (lambda h: h | {"protocol": h["protocol"] | {"stride": -3}}, "protocol.stride: Input should be greater than"),
    (lambda h: h | {"protocol": h["protocol"] | {"stride": 33}}, "protocol.stride 33 must be between 1 and the model"),
    (lambda h: h | {"protocol": h["protocol"] | {"lanes": 10**9}}, "protocol.lanes: Input should be less than"),
    (lambda h: h | {"protocol": h["protocol"] | {"context": 0}}, "protocol.context: Input should be greater"),
    (lambda h: h | {"protocol": h["protocol"] | {"dynamic": {"lr": -1}}}, "protocol.dynamic.lr: Input should be"),
    (lambda h: h | {"protocol": h["protocol"] | {"mixture": {"table_bits": 40}}},
     "protocol.mixture.table_bits: Input should be less than or equal to 26 (got 40)"),
    (lambda h: h | {"protocol": "x"}, "protocol: Input should be a valid dictionary"),
    (lambda h: h | {"sha256": "0" * 10**6}, "sha256: String should match pattern"),
    (lambda h: h | {"surprise": 1}, "surprise: unknown key"),
    (lambda h: {k: v for k, v in h.items() if k != "threads"}, "invalid header: threads: Field required"),
]  # fmt: skip


@pytest.mark.parametrize("version", [1, 2, 3])
@pytest.mark.parametrize("change, message", CRAFTED)
def test_a_crafted_header_with_valid_checksums_is_refused_in_one_line_before_any_allocation(
    small_file, change, message, version
):
    import json
    import struct
    import time

    from chargpt.use.compression import MAGIC, MAX_HEADER

    model, sha, blob = small_file
    header, payload = split_blob(blob)
    crafted = change({k: v for k, v in header.items() if not k.startswith("payload_")})
    if version == 1:  # format 1 files get the same checks
        head = json.dumps(crafted | {"format": 1}, sort_keys=True).encode()
        blob = MAGIC + struct.pack("<I", len(head)) + head + payload
    else:
        blob = forge(crafted, payload, version)
        if version == 3 and len(json.dumps(crafted)) > MAX_HEADER:  # refused before its JSON is read
            message = f"invalid header: it inflates past {MAX_HEADER:,} bytes"
    start = time.perf_counter()
    with pytest.raises(CompressionError) as e:
        decompress(model, sha, blob, source="f.cgz")
    assert time.perf_counter() - start < 1.0
    text = str(e.value)
    assert text.startswith("f.cgz: ") and "\n" not in text and len(text) < 400
    assert message in text, text


def test_a_header_that_inflates_past_its_bound_is_refused_before_it_is_read(checkpoint):
    model, sha = load_trained(checkpoint), file_sha256(checkpoint)
    header, payload = split_blob(compress(model, sha, tiny_text(300))[0])
    bomb = forge(header | {"padding": " " * 10**8}, payload)  # 100 MB of JSON in about 100 KB
    assert len(bomb) < 200_000
    with pytest.raises(CompressionError, match="^f.cgz: invalid header: it inflates past 65,536 bytes$"):
        decompress(model, sha, bomb, source="f.cgz")
    assert decompress(model, sha, forge(header, payload, 2))[0] == tiny_text(300)  # format 2 still reads


def test_a_mixed_file_of_an_older_format_is_refused_naming_the_commit_that_decodes_it(checkpoint):
    """Formats 1 to 3 mixed with the mixture of before its weights followed each side's confidence: this version's
    mixture would decode such a file into other bytes, so it is refused, naming the commit whose mixture is theirs;
    the same file unmixed, and format 4 mixed, decode."""
    model, sha = load_trained(checkpoint), file_sha256(checkpoint)
    mixture = MixtureConfig(order=6, table_bits=16)
    blob, _ = compress(model, sha, tiny_text(300), mixture=mixture)
    header, payload = split_blob(blob)
    assert header["format"] == 4 and decompress(model, sha, forge(header, payload, 4))[0] == tiny_text(300)
    with pytest.raises(CompressionError, match="^f.cgz: format 3, mixed by the mixture before .* at commit 2600bd6$"):
        decompress(model, sha, forge(header, payload, 3), source="f.cgz")
    plain_header, plain_payload = split_blob(compress(model, sha, tiny_text(300))[0])
    assert decompress(model, sha, forge(plain_header, plain_payload, 3))[0] == tiny_text(300)


def test_decompress_max_length_refuses_a_longer_file_and_writes_nothing(checkpoint, tmp_path):
    from chargpt.use.commands import decompress_main

    model, sha = load_trained(checkpoint), file_sha256(checkpoint)
    (tmp_path / "f.cgz").write_bytes(compress(model, sha, tiny_text(300))[0])
    args = [str(tmp_path / "f.cgz"), str(tmp_path / "out" / "f.txt"), "--checkpoint", str(checkpoint)]
    with pytest.raises(CompressionError, match=r"declares 300 bytes, more than --max-length \(299 bytes\)"):
        decompress_main([*args, "--max-length", "299"])
    assert not (tmp_path / "out").exists()
    decompress_main([*args, "--max-length", "300"])
    assert (tmp_path / "out" / "f.txt").read_bytes() == tiny_text(300)
