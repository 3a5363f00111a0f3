"""Qwen2.5-VL model transform: a conversation with images/videos -> tokens, labels and pixel patches.

It composes the tokenizer (official chat template, one ``<|image_pad|>`` per image) with the image
transform (patches and grid per image), then gives each image ``t*h*w / merge_size**2`` pad tokens,
the number of merged patches the vision encoder hands the language model for it. The model family
(``family``: Qwen2.5-VL by default, Qwen2-VL, Qwen3-VL) sets the chat template, the preprocessing numbers and
the video rule; under Qwen3-VL's (``VideoRule.timestamps``) each temporal patch of a video is its own span
``<{t:.1f} seconds><|vision_start|>{h*w/merge_size**2 pads}<|vision_end|>``.
"""

from collections.abc import Mapping
from typing import Any

from torchtune.data import Message, PromptTemplateInterface
from torchtune.modules.transforms import Transform
from torchtune.modules.transforms.tokenizers import ModelTokenizer

from qwenvl_data.vision._concat import concat_rows
from qwenvl_data._constants import IGNORE_INDEX, IMAGE_PAD_ID, VIDEO_PAD_ID
from qwenvl_data.conversation._messages import generation_prompt, normalise_conversation
from qwenvl_data.text._truncation import fit_max_seq_len
from qwenvl_data.errors import PlaceholderMismatchError, SampleError, sample_name
from qwenvl_data.image import Qwen2_5_VLImageTransform
from qwenvl_data.tokenizer import Qwen2_5_VLTokenizer
from qwenvl_data.vision._media_options import held_options

