#!/usr/bin/python3
"""torch.save fixtures for sortedllama's restricted unpickler (src/io/torch_pickle.cpp).

Usage: /usr/bin/python3 tests/reference/make_torch_fixtures.py tests/data/torch_bin

Writes (deterministic, torch.manual_seed(0)):
  tiny_random_expected.safetensors  logits of ../shared/models/tiny-random-llama-hf as torch.load
                                    reads its pytorch_model.bin, from a plain float64 forward
                                    (make_reference.forward_exits); first 1024 vocabulary columns
                                    and the logsumexp over all 32000 per position
  features.bin                      torch.save of what state dicts hold: an nn.Parameter, f16,
                                    bf16 and f64 tensors, a transposed view and a view at a storage
                                    offset sharing one storage, an OrderedDict with _metadata (BUILD),
                                    enough tensors for LONG_BINPUT/LONG_BINGET
  features_expected.safetensors     the same tensors, contiguous, as F64
  features_zipfile.bin              features.bin rewritten by Python's zipfile (storages unaligned)
  features_zip64.bin                features.bin with zip64 sizes and offsets in every entry
  short_unicode.bin                 a tensor "w" = [2, 3, 4] whose name is a SHORT_BINUNICODE
  hostile_*.bin                     files that must be refused (see HOSTILE below)
"""
import collections
import io
import os
import pickle
import struct
import sys
import zipfile
import zlib

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_reference import forward_exits, write_safetensors  # noqa: E402

TINY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../../shared/models/tiny-random-llama-hf")
TOKENS = [1, 15043, 3186, 29892, 920]  # BOS "Hello world, how" with the LLaMA 2 tokenizer
COLUMNS = 1024


def tiny_random_expected(out_dir):
    import json
    cfg = json.load(open(os.path.join(TINY, "config.json")))
    cfg.setdefault("num_key_value_heads", cfg["num_attention_heads"])
    cfg.setdefault("rope_theta", 10000.0)
    state = torch.load(os.path.join(TINY, "pytorch_model.bin"), map_location="cpu", weights_only=True)
    w = {k: v.double() for k, v in state.items() if "rotary_emb.inv_freq" not in k}
    tokens = torch.tensor([TOKENS])
    logits = forward_exits(w, cfg, tokens, torch.ones_like(tokens))[-1][0]  # [T, V]
    write_safetensors(os.path.join(out_dir, "tiny_random_expected.safetensors"), {
        "tokens": tokens[0],
        "logits_head": logits[:, :COLUMNS].contiguous(),
        "logsumexp": torch.logsumexp(logits, dim=-1),
    })


def features(out_dir):
    base = torch.randn(4, 6)
    sd = collections.OrderedDict()
    sd["param"] = torch.nn.Parameter(torch.randn(3, 4))
    sd["half"] = torch.randn(5).half()
    sd["bf16"] = torch.randn(2, 3).bfloat16()
    sd["double"] = torch.randn(2).double()
    sd["base"] = base
    sd["transposed"] = base.t()
    sd["offset_view"] = base[1:, 2:5]
    sd["empty"] = torch.empty(0, 3)
    for i in range(40):  # past 256 memo entries: LONG_BINPUT and LONG_BINGET, as in real checkpoints
        sd["filler.%02d" % i] = torch.randn(2)
    late = torch.randn(3)
    sd["late"] = late
    sd["late_view"] = late[1:]
    # Read as the OrderedDict's attributes (BUILD) and ignored; lists, floats and None parse.
    sd._metadata = collections.OrderedDict({"": {"version": 1}, "layer": {"version": 2, "scale": 0.5, "tags": ["a"],
                                                                          "more": ["b", "c"], "none": None}})
    path = os.path.join(out_dir, "features.bin")
    torch.save(sd, path)
    write_safetensors(os.path.join(out_dir, "features_expected.safetensors"),
                      {k: v.detach().double().contiguous() for k, v in sd.items()})
    entries = [(i.filename, zipfile.ZipFile(path).read(i.filename)) for i in zipfile.ZipFile(path).infolist()]
    write_zip(os.path.join(out_dir, "features_zipfile.bin"), entries)
    write_zip64(os.path.join(out_dir, "features_zip64.bin"), entries)
    for name in ("features_zipfile.bin", "features_zip64.bin"):
        back = torch.load(os.path.join(out_dir, name))  # weights_only (torch 1.13) rejects BINFLOAT
        assert all(torch.equal(back[k], sd[k]) for k in sd), name
    return entries


def write_zip(path, entries, compression=zipfile.ZIP_STORED):
    """Python's zipfile, with a fixed timestamp so that the fixtures are reproducible."""
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries:
            z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data, compress_type=compression)


