#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets that need no C++ to make (standard library only):

    python3 tests/fuzz/make_seeds.py

corpus/safetensors_fuzzer/   small safetensors files: every dtype, metadata, empty and scalar
                             tensors, a sharded-style name, an index-padded header
corpus/tokenizer_json_fuzzer/ tokenizer.json variants (GPT-2 ByteLevel regex, Digits, Split
                             behaviours, list-form merges, added tokens) and tokenizer_config.json
corpus/*_encode_fuzzer/      texts: ASCII, mixed scripts, whitespace runs, digits, special-token
                             text, invalid UTF-8
corpus/sentencepiece_model_fuzzer/ tiny models trained with Debian's spm_train (if installed)
corpus/checkpoint_fuzzer/ comes from the make_checkpoint_seeds program (see CMakeLists.txt)."""
import json
import pathlib
import shutil
import struct
import subprocess
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
CORPUS = HERE / "corpus"


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))


def safetensors(tensors, metadata=None, pad=True):
    """tensors: list of (name, dtype, shape, raw bytes)."""
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


def safetensors_seeds():
    f32 = struct.pack("<6f", 0.5, -1.25, 3.0, 0.0, 1e-3, 7.5)
    write("safetensors_fuzzer", "all_dtypes.safetensors", safetensors([
        ("f32", "F32", [2, 3], f32),
        ("f16", "F16", [2], struct.pack("<2e", 1.5, -2.0)),
        ("bf16", "BF16", [1], b"\x80\x3f"),
        ("i64", "I64", [2], struct.pack("<2q", 1 << 40, -5)),
        ("i32", "I32", [1, 2], struct.pack("<2i", -1, 2)),
        ("u8", "U8", [3], b"\x00\xff\x11"),
    ], {"format": "pt", "step": "42"}))
    write("safetensors_fuzzer", "empty_and_scalar.safetensors", safetensors([
        ("scalar", "F32", [], struct.pack("<f", 3.5)),
        ("empty", "F32", [0, 4], b""),
    ]))
    write("safetensors_fuzzer", "no_tensors.safetensors", safetensors([], {"k": "v"}))
    write("safetensors_fuzzer", "unpadded.safetensors", safetensors(
        [("model.layers.0.mlp.down_proj.weight", "F32", [1, 2], f32[:8])], pad=False))
    write("safetensors_fuzzer", "null_metadata.safetensors",
          struct.pack("<Q", 22) + b'{"__metadata__":null} ')


def tokenizer_json_seeds():
    symbols = {}
    shifted = 0
    for b in range(256):
        printable = 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or b >= 0xAE
        symbols[b] = chr(b) if printable else chr(256 + shifted)
        shifted += 0 if printable else 1
    vocab = {symbols[b]: b for b in range(256)}
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("1", "2"), ("Ã", "©")]
    for left, right in merges:
        vocab[left + right] = len(vocab)

    def tokenizer(pre, list_merges=False, added=True, extra_model=None, first_added_id=300):
        model = {"type": "BPE", "vocab": vocab,
                 "merges": [[l, r] if list_merges else f"{l} {r}" for l, r in merges]}
        model.update(extra_model or {})
        return json.dumps({
            "version": "1.0",
            "added_tokens": [
                {"id": first_added_id, "content": "<|endoftext|>", "special": True},
                {"id": first_added_id + 1, "content": "<|im", "special": False}] if added else [],
            "normalizer": None, "pre_tokenizer": pre, "decoder": {"type": "ByteLevel"},
            "model": model}, ensure_ascii=False)

    gpt2 = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    write("tokenizer_json_fuzzer", "gpt2_bytelevel.json", tokenizer(gpt2))
    # Ids with a gap (allowed up to twice the token count plus 256; beyond is refused).
    write("tokenizer_json_fuzzer", "sparse_ids.json", tokenizer(gpt2, first_added_id=700))
    write("tokenizer_json_fuzzer", "prefix_space_list_merges.json",
          tokenizer(dict(gpt2, add_prefix_space=True), list_merges=True, added=False))
    seq = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithNext",
         "invert": False},
        {"type": "Split", "pattern": {"Regex": r"\p{N}+"}, "behavior": "Removed", "invert": True},
        {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]}
    write("tokenizer_json_fuzzer", "sequence_digits_split.json",
          tokenizer(seq, extra_model={"ignore_merges": True}))
    write("tokenizer_json_fuzzer", "not_bpe.json", json.dumps(
        {"model": {"type": "Unigram", "vocab": [["a", -1.0]]}}))
    write("tokenizer_json_fuzzer", "tokenizer_config.json", json.dumps(
        {"bos_token": {"content": "<s>", "lstrip": False}, "eos_token": "</s>"}))


def text_seeds():
    texts = {
        "ascii.txt": "The quick brown fox jumps over the lazy dog. It's 12345 o'clock!\n",
        "mixed_scripts.txt": "Grüße, Ελληνικά, русский, 日本語のテキスト, 한국어, العربية 😀👍🏽\n",
        "whitespace.txt": "  leading\t\ttabs\r\n\r\n  trailing   \n\n\n\u00a0nbsp\u3000wide ",
        "digits.txt": "3.14159 2718281828 1,000,000 0x1F 1e-9 ٣٤٥ ۶۷۸",
        "special_tokens.txt": "<s>hi</s> <|endoftext|><|im_start|>user\n<|im_end|> <unk> <|im",
        "combining.txt": "e\u0301 a\u0308 n\u0303 \ufb01 \u2126 \uff21\uff22 \u00bd \u2460",
        "invalid_utf8.bin": b"ok \xc3\x28 \xa0\xa1 \xe2\x82 \xf0\x9f\x98 \xed\xa0\x80 \xff end",
        "empty.txt": "",
    }
    for target in ("sentencepiece_encode_fuzzer", "bpe_encode_fuzzer"):
        for name, text in texts.items():
            write(target, name, text)


def sentencepiece_seeds():
    spm_train = shutil.which("spm_train")
    if spm_train is None:
        print("spm_train not found (Debian package sentencepiece): model seeds skipped")
        return
    text = "\n".join([
        "the cat sat on the mat . the dog ate the bone .",
        "Grüße aus Köln ! 日本語 の テキスト 123 456",
        "hello hello world world <sep> tokens and more tokens",
    ] * 20)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = pathlib.Path(tmp) / "text.txt"
        corpus.write_text(text, encoding="utf-8")
        # A few normalization rules make a precompiled charsmap of a few hundred bytes (the
        # default nmt_nfkc one is 237 KB, too big for a seed; the shipped model has it).
        rules = pathlib.Path(tmp) / "rules.tsv"
        rules.write_text("FF21\t41\nFB01\t66 69\n2126\t3A9\n3000\t20\n", encoding="utf-8")
        identity = "--normalization_rule_name=identity"
        for model_type, vocab, extra in [
                ("unigram", 320, ["--byte_fallback=true", f"--normalization_rule_tsv={rules}"]),
                ("bpe", 60, ["--user_defined_symbols=<sep>", identity]),
                ("word", 40, ["--remove_extra_whitespaces=false", identity]),
                ("char", 40, ["--add_dummy_prefix=false", "--split_by_whitespace=false",
                              identity])]:
            prefix = pathlib.Path(tmp) / model_type
            subprocess.run([spm_train, f"--input={corpus}", f"--model_prefix={prefix}",
                            f"--model_type={model_type}", f"--vocab_size={vocab}",
                            "--character_coverage=1.0", "--hard_vocab_limit=false",
                            "--minloglevel=2", *extra], check=True, capture_output=True)
            write("sentencepiece_model_fuzzer", f"{model_type}.model",
                  (prefix.with_suffix(".model")).read_bytes())


if __name__ == "__main__":
    safetensors_seeds()
    tokenizer_json_seeds()
    text_seeds()
    sentencepiece_seeds()
