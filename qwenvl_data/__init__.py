"""qwenvl_data: Qwen2.5-VL data pipeline and fine-tuning stack for PyTorch and torchtune."""

__version__ = "0.1.0"
