"""The official Qwen-VL chat templates, written in Python, with the character spans that are trained.

Rendering to one string and tokenizing it in one call is what the reference does, so token ids match it
by construction; the trained spans let us derive labels from token offsets afterwards.

The templates (``qwenvl_data/text/*.jinja``, verbatim) render each message as
``<|im_start|>{role}\\n{content}<|im_end|>\\n``, an image part as ``<|vision_start|><|image_pad|><|vision_end|>``
(a video with ``<|video_pad|>``), optionally preceded by ``Picture {n}: `` / ``Video {n}: `` with ``add_vision_id``,
and end with ``<|im_start|>assistant\\n`` when a generation prompt is asked for. Where they differ, a
``ChatTemplate`` says so (one per family, in ``models._families``):
- Qwen2-VL / Qwen2.5-VL prepend ``<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n`` when the first
  message is not a system message; Qwen3-VL's has no default system prompt.
- Qwen3-VL's renders a system message only when it comes first, and only the text of system and assistant
  messages; a conversation with a later system message, or images/videos in a system or assistant message, is
  refused (``InvalidConversationError``) rather than rendered without them.
- Tools: the system turn holds the system prompt (the default one when there is none and the template has one),
  ``\\n\\n`` and the tools block (Qwen3-VL's template, which is also the Qwen2.5 text model's; the Qwen2-VL /
  Qwen2.5-VL templates have none, so theirs is LLaMA-Factory's and ms-swift's choice, see ``conversation._tools``);
  with no system prompt at all, the tools block alone. Tool results (role ``tool``) are consecutive results in one
  user turn, each ``\\n<tool_response>\\n{result}\\n</tool_response>``, never trained.

Trained spans: an assistant message's content (its tool calls included) and its closing ``<|im_end|>``. The ``\\n``
after ``<|im_end|>`` belongs to the template's separator, not to the answer: the model stops at ``<|im_end|>``,
so nothing after it is a target by default. Qwen's own fine-tuning code and LLaMA-Factory train it
(``train_newline_after_im_end``), so their losses count one more token per turn.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.resources import files

from torchtune.data import Message

from qwenvl_data._constants import DEFAULT_SYSTEM_PROMPT
from qwenvl_data.conversation._tools import tools_block
from qwenvl_data.errors import InvalidConversationError

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
_MEDIA_KINDS = ("image", "video")


@dataclass(frozen=True)
class ChatTemplate:
    """What one family's official chat template does where the templates differ (module docstring).

    Attributes:
        file: the official template, verbatim, in ``qwenvl_data/text`` (written into HF directories).
        default_system_prompt: the system turn added when the first message is not a system message; None: none.
        system_first_only: only a leading system message is rendered, and only its text; a conversation the
            template would render without something it holds is refused instead.
        media_in_answers: images/videos in assistant messages are rendered (False: refused, as they would be dropped).
        added_tokens: tokens the family's released tokenizer adds after Qwen2.5-VL's 22, in id order from 151665
            (strings its template writes, one id each there; the packaged tokenizer must have them too).
    """

    file: str = "chat_template.jinja"
    default_system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    system_first_only: bool = False
    media_in_answers: bool = True
    added_tokens: tuple[str, ...] = ()

    def source(self) -> str:
        """The official template's text, verbatim."""
        return files("qwenvl_data.text").joinpath(self.file).read_text(encoding="utf-8")

    def check(self, messages: list[Message]) -> None:
        """Refuse what the template would leave out of the text.

        Raises:
            InvalidConversationError: naming the message and what would be dropped.
        """
        for index, message in enumerate(messages):
            has_media = any(part["type"] in _MEDIA_KINDS for part in message.content)
            if self.system_first_only and message.role == "system" and (index > 0 or has_media):
                what = "images or videos in its system message" if index == 0 else "a system message after the first"
                raise InvalidConversationError(
                    f"message {index}: the conversation has {what}, which this model's chat template ({self.file}) "
                    "does not render"
                )
            if not self.media_in_answers and message.role == "assistant" and has_media:
                raise InvalidConversationError(
                    f"message {index}: images or videos in an assistant message, which this model's chat template "
                    f"({self.file}) does not render (put them in a user message)"
                )


@dataclass
class RenderedChat:
    """A rendered conversation: ``text`` and the ``[start, end)`` character spans that are trained."""

    text: str = ""
    trained_spans: list[tuple[int, int]] = field(default_factory=list)
    video_timestamps: Sequence[Sequence[float]] | None = None  # how videos are written (``render_chat``)

    def append(self, piece: str, trained: bool = False) -> None:
        if trained and piece:
            start = len(self.text)
            # Merge touching spans so a message's content and its <|im_end|> form one span.
            if self.trained_spans and self.trained_spans[-1][1] == start:
                self.trained_spans[-1] = (self.trained_spans[-1][0], start + len(piece))
            else:
                self.trained_spans.append((start, start + len(piece)))
        self.text += piece


