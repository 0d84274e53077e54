"""Tokenizers and corpora for tests, built locally (nothing is downloaded; import as ``tokkit``).

``train_bpe`` trains a small byte-level BPE with the ``tokenizers`` library (decoding gives the
text back exactly); ``hf_folder`` saves it as a transformers tokenizer folder; ``big_wordlevel``
is a vocabulary over 65 536 ids (a uint32 dataset) that costs no training.
"""

from __future__ import annotations

import random
from pathlib import Path

EOS = "<|endoftext|>"
WORDS = ("pipe", "wave", "stage", "batch", "tensor", "grädient", "naïve", "café", "λ", "🙂", "fox",
         "the", "of", "and", "layer", "loss", "step", "seed")


def texts(n: int, seed: int = 0, words: int = 40) -> list[str]:
    """``n`` generated documents (a few lines of words, some non-ASCII), different from each other."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
                 for _ in range(max(1, words // 8))]
        out.append(f"document {i}: " + "\n".join(lines) + "\n")
    return out


def train_bpe(tmp_path: Path, corpus: list[str], vocab_size: int = 320, name: str = "tokenizer.json") -> Path:
    """A byte-level BPE trained on ``corpus``, EOS ``<|endoftext|>`` (id 0), saved as ``tmp_path/name``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer=trainer)
    path = tmp_path / name
    tok.save(str(path))
    return path


def hf_folder(tokenizer_json: Path, folder: Path) -> Path:
    """``tokenizer_json`` as a transformers tokenizer folder (``save_pretrained``), EOS set."""
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_json), eos_token=EOS).save_pretrained(str(folder))
    return folder


def big_wordlevel(tmp_path: Path, size: int = 70_000) -> Path:
    """A whitespace word-level tokenizer of ``size`` ids: ``w0`` .. ``w{size-2}`` and EOS last."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(size - 1)} | {EOS: size - 1}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=EOS))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece()  # joins words with spaces
    path = tmp_path / "wordlevel.json"
    tok.save(str(path))
    return path
