"""The one attention mask the scorer builds: new query tokens against a KV cache, rectangular, additive."""

import torch


def block_attention_mask(
    cache_limit: torch.Tensor, block_start: torch.Tensor, cache_len: int, dtype: torch.dtype
) -> torch.Tensor:
    """Additive mask [B, 1, Q, cache_len + Q] for Q new query tokens per row attending to a cache of cache_len.

    Query q of row b sees the cached tokens [0, cache_limit[b, q]) and the new tokens block_start[b, q] .. q
    (its own block, causally). A probe block for belief point p has cache_limit = p, so it sees exactly the
    context c = ids[:p] and itself, as if `ids[:p] + probe + answer` were one sequence. The size is
    B·Q·(cache_len + Q): linear in the context length, never cache_len².

    Visible entries are 0 and hidden ones the dtype's most negative value: sdpa adds the mask to the attention
    scores. (A boolean mask is not used; DESIGN.md records that one was silently wrong under `eager`.)

    cache_limit, block_start: [B, Q] int64, 0 <= cache_limit <= cache_len and 0 <= block_start <= q.
    """
    if cache_limit.shape != block_start.shape or cache_limit.dim() != 2:
        raise ValueError(
            f"cache_limit {tuple(cache_limit.shape)} and block_start {tuple(block_start.shape)} must both be [B, Q]"
        )
    n_queries = cache_limit.shape[1]
    device = cache_limit.device
    column = torch.arange(cache_len + n_queries, device=device)  # [K], K = cache_len + Q
    query = torch.arange(n_queries, device=device)  # [Q]
    new_column = column - cache_len  # index among the new tokens; negative for cached columns
    sees_cache = column[None, None, :] < cache_limit[:, :, None]  # [B, Q, K]
    sees_block = (new_column[None, None, :] >= block_start[:, :, None]) & (
        new_column[None, None, :] <= query[None, :, None]
    )  # [B, Q, K]
    hidden = ~(sees_cache | sees_block)
    mask = torch.zeros(hidden.shape, dtype=dtype, device=device)
    return mask.masked_fill_(hidden, torch.finfo(dtype).min)[:, None]  # [B, 1, Q, K]
