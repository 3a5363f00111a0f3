"""Text processing speed: qwenvl_data's tokenizer + chat template vs transformers', on the same conversations.

Both sides read the ``--family``'s released processor files (default Qwen2.5-VL; Qwen2-VL ships the same chat
template bytes and preprocessor numbers): ours is ``checkpoint_transform`` of that directory, the reference
transformers' tokenizer on the same vocabulary with the directory's chat template and image processor.

Three measurements, each printed as reference time / our time (> 1 means we are faster):
  text-only     ``Qwen2_5_VLTokenizer.tokenize_messages`` vs ``apply_chat_template(tokenize=True)``.
  image chats   text side only: render + tokenize + pad expansion with known grids, vs jinja render +
                string pad expansion + encode (what the transformers processor does for the text).
  full          ``Qwen2_5_VLTransform`` vs transformers tokenizer + template + Qwen2VLImageProcessorPil
                (image preprocessing dominates; bench/image.py measures it on its own).
Token ids are checked equal before timing.

Run: python bench/tokenizer.py [--family qwen2_vl] [--conversations 300] [--repeats 3]
"""

import argparse
import json
import random
import sys
import time
from pathlib import Path

from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from qwenvl_data._constants import IMAGE_PAD_ID
from qwenvl_data.conversation._messages import normalise_conversation
from qwenvl_data.training import checkpoint_transform
from qwenvl_data.transform import expand_pads
from qwenvl_data.vocab import qwen_vocab_files

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _family import add_family_option, family_under_test, processor_checkpoint  # noqa: E402
from support.media import photo  # noqa: E402
from support.text_reference import hf_tokenizer, image_tokens  # noqa: E402

SNIPPETS = [
    "Describe the image in detail.",
    "日本語で説明してください。中文也可以。",
    "def area(r):\n    return 3.14159 * r ** 2\n\n",
    "Emoji check 😀👍🏽👨‍👩‍👧 and numbers 1,234,567.89",
    "   lots   of   spaces\n\n\n\tand tabs\t\t",
    "The quick brown fox jumps over the lazy dog. " * 8,
]


def conversations(n: int, images: list, rng: random.Random) -> list[list[dict]]:
    """Multi-turn chats; with ``images``, each user turn holds 0-2 of them between text."""
    chats = []
    for _ in range(n):
        chat = [{"role": "system", "content": "You are a careful assistant."}] if rng.random() < 0.5 else []
        for _ in range(rng.randint(1, 3)):
            parts = [{"type": "text", "text": rng.choice(SNIPPETS)}]
            for _ in range(rng.randint(0, 2) if images else 0):
                parts.insert(rng.randint(0, len(parts)), {"type": "image", "image": rng.choice(images)})
            chat += [{"role": "user", "content": parts}, {"role": "assistant", "content": rng.choice(SNIPPETS)}]
        chats.append(chat)
    return chats


def best_time(fn, chats, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for chat in chats:
            fn(chat)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    add_family_option(parser)
    args = parser.parse_args()
    rng = random.Random(0)
    with processor_checkpoint(family_under_test(args.family)) as root:
        ours = checkpoint_transform(root)
        template = json.loads((root / "chat_template.json").read_text())["chat_template"]
        processor = Qwen2VLImageProcessorPil.from_pretrained(root)
    ref = hf_tokenizer(*qwen_vocab_files())
    images = [photo(w, h, seed) for seed, (w, h) in enumerate([(224, 224), (448, 336), (160, 640), (96, 96)])]
    tokens_per_image = {id(img): image_tokens(img, processor) for img in images}

    def image_list(chat):
        parts = [p for m in chat if isinstance(m["content"], list) for p in m["content"]]
        return [p["image"] for p in parts if p["type"] == "image"]

    def ref_text_ids(chat):
        text = ref.apply_chat_template(chat, chat_template=template, tokenize=False)
        pieces = text.split("<|image_pad|>")
        counts = [tokens_per_image[id(img)] for img in image_list(chat)]
        text = pieces[0] + "".join("<|image_pad|>" * n + piece for n, piece in zip(counts, pieces[1:]))
        return ref.encode(text, add_special_tokens=False)

    def our_text_ids(chat):
        rendered = ours.tokenizer.render(normalise_conversation({"messages": chat}, "bench conversation"))
        tokens, mask = ours.tokenizer.tokenize_rendered(rendered)
        return expand_pads(tokens, mask, IMAGE_PAD_ID, [tokens_per_image[id(img)] for img in image_list(chat)])[0]

    def ref_full(chat):
        imgs = image_list(chat)
        pixels = processor(images=imgs, return_tensors="pt") if imgs else None
        return ref_text_ids(chat), pixels

    text_chats = conversations(args.conversations, [], rng)
    image_chats = conversations(args.conversations, images, rng)
    full_chats = image_chats[: max(1, args.conversations // 10)]
    for chat in text_chats + image_chats[:50]:
        assert our_text_ids(chat) == ref_text_ids(chat), "token ids differ from transformers"
    assert all(ours.tokenizer.tokenize_messages(c)[0] == ref_text_ids(c) for c in text_chats[:50])

    cases = [
        ("text-only chats (tokenize_messages)", lambda c: ours.tokenizer.tokenize_messages(c), ref_text_ids,
         text_chats),
        ("image chats, text side only", our_text_ids, ref_text_ids, image_chats),
        ("image chats, full transform incl. images", lambda c: ours({"messages": c}), ref_full, full_chats),
    ]
    print(f"{'case':45s} {'ours ms/conv':>13s} {'transformers':>13s} {'ratio':>7s}")
    for name, ours_fn, ref_fn, chats in cases:
        t_ours = best_time(ours_fn, chats, args.repeats) / len(chats) * 1e3
        t_ref = best_time(ref_fn, chats, args.repeats) / len(chats) * 1e3
        print(f"{name:45s} {t_ours:13.3f} {t_ref:13.3f} {t_ref / t_ours:6.2f}x")
    print(f"ratio = transformers time / our time (higher is better for us); same conversations, same ids; "
          f"{args.family}'s processor files")


if __name__ == "__main__":
    main()
