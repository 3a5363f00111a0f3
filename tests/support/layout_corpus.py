"""The layouts people bring, on disk, each with one bad record: LLaMA-Factory's alpaca as a JSON array file, tool
conversations in their three spellings as JSON Lines, LLaVA-Video records (a real H.264 clip, `<image>` written
for it) as a saved ``datasets`` directory."""

import json
from pathlib import Path

import datasets

from support.datasets_records import write_jsonl, write_photos
from support.media import write_video

ALPACA = [
    {"id": "a0", "instruction": "<image>Describe the picture.", "input": "In two words.", "output": "A photo.",
     "history": [["Hi", "Hello!"]], "system": "Be brief.", "images": ["images/a0.png"]},
    {"id": "a1", "instruction": "Name the colours.", "output": "Many.", "images": ["images/a1.png"]},
    {"id": "a2", "instruction": "Translate to English.", "input": "Bonjour", "output": "Hello"},
    {"id": "a_missing_image", "instruction": "What is it?", "output": "A photo.", "images": ["images/missing.png"]},
]  # fmt: skip

WEATHER = {"name": "get_weather", "description": "Current weather of a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}
TOOLS = [
    {"id": "t_llamafactory", "tools": json.dumps([WEATHER]),
     "conversations": [{"from": "human", "value": "Weather in Paris?"},
                       {"from": "function_call", "value": json.dumps(CALL)},
                       {"from": "observation", "value": '{"temperature": 21}'},
                       {"from": "gpt", "value": "It is 21 degrees."}]},
    {"id": "t_ms_swift", "tools": json.dumps([{"type": "function", "function": WEATHER}]),
     "messages": [{"role": "user", "content": "Weather in Paris?"}, {"role": "tool_call", "content": json.dumps(CALL)},
                  {"role": "tool_response", "content": '{"temperature": 21}'},
                  {"role": "assistant", "content": "It is 21 degrees."}]},
    {"id": "t_openai", "tools": [{"type": "function", "function": WEATHER}],
     "messages": [{"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
                  {"role": "assistant", "content": None, "tool_calls": [
                      {"id": "c1", "type": "function",
                       "function": {"name": "get_weather", "arguments": json.dumps(CALL["arguments"])}}]},
                  {"role": "tool", "tool_call_id": "c1", "content": '{"temperature": 21}'},
                  {"role": "assistant", "content": "It is 21 degrees."}]},
    {"id": "t_unread_field", "instruction": "never read",
     "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]},
]  # fmt: skip


def _llava_video(record_id: str, video: str) -> dict:
    return {"id": record_id, "video": video, "data_source": "academic",
            "conversations": [{"from": "human", "value": "<image>\nWhat happens in the clip?"},
                              {"from": "gpt", "value": "The colour changes."}]}  # fmt: skip


LLAVA_VIDEO = [_llava_video("v0", "clip.mp4"), _llava_video("v1", "clip.mp4"),
               _llava_video("v_missing_video", "missing.mp4")]  # fmt: skip


def write_layout_corpus(root: Path) -> dict[str, Path]:
    """``{"alpaca": alpaca.json, "tools": tools.jsonl, "llava_video": saved dataset directory}`` under ``root``;
    media paths are relative to each file's directory (the saved directory holds its clip)."""
    write_photos(root, ["images/a0.png", "images/a1.png"], size=(56, 56))
    alpaca = root / "alpaca.json"
    alpaca.write_text(json.dumps(ALPACA))
    tools = write_jsonl(root / "tools.jsonl", TOOLS)
    saved = root / "llava_video"
    datasets.Dataset.from_list(LLAVA_VIDEO).save_to_disk(str(saved))
    write_video(saved / "clip.mp4", 8, 56, 56, rate=4)  # 2 s at 4 fps: sampled at 2 fps, 4 frames
    return {"alpaca": alpaca, "tools": tools, "llava_video": saved}
