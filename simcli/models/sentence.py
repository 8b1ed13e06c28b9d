"""The differentiable sentence model: backbone + pooling + the checkpoint's trained pooler, as one
`torch.nn.Module`.

Inference (`simcli.models.encoder.Encoder`) drives it under `torch.inference_mode` and hands numpy out;
training (e.g. a SimCSE or CoSENT loss on its output) can call it directly, since nothing in it detaches,
freezes or leaves torch. It is built by `load_encoder` and reached as `Encoder.model`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from simcli.models.native import NativeBackbone
from simcli.models.pooling import NEEDS_ALL_LAYERS, pool


class SentenceModel(nn.Module):
    """Token ids -> one vector per sentence for each requested pooling (float32, differentiable).

    Attributes:
        backbone: the transformer (simcli's native RoFormer/BERT, or transformers' RoFormerModel/BertModel).
        pooler: the checkpoint's trained pooler dense layer (RoFormer-Sim, SimBERT, BERT's NSP pooler), or None.
        pooling: the default pooling (resolved, never "auto").
        pooler_activation: "linear" (RoFormer-Sim, SimBERT) or "tanh" (BERT's NSP pooler).
        normalize: the checkpoint ends in a Normalize module (sentence-transformers): vectors are L2-normalised.
    """

    def __init__(
        self,
        backbone: nn.Module,
        pooler: nn.Linear | None,
        pooling: str,
        pooler_activation: str,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.pooler = pooler
        self.pooling = pooling
        self.pooler_activation = pooler_activation
        self.normalize = normalize

    def pool_all(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        poolings: Sequence[str],
        token_type_ids: torch.Tensor | None = None,
        lengths: Sequence[int] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Vectors for several poolings from one pass over the backbone: {pooling: (batch, dim) float32}.

        `lengths`: each row's real tokens (right padding), when known on the host; simcli's native backbone
        then spares the device syncs of finding the padding."""
        need_all = any(m in NEEDS_ALL_LAYERS for m in poolings)
        extra = (
            {"lengths": lengths} if lengths is not None and isinstance(self.backbone, NativeBackbone) else {}
        )
        result = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            # single sentence: segment 0 throughout
            token_type_ids=torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids,
            output_hidden_states=need_all,
            **extra,
        )
        hidden = result.hidden_states if need_all else (result.last_hidden_state,)
        pooled = {m: pool(hidden, attention_mask, m, self.pooler, self.pooler_activation) for m in poolings}
        if self.normalize:  # a sentence-transformers Normalize module ends the model
            pooled = {m: nn.functional.normalize(v, dim=-1) for m, v in pooled.items()}
        return pooled

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(batch, dim) float32 sentence vectors with the model's pooling (raw, not normalised)."""
        return self.pool_all(input_ids, attention_mask, [self.pooling], token_type_ids)[self.pooling]