def render_chat(
    messages: list[Message],
    *,
    template: ChatTemplate = ChatTemplate(),
    add_vision_id: bool = False,
    add_generation_prompt: bool = False,
    train_on_input: bool = False,
    add_default_system: bool = True,
    train_newline_after_im_end: bool = False,
    video_timestamps: Sequence[Sequence[float]] | None = None,
) -> RenderedChat:
    """Render normalised messages exactly as the family's official chat template does.

    Args:
        messages: torchtune Messages whose parts are ``{"type": "text"|"image"|"video", "content": ...}`` (and a
            system message's ``{"type": "tools", ...}`` part, see ``conversation._tools``).
        template: the family's ``ChatTemplate``; default Qwen2.5-VL's.
        add_vision_id: prefix each image with ``Picture {n}: `` and each video with ``Video {n}: ``,
            counted over the whole conversation.
        add_generation_prompt: end with an open ``<|im_start|>assistant\\n`` turn (inference).
        train_on_input: mark every character as trained, not only the assistant's answers.
        train_newline_after_im_end: also mark the ``\\n`` after a trained ``<|im_end|>`` (Qwen's and
            LLaMA-Factory's labels).
        add_default_system: prepend the template's default system turn (if it has one) when the first message is
            not a system message, as the template does for a whole conversation; False renders the messages' turns only.
        video_timestamps: per video, in conversation order, the seconds of each temporal patch: the video is then
            written ``<{t:.1f} seconds><|vision_start|><|video_pad|><|vision_end|>`` per patch (Qwen3-VL's processor
            in place of the template's one span; each pad is then one patch's tokens). None: one span per video.

    Returns:
        RenderedChat with the text and its trained character spans.

    Raises:
        InvalidConversationError: the template would not render part of the conversation (``ChatTemplate.check``).
    """
    template.check(messages)
    chat = RenderedChat(video_timestamps=video_timestamps)
    counts = {"image": 0, "video": 0}
    if add_default_system and messages[0].role != "system" and template.default_system_prompt is not None:
        chat.append(f"{IM_START}system\n{template.default_system_prompt}{IM_END}\n", train_on_input)
    for index, message in enumerate(messages):
        if message.role == "tool":  # results of tool calls: one user turn for consecutive ones, never trained
            if index == 0 or messages[index - 1].role != "tool":
                chat.append(f"{IM_START}user", train_on_input)
            chat.append("\n<tool_response>\n", train_on_input)
            _append_content(chat, message, train_on_input, counts, add_vision_id, template)
            chat.append("\n</tool_response>", train_on_input)
            if index == len(messages) - 1 or messages[index + 1].role != "tool":
                chat.append(f"{IM_END}\n", train_on_input)
            continue
        answer = train_on_input or (message.role == "assistant" and not message.masked)
        chat.append(f"{IM_START}{message.role}\n", train_on_input)
        _append_content(chat, message, answer, counts, add_vision_id, template)
        chat.append(IM_END, answer)
        chat.append("\n", train_on_input or (answer and train_newline_after_im_end))
    if add_generation_prompt:
        chat.append(f"{IM_START}assistant\n", train_on_input)
    return chat


def _append_content(
    chat: RenderedChat, message: Message, trained: bool, counts: dict, add_vision_id: bool, template: ChatTemplate
) -> None:
    """A message's parts: text as is, the tools block, each image / video as its vision span(s) (``counts`` numbers
    them)."""
    for part in message.content:
        if part["type"] == "text":
            chat.append(part["content"], trained)
            continue
        if part["type"] == "tools":
            # The system prompt (the message's own text, or the template's default) and the block, "\n\n" apart.
            prompt = "" if part["with_system"] else template.default_system_prompt
            block = tools_block(part["content"])
            chat.append(block if prompt is None else f"{prompt}\n\n{block}", trained)
            continue
        counts[part["type"]] += 1
        if add_vision_id:
            label = "Picture" if part["type"] == "image" else "Video"
            chat.append(f"{label} {counts[part['type']]}: ", trained)
        if part["type"] == "video" and chat.video_timestamps is not None:
            for seconds in chat.video_timestamps[counts["video"] - 1]:
                chat.append(f"<{seconds:.1f} seconds>{VISION_START}{VIDEO_PAD}{VISION_END}", trained)
            continue
        pad = IMAGE_PAD if part["type"] == "image" else VIDEO_PAD
        chat.append(f"{VISION_START}{pad}{VISION_END}", trained)