def write_zip64(path, entries):
    """Stored entries whose sizes and offsets all live in zip64 extra fields, as torch's writer
    (miniz) records them past 4 GiB."""
    out, central = bytearray(), bytearray()
    for name, data in entries:
        n, crc, offset = name.encode(), zlib.crc32(data), len(out)
        extra = struct.pack("<HHQQ", 1, 16, len(data), len(data))
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 0, 0, 0, crc, 0xFFFFFFFF, 0xFFFFFFFF, len(n),
                           len(extra)) + n + extra + data
        cextra = struct.pack("<HHQQQ", 1, 24, len(data), len(data), offset)
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 0, 0, 0, crc, 0xFFFFFFFF, 0xFFFFFFFF,
                               len(n), len(cextra), 0, 0, 0, 0, 0xFFFFFFFF) + n + cextra
    dir_offset, end64 = len(out), len(out) + len(central)
    out += central
    out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, len(entries), len(entries), len(central),
                       dir_offset)
    out += struct.pack("<IIQI", 0x07064B50, 0, end64, 1)
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    with open(path, "wb") as f:
        f.write(out)


# ---------------------------------------------------------------- hostile files
class Exec:
    """The classic payload: unpickling calls exec."""

    def __reduce__(self):
        return (exec, ("open('/tmp/sortedllama-pickle-ran', 'w').write('pwned')",))


class RawStorage:
    """Pickled as torch pickles a storage: a persistent id naming data/<key>, with any count."""

    def __init__(self, key, numel):
        self.key, self.numel = key, numel


class RawTensor:
    """Pickled as torch pickles a tensor, with whatever size, stride and offset it is given."""

    def __init__(self, storage, offset, size, stride, storage_arg=None):
        self.args = (storage if storage_arg is None else storage_arg, offset, size, stride, False,
                     collections.OrderedDict())

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args)


class OrderedDictWithArgs:
    """An allowed global called with arguments the unpickler must not accept."""

    def __reduce__(self):
        return (collections.OrderedDict, ([("k", "v")],))


class RawPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, RawStorage):
            return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
        return None


def save_raw(path, obj, storages):
    """A torch.save-layout zip of any object, storages given as key -> bytes."""
    buf = io.BytesIO()
    RawPickler(buf, protocol=2).dump(obj)
    write_zip(path, [("archive/data.pkl", buf.getvalue())] + [("archive/data/" + k, d) for k, d in storages.items()] +
              [("archive/version", b"3\n")])


def hostile(out_dir, entries):
    four = struct.pack("<4f", 1, 2, 3, 4)
    s = RawStorage("0", 4)
    # The raw writer makes files torch.load reads when nothing is wrong with them.
    ok = os.path.join(out_dir, "raw_ok.tmp")
    save_raw(ok, {"w": RawTensor(s, 1, (3,), (1,))}, {"0": four})
    assert torch.load(ok, weights_only=True)["w"].tolist() == [2, 3, 4]
    os.remove(ok)

    # SHORT_BINUNICODE for the name "w" (Python's protocol-2 pickler writes BINUNICODE).
    short = os.path.join(out_dir, "short_unicode.bin")
    save_raw(short, {"w": RawTensor(s, 1, (3,), (1,))}, {"0": four})
    entries_short = {i.filename: zipfile.ZipFile(short).read(i.filename) for i in zipfile.ZipFile(short).infolist()}
    pkl = entries_short["archive/data.pkl"]
    assert pkl.count(b"X\x01\x00\x00\x00w") == 1
    entries_short["archive/data.pkl"] = pkl.replace(b"X\x01\x00\x00\x00w", b"\x8c\x01w")
    write_zip(short, list(entries_short.items()))
    assert torch.load(short)["w"].tolist() == [2, 3, 4]  # weights_only (torch 1.13) rejects this opcode

    p = lambda name: os.path.join(out_dir, "hostile_" + name + ".bin")
    torch.save({"w": torch.zeros(2), "cmd": os.system}, p("global"))  # GLOBAL posix.system
    torch.save({"w": torch.zeros(2), "x": Exec()}, p("reduce_exec"))  # GLOBAL __builtin__.exec + REDUCE
    save_raw(p("ordereddict_args"), {"w": OrderedDictWithArgs()}, {})
    save_raw(p("not_a_storage"), {"w": RawTensor(s, 0, (4,), (1,), storage_arg="not a storage")}, {"0": four})
    save_raw(p("past_storage"), {"w": RawTensor(s, 0, (8,), (1,))}, {"0": four})
    save_raw(p("short_storage"), {"w": RawTensor(s, 0, (4,), (1,))}, {"0": four[:12]})
    save_raw(p("huge_size"), {"w": RawTensor(s, 0, (2 ** 40, 2 ** 40), (2 ** 40, 1))}, {"0": four})
    save_raw(p("huge_storage"), {"w": RawTensor(RawStorage("0", 2 ** 62), 0, (4,), (1,))}, {"0": four})
    save_raw(p("missing_storage"), {"w": RawTensor(RawStorage("7", 4), 0, (4,), (1,))}, {"0": four})
    write_zip(p("compressed"), entries, zipfile.ZIP_DEFLATED)


def main(out_dir):
    torch.manual_seed(0)
    os.makedirs(out_dir, exist_ok=True)
    tiny_random_expected(out_dir)
    entries = features(out_dir)
    hostile(out_dir, entries)
    print("ok:", ", ".join(sorted(os.listdir(out_dir))))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/data/torch_bin")
