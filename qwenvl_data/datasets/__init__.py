"""Datasets: raw conversation files (LLaVA / ShareGPT / LLaMA-Factory / qwen-vl-finetune, OpenAI/HF/TRL chat,
the_cauldron, question/answer; JSON, JSON Lines, parquet, HF ``datasets``, WebDataset tars, all found and typed
by ``resolve_data_files``) or generated shapes VQA -> model-ready samples, lazily (map-style) or streamed
(sharded, resumable, also as ``torchdata.nodes``), each record through one ``RecordProcessor``. Record layouts:
see ``qwenvl_data.conversation._layouts``."""

from qwenvl_data.datasets._data_files import DataFile, resolve_data_files
from qwenvl_data.datasets._map_style import ChatDataset, multimodal_chat_dataset
from qwenvl_data.datasets._mixture import WeightedMixture
from qwenvl_data.datasets._nodes import DropSkipped, ShardRecordNode
from qwenvl_data.datasets._processing import RecordProcessor
from qwenvl_data.datasets._shards import Shard, list_shards
from qwenvl_data.datasets._sources import HFSource, JsonlSource
from qwenvl_data.datasets._streaming import StreamingChatDataset, streaming_chat_dataset, streaming_chat_nodes
from qwenvl_data.datasets._synthetic import (
    QUESTION_TYPES,
    SyntheticVQASource,
    answer_choices,
    synthetic_vqa_dataset,
)

__all__ = [
    "QUESTION_TYPES",
    "ChatDataset",
    "DataFile",
    "DropSkipped",
    "HFSource",
    "JsonlSource",
    "RecordProcessor",
    "Shard",
    "ShardRecordNode",
    "StreamingChatDataset",
    "SyntheticVQASource",
    "WeightedMixture",
    "answer_choices",
    "list_shards",
    "multimodal_chat_dataset",
    "resolve_data_files",
    "streaming_chat_dataset",
    "streaming_chat_nodes",
    "synthetic_vqa_dataset",
]
