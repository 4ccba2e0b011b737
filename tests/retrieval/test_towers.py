"""The history encoder computes exactly a transformer encoder layer's summary-token output."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="torch is needed for the retrieval stage")

from torch import nn  # noqa: E402

from marketrec.retrieval.towers import SummaryAttention  # noqa: E402


def test_summary_attention_equals_a_transformer_layer_at_position_zero() -> None:
    torch.manual_seed(0)
    block = SummaryAttention(16, 2)
    reference = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    reference.load_state_dict(block.state_dict(), strict=True)  # same parameter names
    reference.eval()
    tokens = torch.randn(4, 6, 16)
    padding = torch.zeros(4, 6, dtype=torch.bool)
    padding[:, 4:] = True
    padding[0, 1:] = True  # only the summary token
    expected = reference(tokens, src_key_padding_mask=padding)[:, 0]
    torch.testing.assert_close(block(tokens, padding), expected, atol=1e-5, rtol=1e-5)
