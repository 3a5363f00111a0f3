"""Choose the next token from logits: greedy, or sampled with temperature, top-k and top-p (nucleus).

The filters run in transformers' order (temperature, then top-k, then top-p on what top-k kept), so
the same settings mean the same distribution as ``generate(do_sample=True, ...)`` there.
"""

import torch


def check_sampling_options(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Raise ValueError for settings that do not describe a distribution."""
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")


def sample_next_token(
    logits: torch.Tensor,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    rng: torch.Generator | None = None,
) -> torch.Tensor:
    """One token per row.

    Args:
        logits: float [B, vocab] for the next position.
        temperature: 0 picks the most likely token (greedy; ``top_k``/``top_p`` are then moot);
            above 0 samples from ``softmax(logits / temperature)``.
        top_k: sample only among the ``top_k`` most likely tokens.
        top_p: sample only among the most likely tokens whose probabilities (after ``top_k``) sum to
            ``top_p``: a token is kept when the tokens more likely than it sum to less than ``top_p``,
            so the most likely one always is.
        rng: generator on ``logits``' device; a fixed seed gives the same tokens on every run.

    Returns:
        int64 [B].

    Raises:
        ValueError: negative temperature, ``top_k`` < 1 or ``top_p`` outside (0, 1].

    Example:
        >>> logits = torch.tensor([[0.0, 3.0, 1.0]])
        >>> sample_next_token(logits).tolist()
        [1]
        >>> sample_next_token(logits, temperature=1.0, top_k=1, rng=torch.Generator().manual_seed(0)).tolist()
        [1]
    """
    check_sampling_options(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1)
    scores = logits.float() / temperature
    if top_k is not None and top_k < scores.shape[-1]:
        kth_best = scores.topk(top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth_best, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_scores, order = scores.sort(dim=-1, descending=True)
        probs = sorted_scores.softmax(dim=-1)
        more_likely_mass = probs.cumsum(dim=-1) - probs
        drop_sorted = more_likely_mass >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    # A draw from probs: the argmax of probs / E with E ~ Exp(1) i.i.d. (the exponential race, as
    # torchtune samples); on CPU it is several times faster than torch.multinomial over 152k ids.
    probs = scores.softmax(dim=-1)
    race = torch.empty_like(probs).exponential_(1, generator=rng)
    return (probs / race).argmax(dim=-1)
