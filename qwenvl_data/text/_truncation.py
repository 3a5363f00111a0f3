"""What to do with a sample longer than ``max_seq_len``: never cut a vision span, never cut silently."""

from typing import Literal

from qwenvl_data._constants import IMAGE_PAD_ID, VIDEO_PAD_ID, VISION_END_ID, VISION_START_ID
from qwenvl_data.errors import SampleTooLongError

TruncationPolicy = Literal["raise", "truncate_text"]
TRUNCATION_POLICIES: tuple[str, ...] = ("raise", "truncate_text")
_VISION_IDS = frozenset((VISION_START_ID, VISION_END_ID, IMAGE_PAD_ID, VIDEO_PAD_ID))


def check_truncation_policy(policy: str) -> None:
    """Fail at construction, not at the first long sample, on a misspelt policy."""
    if policy not in TRUNCATION_POLICIES:
        raise ValueError(f"truncation must be one of {TRUNCATION_POLICIES}, got {policy!r}")


def fit_max_seq_len(
    tokens: list[int], mask: list[bool], max_seq_len: int | None, policy: str, name: str
) -> tuple[list[int], list[bool]]:
    """Return ``tokens``/``mask`` unchanged, or cut to ``max_seq_len`` when only trailing text is lost.

    Args:
        tokens: token ids with every image/video span already expanded.
        mask: same length, True = not trained.
        max_seq_len: the limit, or None for no limit.
        policy: "raise" (default everywhere): raise for any sample over the limit.
            "truncate_text": drop the trailing tokens when every vision span ends before the cut;
            otherwise raise as well, because cutting pads would desynchronise tokens and pixels.
        name: how the error names the sample.

    Raises:
        SampleTooLongError: naming the sample, its length and the limit.
    """
    if max_seq_len is None or len(tokens) <= max_seq_len:
        return tokens, mask
    if policy == "truncate_text":
        # Every span ends with its own vision token, so a tail free of them holds no part of any span.
        if _VISION_IDS.isdisjoint(tokens[max_seq_len:]):
            return tokens[:max_seq_len], mask[:max_seq_len]
        raise SampleTooLongError(
            f"{name}: {len(tokens)} tokens > max_seq_len={max_seq_len}, and cutting to the limit would cut "
            f"an image/video span"
        )
    raise SampleTooLongError(f"{name}: {len(tokens)} tokens > max_seq_len={max_seq_len}")

