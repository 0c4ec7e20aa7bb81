"""Attention over packed sequences that costs what the rows cost: each row attends only within itself, one
causal sdpa call per row, instead of one sdpa call over the whole sequence under a block-diagonal mask.

Registered with transformers as `hpcft_packed_sdpa` (its mask function is sdpa's). A batch whose position
ids restart inside a sequence (PackedCollator's packs) is cut at every restart; any other batch (the
unpacked validation rows, generation) goes to transformers' own sdpa with its mask. On GPUs the varlen
flash kernel does the same job; this is the CPU path, where a 512-token pack of ~4 rows under a
block-diagonal mask pays for 512 x 512 scores and the rows need about a quarter of that.
"""

from __future__ import annotations

NAME = "hpcft_packed_sdpa"


def row_spans(position_ids) -> list[list[tuple[int, int]]]:
    """Per batch row, the (start, end) of each packed row: a new one wherever the position id is 0."""
    spans = []
    for ids in position_ids.tolist():
        starts = [i for i, p in enumerate(ids) if p == 0] or [0]
        if starts[0] != 0:
            starts.insert(0, 0)
        spans.append(list(zip(starts, starts[1:] + [len(ids)])))
    return spans


def packed_sdpa_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                        is_causal=None, **kwargs):
    """query [b, heads, s, d], key/value [b, kv_heads, s, d] -> ([b, s, heads, d], None), as transformers' sdpa."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    if position_ids is None or position_ids.shape[-1] != query.shape[2] or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    spans = row_spans(position_ids.reshape(-1, position_ids.shape[-1]).expand(query.shape[0], -1))
    if all(len(s) == 1 for s in spans):  # nothing packed: sdpa as usual
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    gqa = key.shape[1] != query.shape[1]
    out = torch.empty_like(query)
    for b, row in enumerate(spans):
        for start, end in row:
            out[b, :, start:end] = torch.nn.functional.scaled_dot_product_attention(
                query[b:b + 1, :, start:end], key[b:b + 1, :, start:end], value[b:b + 1, :, start:end],
                dropout_p=dropout, is_causal=True, scale=scaling, enable_gqa=gqa)[0]
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Make `attn_implementation="hpcft_packed_sdpa"` known to transformers (idempotent); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, packed_sdpa_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    return NAME
