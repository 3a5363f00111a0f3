"""The official Qwen2.5-VL chat template, written in Python, with the character spans that are trained.

Rendering to one string and tokenizing it in one call is what the reference does, so token ids match it
by construction; the trained spans let us derive labels from token offsets afterwards.

The template (tests/support/data/qwen2_5_vl_chat_template.jinja) renders each message as
``<|im_start|>{role}\\n{content}<|im_end|>\\n``, prepends ``<|im_start|>system\\nYou are a helpful
assistant.<|im_end|>\\n`` when the first message is not a system message, renders an image part as
``<|vision_start|><|image_pad|><|vision_end|>`` (a video with ``<|video_pad|>``), optionally preceded by
``Picture {n}: `` / ``Video {n}: `` with ``add_vision_id``, and ends with ``<|im_start|>assistant\\n``
when a generation prompt is asked for. Tool results (role ``tool``), which the template does not know, are
rendered as the Qwen2.5 text model's template renders them (``qwenvl_data.conversation._tools``): consecutive
results in one user turn, each ``\\n<tool_response>\\n{result}\\n</tool_response>``, never trained.

Trained spans: an assistant message's content and its closing ``<|im_end|>``. The ``\\n`` after
``<|im_end|>`` belongs to the template's separator, not to the answer: the model stops at ``<|im_end|>``,
so nothing after it is a target by default. Qwen's own fine-tuning code and LLaMA-Factory train it
(``train_newline_after_im_end``), so their losses count one more token per turn.
"""

from dataclasses import dataclass, field

from torchtune.data import Message

from qwenvl_data._constants import DEFAULT_SYSTEM_PROMPT

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"


@dataclass
class RenderedChat:
    """A rendered conversation: ``text`` and the ``[start, end)`` character spans that are trained."""

    text: str = ""
    trained_spans: list[tuple[int, int]] = field(default_factory=list)

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
    add_vision_id: bool = False,
    add_generation_prompt: bool = False,
    train_on_input: bool = False,
    add_default_system: bool = True,
    train_newline_after_im_end: bool = False,
) -> RenderedChat:
    """Render normalised messages exactly as the official Qwen2.5-VL chat template does.

    Args:
        messages: torchtune Messages whose parts are ``{"type": "text"|"image"|"video", "content": ...}``.
        add_vision_id: prefix each image with ``Picture {n}: `` and each video with ``Video {n}: ``,
            counted over the whole conversation.
        add_generation_prompt: end with an open ``<|im_start|>assistant\\n`` turn (inference).
        train_on_input: mark every character as trained, not only the assistant's answers.
        train_newline_after_im_end: also mark the ``\\n`` after a trained ``<|im_end|>`` (Qwen's and
            LLaMA-Factory's labels).
        add_default_system: prepend the default system turn when the first message is not a system
            message, as the template does for a whole conversation; False renders the messages' turns only.

    Returns:
        RenderedChat with the text and its trained character spans.
    """
    chat = RenderedChat()
    counts = {"image": 0, "video": 0}
    if add_default_system and messages[0].role != "system":
        chat.append(f"{IM_START}system\n{DEFAULT_SYSTEM_PROMPT}{IM_END}\n", train_on_input)
    for index, message in enumerate(messages):
        if message.role == "tool":  # results of tool calls: one user turn for consecutive ones, never trained
            if index == 0 or messages[index - 1].role != "tool":
                chat.append(f"{IM_START}user", train_on_input)
            chat.append("\n<tool_response>\n", train_on_input)
            _append_content(chat, message, train_on_input, counts, add_vision_id)
            chat.append("\n</tool_response>", train_on_input)
            if index == len(messages) - 1 or messages[index + 1].role != "tool":
                chat.append(f"{IM_END}\n", train_on_input)
            continue
        answer = train_on_input or (message.role == "assistant" and not message.masked)
        chat.append(f"{IM_START}{message.role}\n", train_on_input)
        _append_content(chat, message, answer, counts, add_vision_id)
        chat.append(IM_END, answer)
        chat.append("\n", train_on_input or (answer and train_newline_after_im_end))
    if add_generation_prompt:
        chat.append(f"{IM_START}assistant\n", train_on_input)
    return chat


def _append_content(chat: RenderedChat, message: Message, trained: bool, counts: dict, add_vision_id: bool) -> None:
    """A message's parts: text as is, each image / video as its vision span (``counts`` numbers them)."""
    for part in message.content:
        if part["type"] == "text":
            chat.append(part["content"], trained)
            continue
        counts[part["type"]] += 1
        if add_vision_id:
            label = "Picture" if part["type"] == "image" else "Video"
            chat.append(f"{label} {counts[part['type']]}: ", trained)
        pad = IMAGE_PAD if part["type"] == "image" else VIDEO_PAD
        chat.append(f"{VISION_START}{pad}{VISION_END}", trained)