# Per media kind: its pad token and the image transform's output keys (patches, grid, then extras).
_MEDIA = {
    "image": (IMAGE_PAD_ID, ("pixel_values", "image_grid_thw")),
    "video": (VIDEO_PAD_ID, ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")),
}


class Qwen2_5_VLTransform(ModelTokenizer, Transform):  # noqa: N801 (the model's name)
    """Turn ``{"messages": [...]}`` into a Qwen-VL family's ``tokens``, ``mask``, ``labels`` and pixel inputs
    (Qwen2.5-VL's by default; ``family`` picks another, the class name stays).

    Token ids equal transformers' processor output for the family (official chat template, expanded pads; for
    Qwen3-VL's videos, see the module docstring).
    Labels train the assistant's content and its closing ``<|im_end|>``; the rest is ``IGNORE_INDEX``
    (-100). Image/video pad tokens are never trained. The ``\n`` after ``<|im_end|>`` is not trained by
    default: it belongs to the template's separator, and generation stops at ``<|im_end|>``. Qwen's own
    fine-tuning code and LLaMA-Factory train it (their assistant turn ends in ``<|im_end|>\n``);
    ``train_newline_after_im_end=True`` does the same, so that losses compare with theirs.

    Args:
        path (str): ``vocab.json`` (or a ``tokenizer.json`` when ``merges_file`` is None).
        merges_file (str | None): ``merges.txt``.
        max_seq_len (int | None): longest sequence, counted after pad expansion. Default None.
        special_tokens_path (str | None): see ``Qwen2_5_VLTokenizer``.
        prompt_template (PromptTemplateInterface | str | dict | None): see ``Qwen2_5_VLTokenizer``.
        train_on_input (bool): train on every token (system, user, headers), not only the answers.
        train_newline_after_im_end (bool): also train the ``\n`` that follows each trained ``<|im_end|>``
            (Qwen's fine-tuning code's and LLaMA-Factory's labels). Default False.
        add_vision_id (bool): prefix media with ``Picture {n}: `` / ``Video {n}: `` as the template's option.
        truncation (str): "raise" (default): SampleTooLongError for samples over ``max_seq_len``
            (datasets with ``on_error="skip"`` drop them); "truncate_text": cut trailing text when no
            image/video span is touched, raise otherwise.
        family (str): the model family's ``model_type`` (``"qwen2_5_vl"``, ``"qwen2_vl"``, ``"qwen3_vl"``): its
            chat template and preprocessing (``ModelFamily``). Default ``"qwen2_5_vl"``.
        **image_kwargs: passed to ``Qwen2_5_VLImageTransform`` over the family's numbers (``min_pixels``,
            ``max_pixels``, and the video defaults ``video_max_pixels``, ``video_total_pixels``, ``video_fps``,
            ``video_max_frames``, ...): the defaults of every image / video part that does not set the option itself.

    Example:
        >>> from PIL import Image
        >>> from qwenvl_data.vocab import qwen_vocab_files
        >>> transform = Qwen2_5_VLTransform(*qwen_vocab_files())
        >>> out = transform({"messages": [
        ...     {"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (56, 56))},
        ...                                  {"type": "text", "text": "What is this?"}]},
        ...     {"role": "assistant", "content": "A black square."}]})
        >>> out["pixel_values"].shape, out["image_grid_thw"].tolist(), out["tokens"].count(151655)
        (torch.Size([16, 1176]), [[1, 4, 4]], 4)
    """

    def __init__(
        self,
        path: str,
        merges_file: str | None = None,
        max_seq_len: int | None = None,
        *,
        special_tokens_path: str | None = None,
        prompt_template: PromptTemplateInterface | str | Mapping | None = None,
        train_on_input: bool = False,
        train_newline_after_im_end: bool = False,
        add_vision_id: bool = False,
        truncation: str = "raise",
        family: str = "qwen2_5_vl",
        **image_kwargs: Any,
    ) -> None:
        # Imported here: the families module imports the models package, whose checkpoint reader imports this one.
        from qwenvl_data.models._families import model_family

        described = model_family(family, "Qwen2_5_VLTransform(family=...)")
        self.family = described.model_type
        self.tokenizer = Qwen2_5_VLTokenizer(
            path, merges_file, special_tokens_path, max_seq_len, prompt_template, truncation=truncation,
            chat_template=described.chat_template,
        )  # fmt: skip
        self.image_transform = Qwen2_5_VLImageTransform(**{**described.transform_args(), **image_kwargs})
        self.merge_factor = self.image_transform.merge_size**2
        self.train_on_input = train_on_input
        self.train_newline_after_im_end = train_newline_after_im_end
        self.add_vision_id = add_vision_id
        self.truncation = truncation
        self.special_tokens = self.tokenizer.special_tokens
        self.max_seq_len = max_seq_len
        self.pad_id = self.tokenizer.pad_id
        self.eos_id = self.tokenizer.eos_id
        self.stop_tokens = self.tokenizer.stop_tokens

    @property
    def vocab_size(self) -> int:
        """Number of token ids the tokenizer can produce."""
        return self.tokenizer.vocab_size

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = True) -> list[int]:
        """See ``Qwen2_5_VLTokenizer.encode``."""
        return self.tokenizer.encode(text, add_bos=add_bos, add_eos=add_eos)

    def decode(self, token_ids: list[int], skip_special_tokens: bool = False) -> str:
        """See ``Qwen2_5_VLTokenizer.decode``."""
        return self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def tokenize_messages(
        self, messages: list[Message | Mapping[str, Any]], *, add_generation_prompt: bool = False
    ) -> tuple[list[int], list[bool]]:
        """Tokens and mask of a conversation with images/videos expanded (``ModelTokenizer`` interface).

        ``add_generation_prompt`` is the template's flag: a final assistant message is rendered too.
        """
        out = self._encode({"messages": messages}, add_generation_prompt=add_generation_prompt)
        return out["tokens"], out["mask"]

    def __call__(self, sample: Mapping[str, Any], inference: bool = False) -> dict[str, Any]:
        """Tokenize and label the conversation and preprocess its media.

        Args:
            sample: ``{"messages": [...], optional "id", "images"/"videos", "tools"}``: torchtune
                ``Message``s or OpenAI/HF-style dicts (``{"role", "content": str | [parts]}``, parts
                ``{"type": "text", "text"}``, ``{"type": "image", "image", ...image options}``,
                ``{"type": "image_url", "image_url": {"url"}}``, ``{"type": "video", "video", ...video options}``;
                see ``qwenvl_data.conversation._messages.build_messages``); the lists fill payload-less parts
                and ``<image>``/``<video>`` placeholders in string content, in order; tool calls
                (``tool_calls``, role ``tool``) and ``tools`` render in the Qwen2.5 tool format
                (``qwenvl_data.conversation._tools``).
            inference: a prompt for generation: a final assistant message (a record's reference
                answer) is left out, with its images/videos, and the tokens end with the open
                ``<|im_start|>assistant\\n`` turn (the template's ``add_generation_prompt``).

        Returns:
            the sample without ``messages``/``images``/``videos``/``tools``, plus ``tokens`` list[int], ``mask``
            list[bool] (True = not trained), ``labels`` list[int] (-100 where not trained); with images
            ``pixel_values`` float [sum N, 1176] and ``image_grid_thw`` int64 [num_images, 3]; with videos
            ``pixel_values_videos`` float [sum N, 1176], ``video_grid_thw`` int64 [num_videos, 3] and
            ``second_per_grid_ts`` float32 [num_videos]. Text-only samples get no pixel keys.

        Raises:
            InvalidConversationError, PlaceholderMismatchError, ImageLoadError, SampleTooLongError:
                the message names the sample by its ``id``.
        """
        return self._encode(sample, add_generation_prompt=inference, drop_final_answer=inference)

    def _encode(
        self, sample: Mapping[str, Any], *, add_generation_prompt: bool, drop_final_answer: bool = False
    ) -> dict[str, Any]:
        name = sample_name(None, sample.get("id"))
        messages = normalise_conversation(sample, name)
        if drop_final_answer:
            messages = generation_prompt(messages, name)
        media = {kind: self._preprocess(messages, kind, name) for kind in _MEDIA}
        timestamped = self.image_transform.video_rule.timestamps
        chat = self.tokenizer.render(
            messages,
            add_vision_id=self.add_vision_id,
            add_generation_prompt=add_generation_prompt,
            train_on_input=self.train_on_input,
            train_newline_after_im_end=self.train_newline_after_im_end,
            video_timestamps=[output["video_timestamps"] for output in media["video"]] if timestamped else None,
        )
        tokens, mask = self.tokenizer.tokenize_rendered(chat)
        for kind, outputs in media.items():
            tokens, mask = self._expand_pads(tokens, mask, kind, outputs, name)
        tokens, mask = fit_max_seq_len(tokens, mask, self.max_seq_len, self.truncation, name)

        out = {k: v for k, v in sample.items() if k not in ("messages", "images", "videos", "tools")}
        out["tokens"], out["mask"] = tokens, mask
        out["labels"] = [IGNORE_INDEX if masked else token for token, masked in zip(tokens, mask)]
        out["family"] = self.family  # the collators take this family's video position rule unless given one
        for kind, outputs in media.items():
            if outputs:
                out.update({key: concat_rows([o[key] for o in outputs]) for key in _MEDIA[kind][1]})
        self._check_pad_counts(out, name)
        return out

    def _preprocess(self, messages: list[Message], kind: str, name: str) -> list[dict[str, Any]]:
        """Run the image transform on every ``kind`` part with the part's own options, in conversation order."""
        outputs = []
        for part in (p for m in messages for p in m.content if p["type"] == kind):
            try:
                outputs.append(self.image_transform({kind: part["content"], **held_options(part, kind)}))
            except SampleError as err:
                raise err.reworded(f"{name}: {err}") from err
        return outputs

    def _expand_pads(
        self, tokens: list[int], mask: list[bool], kind: str, outputs: list[dict[str, Any]], name: str
    ) -> tuple[list[int], list[bool]]:
        """Give the i-th ``kind`` pad token as many copies as the i-th image/video has merged patches (a video
        written per temporal patch has one pad per patch: each gets the patch's)."""
        pad_id, (_, grid_key, *_) = _MEDIA[kind]
        per_patch = kind == "video" and self.image_transform.video_rule.timestamps
        counts = []
        for output in outputs:
            t, h, w = (int(v) for v in output[grid_key][0])
            counts += [h * w // self.merge_factor] * t if per_patch else [t * h * w // self.merge_factor]
        found = tokens.count(pad_id)
        if found != len(counts):
            # Only pad-token strings typed into the text itself can cause this.
            raise PlaceholderMismatchError(
                f"{name}: {found} <|{kind}_pad|> tokens in the rendered text but {len(counts)} expected for "
                f"{len(outputs)} {kind}s; the text must not contain the literal string <|{kind}_pad|>"
            )
        return expand_pads(tokens, mask, pad_id, counts)

    def _check_pad_counts(self, out: dict[str, Any], name: str) -> None:
        """Guarantee pad tokens and patch rows agree, whatever happened above (truncation included)."""
        for pad_id, (pixel_key, *_) in _MEDIA.values():
            rows = out[pixel_key].shape[0] if pixel_key in out else 0
            pads = out["tokens"].count(pad_id)
            if pads * self.merge_factor != rows:
                raise PlaceholderMismatchError(
                    f"{name}: {pads} pad tokens (id {pad_id}) but {rows} patch rows in {pixel_key} "
                    f"(expected {self.merge_factor} rows per token)"
                )


def expand_pads(tokens: list[int], mask: list[bool], pad_id: int, counts: list[int]) -> tuple[list[int], list[bool]]:
    """Replace the i-th ``pad_id`` in ``tokens`` by ``counts[i]`` copies, masked (pads are never trained).

    Args:
        tokens: ids with one pad per image/video; mask: same length, True = not trained.
        pad_id: ``IMAGE_PAD_ID`` or ``VIDEO_PAD_ID``; counts: tokens per image/video, one per pad, in order.

    Returns:
        (tokens, mask) with every pad expanded.
    """
    positions = [i for i, token in enumerate(tokens) if token == pad_id]
    new_tokens, new_mask, previous = [], [], 0
    for position, count in zip(positions, counts, strict=True):
        new_tokens += tokens[previous:position] + [pad_id] * count
        new_mask += mask[previous:position] + [True] * count
        previous = position + 1
    return new_tokens + tokens[previous:], new_mask + mask[previous:]
