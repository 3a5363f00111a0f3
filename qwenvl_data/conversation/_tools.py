"""Tool (function) calls in the text the Qwen-VL models read, in the Qwen2.5 text model's tool format.

The Qwen2/2.5-VL chat template has no tools block; LLaMA-Factory's and ms-swift's templates for them use the Qwen2.5
text model's (``QWEN_TOOL_PROMPT`` / hermes), which is also Qwen3-VL's official format:
- the tools, one JSON object per line, go into the system turn after the system prompt:
  ``{system}\\n\\n# Tools\\n\\nYou may call one or more functions ...<tools>\\n{tool}...\\n</tools>\\n\\nFor each
  function call, ...</tool_call>``; with no system prompt, the family's default one (Qwen2/2.5-VL), or the block
  alone (Qwen3-VL, which has none); the chat renderer writes it (``text._chat_template``) from the system
  message's ``{"type": "tools", "content": [schemas], "with_system": bool}`` part (``tools_part``);
  a bare function schema is wrapped as ``{"type": "function", "function": schema}`` (LLaMA-Factory's rule; the
  form transformers' ``get_json_schema`` gives);
- each call in an assistant turn is ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``, joined to
  the turn's text and to each other by ``\\n`` (the official Qwen3-VL template's rule); arguments given as JSON
  text are parsed and written again by ``json.dumps``, so they are always valid JSON in one spelling (Qwen3-VL's
  template pastes such text as it is: the ids agree when it is ``json.dumps``' own spelling, as OpenAI's is);
- tool results are user turns: ``<|im_start|>user\\n<tool_response>\\n{result}\\n</tool_response><|im_end|>``,
  consecutive results in one turn (rendered by ``text._chat_template``).
A call holds ``name`` and ``arguments`` only (any other key, e.g. an ``id`` or ``thought`` inside LLaMA-Factory's
``function_call`` text, is refused: the format has no place for it); OpenAI's wrapper may add its ``id`` and
``type`` (``"function"``), which the template does not render: results follow their calls in order.
JSON is written as ``json.dumps(..., ensure_ascii=False)`` writes it (transformers' ``tojson``).
"""

import json
from typing import Any

from qwenvl_data.errors import InvalidConversationError, UnreadFieldError

_TOOLS_HEADER = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_TOOLS_FOOTER = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}'
    "\n</tool_call>"
)


def _json(value: Any, what: str) -> Any:
    """``value``, parsed first when it is JSON text (LLaMA-Factory and OpenAI write tools and arguments as text)."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError as error:
        raise InvalidConversationError(f"{what} is not valid JSON ({error}): {value[:80]!r}") from error


def tools_part(tools: Any, with_system: Any) -> dict[str, Any]:
    """The system message's tools part: the schemas, each in OpenAI's form, and whether the system turn has a prompt
    of its own (possibly empty) before them.

    Raises:
        InvalidConversationError: ``tools`` is not a list of dicts (or JSON text of one), or ``with_system`` not a bool.
    """
    tools = _json(tools, "the tools field")
    if not isinstance(tools, list) or not all(isinstance(tool, dict) for tool in tools):
        raise InvalidConversationError(f"tools must be a list of function schemas (dicts), got {tools!r}"[:200])
    if not isinstance(with_system, bool):
        raise InvalidConversationError(f"a tools part's with_system must be true or false, got {with_system!r}")
    schemas = [tool if tool.get("type") == "function" else {"type": "function", "function": tool} for tool in tools]
    return {"type": "tools", "content": schemas, "with_system": with_system}


def tools_block(schemas: list[dict]) -> str:
    """The tools block of the system turn (``# Tools ... </tool_call>``), one schema per line."""
    body = "".join(f"\n{json.dumps(schema, ensure_ascii=False)}" for schema in schemas)
    return f"{_TOOLS_HEADER}{body}{_TOOLS_FOOTER}"


def tool_call_texts(calls: Any) -> list[str]:
    """``<tool_call>`` blocks of one or more calls, each ``{"name", "arguments"}`` or OpenAI's
    ``{"type": "function", "function": {"name", "arguments"}}``, as dicts or JSON text.

    Raises:
        InvalidConversationError: a call without a string ``name``, or arguments that are not a JSON object.
        UnreadFieldError: a call holding another key (above).
    """
    calls = _json(calls, "a tool call")
    texts = []
    for call in calls if isinstance(calls, list) else [calls]:
        call = _json(call, "a tool call")
        if isinstance(call, dict) and isinstance(call.get("function"), dict):
            _refuse_keys(call, ("id", "type", "function"), "an OpenAI tool call")
            call = call["function"]
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise InvalidConversationError(f"a tool call needs a 'name' and 'arguments', got {call!r}"[:200])
        _refuse_keys(call, ("name", "arguments"), f"tool call {call['name']!r}")
        arguments = _json(call.get("arguments", {}), f"the arguments of tool call {call['name']!r}")
        if not isinstance(arguments, dict):
            raise InvalidConversationError(f"the arguments of tool call {call['name']!r} must be a JSON object")
        payload = json.dumps({"name": call["name"], "arguments": arguments}, ensure_ascii=False)
        texts.append(f"<tool_call>\n{payload}\n</tool_call>")
    return texts


def calls_in(text: str) -> int:
    """The number of tool calls in an assistant's text (each call is one ``<tool_call>`` block, however given)."""
    return text.count("<tool_call>")


def _refuse_keys(call: dict, keys: tuple[str, ...], what: str) -> None:
    """Raise UnreadFieldError when ``call`` holds a key (with a value) outside ``keys``: it would be lost."""
    unread = sorted(key for key, value in call.items() if value is not None and key not in keys)
    if unread:
        raise UnreadFieldError(
            f"{what} holds key(s) {unread} that are not rendered (a call holds {', '.join(keys)})",
            tuple(f"tool_call.{key}" for key in unread),
        )
