"""Reference fixture for apt-data's UMT5 encoder (Wan 2.1's text encoder) and its tokenizer,
made with transformers' own UMT5EncoderModel and T5 fast tokenizer.

Run by `cargo xtask fixtures`. Writes, under the output directory:

  tokenizer/         a small SentencePiece-style Unigram tokenizer (trained here on a few
                     captions: no download), saved by transformers (tokenizer.json + config),
                     appending </s> like UMT5's
  text_encoder/      a random UMT5EncoderModel (config.json + model.safetensors), every
                     parameter perturbed, gated-GELU feed-forward, its own relative position
                     bias in every layer
  umt5.io.safetensors  input_ids, attention_mask (padded to 16 tokens, as the Wan pipeline
                     pads to its max length) and the encoder's last_hidden_state
  tokens.json        {"max_length": 16, "prompts": [...], "ids": [[...]], "mask": [[...]]}:
                     what the tokenizer gives a dozen prompts (unicode, empty, longer than the
                     limit) with padding="max_length", truncation

Deterministic for a given torch/transformers/tokenizers version.
"""

import argparse
import json
import os

import torch
import transformers
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers import processors, trainers
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

MAX_LENGTH = 16

CORPUS = [
    "a red circle moves right",
    "a blue square moves left on a grey background",
    "two yellow triangles bounce",
    "a green star spins slowly",
    "the camera pans across a snowy mountain at dawn",
    "ein roter Kreis bewegt sich nach rechts",
    "un carré bleu se déplace vers la gauche",
    "赤い円が右に動く",
    "a cat walks through tall grass, cinematic lighting",
    "waves crash on a rocky shore under a stormy sky",
] * 20

PROMPTS = [
    "a red circle moves right",
    "",
    "A BLUE square, moving left!",
    "ein roter Kreis bewegt sich nach rechts",
    "un carré bleu se déplace",
    "赤い円が右に動く",
    "emoji 🎬 and accents: naïve café",
    "   leading and   repeated   spaces",
    "a cat walks through tall grass, cinematic lighting, "
    "waves crash on a rocky shore under a stormy sky, a green star spins slowly",
    "unknown-ish zqxj wordz",
    "tabs\tand\nnewlines",
    "the camera pans across a snowy mountain at dawn",
]


def tokenizer(out_dir: str) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence(
        [normalizers.Nmt(), normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=200, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(os.path.join(out_dir, "tokenizer"))
    return fast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(20250315)
    torch.set_num_threads(1)
    fast = tokenizer(args.out)
    batch = fast(
        PROMPTS, padding="max_length", max_length=MAX_LENGTH, truncation=True,
        add_special_tokens=True, return_attention_mask=True, return_tensors="pt",
    )
    with open(os.path.join(args.out, "tokens.json"), "w") as f:
        json.dump(
            {
                "max_length": MAX_LENGTH,
                "prompts": PROMPTS,
                "ids": batch.input_ids.tolist(),
                "mask": batch.attention_mask.tolist(),
            },
            f,
            ensure_ascii=False,
            indent=0,
        )
    cfg = UMT5Config(
        vocab_size=len(fast), d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
        relative_attention_num_buckets=32, relative_attention_max_distance=20,
        feed_forward_proj="gated-gelu", dropout_rate=0.0,
    )
    model = UMT5EncoderModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(os.path.join(args.out, "text_encoder"))
    ids, mask = batch.input_ids[:4], batch.attention_mask[:4]
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    save_file(
        {"input_ids": ids.contiguous(), "attention_mask": mask.contiguous(),
         "last_hidden_state": hidden.contiguous()},
        os.path.join(args.out, "umt5.io.safetensors"),
        metadata={"transformers": transformers.__version__, "torch": torch.__version__},
    )
    print(f"umt5: vocab {len(fast)}, output {tuple(hidden.shape)}, "
          f"|out| max {hidden.abs().max().item():.4f}")


if __name__ == "__main__":
    main()
