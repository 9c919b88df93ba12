"""A tiny Mistral the project generates itself: the model of the demo and the tests.

Same architecture family as Mistral 7B (GQA, RMSNorm, SwiGLU, rope_theta 1e6),
a byte-level BPE tokenizer trained with `tokenizers`, and a few hundred AdamW
steps on the offline text so its predictions are not noise (quantization
errors then show up as measurable accuracy loss, as on a real model).
Deterministic for a seed on one machine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline.datasets.offline import offline_texts
from pipeline.facts.architecture import Architecture

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}[INST] {{ message['content'] }} [/INST]"
    "{% else %} {{ message['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)


# Shapes every format and TensorRT-LLM's kernels accept: each linear's inputs (hidden, heads x
# head_dim, intermediate) are multiples of the AWQ group of 128 (ModelOpt's INT4 export refuses
# others), head_dim is 64, and two query heads share one KV head (GQA). vocab_size is what the
# tokenizer is trained to; the written config holds the tokenizer's own length.
TINY_DEMO = Architecture(
    vocab_size=512,
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=64,
    max_position_embeddings=512,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-5,
    sliding_window=None,
    tie_word_embeddings=False,
    source="TinyMistralSpec",
)


@dataclass(frozen=True)
class TinyMistralSpec:
    """A tiny model to generate: its architecture, and how it is trained."""

    arch: Architecture = TINY_DEMO
    train_steps: int = 300
    train_seq_len: int = 64
    train_batch: int = 16
    seed: int = 0


# Named sizes a config picks (model.tiny_size). "gpu": shapes TensorRT-LLM's kernels accept
# (head_dim 64, hidden a multiple of 128), for `make gpu-selftest`.
TINY_SIZES = {
    "demo": TinyMistralSpec(),
    "gpu": TinyMistralSpec(
        arch=replace(
            TINY_DEMO, hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2
        )
    ),
}


def tiny_spec(size: str, *, seed: int, train_steps: int) -> TinyMistralSpec:
    return replace(TINY_SIZES[size], seed=seed, train_steps=train_steps)


def _train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", "[INST]", "[/INST]"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    # PreTrainedTokenizerFast loads under transformers 4.x and 5.x alike
    # (a 5.x-saved "TokenizersBackend" class does not load in 4.57).
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


# Backward's reductions, split by thread count, give other weights with 2 threads than with 1 (a Ray
# task gets one per CPU it asks for): training on a fixed count makes the model the same bytes anywhere.
TRAIN_THREADS = 1


def generate_tiny_mistral(
    out_dir: Path, spec: TinyMistralSpec = TinyMistralSpec(), on_step: Callable[[int], None] | None = None
) -> Path:
    """Write a Hugging Face model folder (config, safetensors, tokenizer) to out_dir."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(spec.seed)
    texts = [r["text"] for r in offline_texts(2000, seed=spec.seed)]
    tokenizer = _train_tokenizer(texts, spec.arch.vocab_size)
    config = MistralConfig(
        **(spec.arch.hf_config() | {"vocab_size": len(tokenizer)}),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = MistralForCausalLM(config)
    ids = torch.tensor(tokenizer("\n".join(texts))["input_ids"], dtype=torch.long)
    windows = ids[: len(ids) // spec.train_seq_len * spec.train_seq_len].view(-1, spec.train_seq_len)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    generator = torch.Generator().manual_seed(spec.seed)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    try:
        for step in range(spec.train_steps):
            batch = windows[torch.randint(len(windows), (spec.train_batch,), generator=generator)]
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if on_step:
                on_step(step)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
