"""The two towers: item and user encoders whose dot product scores an item for a user.

Item tower: hashed id, category (path and top level), brand, tags, price bucket, time since
listing, how much it is trending (events in the last day and week, and its share of all
events in the last day, week and month, as buckets and as a number; counted point-in-time)
and the content vector of the item's text → an L2-normalised vector and a bias. The id part is
masked for items without training interactions (and randomly during training), so a new
item is placed by its content alone.

User tower: hashed id (masked for unknown users and randomly in training), region,
profile attributes, context (device, hour, weekday), the recent history — item vectors plus
event type and age, read by a small transformer block through a learned summary token —, the
long-term taste — a mean of learned embeddings of every earlier item (the "bag of history" of
YouTube's candidate model, capped) — and the mean of the recent search queries' text vectors.
A new event changes the history and so the user vector, without retraining.

Shapes: B = batch, N = history length, D = output dimension.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import sparse
from torch import Tensor, nn
from torch.nn import functional as F

from marketrec.retrieval.inputs import (
    AGE_BUCKETS,
    EVENT_CODES,
    PRICE_BUCKETS,
    SHARE_BUCKETS,
    SHARE_WINDOWS_DAYS,
    TREND_BUCKETS,
)


@dataclass(frozen=True)
class TowerSizes:
    """Vocabulary sizes (each including code 0) the embedding tables need."""

    item_ids: int
    categories: int
    top_categories: int
    brands: int
    tags: int
    text_dim: int
    user_ids: int
    regions: int
    attributes: tuple[int, ...]
    numeric: int
    devices: int

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict) -> TowerSizes:
        return cls(**{**d, "attributes": tuple(d["attributes"])})


def dropout(layer: nn.Module, hidden: Tensor, mask: Tensor | None) -> Tensor:
    """`layer` (an `nn.Dropout`) applied to `hidden`, or in training, when the batch brought
    one, the given `mask` (kept units scaled by 1 / (1 - p), dropped ones 0; see
    `dropout_mask`). Training batches draw their masks with their other inputs on the
    batch-building thread: torch's element-wise Bernoulli draws were 7 % of a two-tower
    step on the training thread."""
    if mask is None or not layer.training:
        return layer(hidden)
    return hidden * mask


def dropout_mask(rng: np.random.Generator, shape: tuple[int, ...], p: float) -> Tensor:
    """A dropout mask for `dropout`: each unit kept with probability 1 - p, scaled by
    1 / (1 - p) so the expected activation is unchanged."""
    if p <= 0.0:
        return torch.ones(shape)
    keep = rng.random(shape, dtype=np.float32) >= p
    return torch.from_numpy(keep.astype(np.float32) * np.float32(1.0 / (1.0 - p)))


def _mlp(inputs: int, hidden: int, out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inputs, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, out)
    )


class ItemTower(nn.Module):
    def __init__(
        self, sizes: TowerSizes, dim: int, dropout: float, sparse_ids: bool, initialise: bool = True
    ) -> None:
        super().__init__()
        self.id = nn.Embedding(
            sizes.item_ids,
            dim,
            sparse=sparse_ids,
            _weight=_uninitialised(sizes.item_ids, dim, initialise),
        )
        self.category = nn.Embedding(sizes.categories, dim)
        self.top_category = nn.Embedding(sizes.top_categories, dim)
        self.brand = nn.Embedding(sizes.brands, dim)
        self.tags = nn.EmbeddingBag(sizes.tags, dim, mode="mean", padding_idx=0)
        self.price = nn.Embedding(PRICE_BUCKETS + 1, dim)
        self.age = nn.Embedding(AGE_BUCKETS, dim)
        self.text = nn.Linear(sizes.text_dim, dim)
        self.trend_day = nn.Embedding(TREND_BUCKETS, dim)
        self.trend_week = nn.Embedding(TREND_BUCKETS, dim)
        self.trend_share = nn.ModuleList(
            nn.Embedding(SHARE_BUCKETS, dim) for _ in SHARE_WINDOWS_DAYS
        )
        self.trend_level = nn.Linear(len(SHARE_WINDOWS_DAYS), dim)
        self.mlp = _mlp(12 * dim, 2 * dim, dim, dropout)
        self.bias = nn.Linear(12 * dim, 1)
        #: added to the bias of items never trained on when they are served (see
        #: `calibrate_untrained` in training.py): their content-only scores sit on another
        #: scale than trained items' id-and-content ones
        self.register_buffer("untrained_shift", torch.zeros(()))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        # model folders saved before the calibration existed: no shift
        state_dict.setdefault(prefix + "untrained_shift", torch.zeros(()))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, f: dict[str, Tensor], id_mask: Tensor) -> Tensor:
        """f: item feature tensors of shape (B,) or (B, tags)/(B, text_dim) → (B, D + 1):
        the normalised vector, then the item's bias (see `item_scores`)."""
        return self.forward_masks(f, [id_mask])[0]

    def forward_masks(
        self,
        f: dict[str, Tensor],
        id_masks: Sequence[Tensor],
        dropout_masks: Sequence[Tensor] | None = None,
    ) -> list[Tensor]:
        """`forward` for several id masks over the same items, reading the features once.

        The id and the trend parts are the ones a mask switches off (like the id, the trend
        is unknown for items never trained on: cold items); everything else is shared. Both
        first layers are linear, so each mask's pre-activation is the shared part's plus the
        mask times the switchable part's: a training batch gets the catalogue with random id
        dropout (the softmax candidates) and with its trained ids (the history tokens) for
        the price of one pass. `dropout_masks`: one per id mask, see `dropout`.

        The first layers read the concatenation of every part's embedding, computed block
        by block: a part's embedding times its block of columns, summed (see `_projected`).
        """
        dim = self.id.embedding_dim
        rows = len(f["id_bucket"])
        first = self.mlp[0]
        weight = torch.cat([first.weight, self.bias.weight])  # (2D + 1, 12 D)
        # column block j of the concatenation [id, category, top category, brand, tags,
        # price, age, text, trend day, trend week, trend shares, trend level]
        block = [weight[:, j * dim : (j + 1) * dim] for j in range(12)]
        switch = F.linear(self.id(f["id_bucket"]), block[0])
        switch = switch + _projected(self.trend_day, f["trend_day"], block[8], rows)
        switch = switch + _projected(self.trend_week, f["trend_week"], block[9], rows)
        for j, table in enumerate(self.trend_share):
            switch = switch + _projected(table, f["trend_share"][:, j], block[10], rows)
        level = self.trend_level
        switch = switch + F.linear(
            f["trend_level"], block[11] @ level.weight, block[11] @ level.bias
        )
        base = F.linear(self.text(f["text"]), block[7], torch.cat([first.bias, self.bias.bias]))
        for j, name in enumerate(("category", "top_category", "brand", "tags", "price", "age")):
            base = base + _projected(getattr(self, name), f[name], block[j + 1], rows)
        out = []
        for j, mask in enumerate(id_masks):
            pre = base + switch * mask[:, None]
            hidden, item_bias = pre[:, :-1], pre[:, -1:]
            drop = None if dropout_masks is None else dropout_masks[j]
            vector = self.mlp[3](dropout(self.mlp[2], self.mlp[1](hidden), drop))
            out.append(torch.cat([F.normalize(vector, dim=-1), item_bias], dim=-1))
        return out


def _projected(
    table: nn.Embedding | nn.EmbeddingBag, codes: Tensor, columns: Tensor, rows: int
) -> Tensor:
    """`table(codes)` through a linear layer's block of `columns` (out, D): (rows, out).

    A table with no more entries than there are rows to embed is projected first and then
    looked up (the same numbers): a catalogue pass of ml-100k's training step then gathers
    the projected rows of its small tables (categories, prices, ages, trend buckets)
    instead of multiplying every item's (items × 7 D) concatenation, forward and twice
    backward. Large tables (brands of a big catalogue) are looked up first."""
    if table.num_embeddings > rows:
        return F.linear(table(codes), columns)
    projected = table.weight @ columns.T
    if isinstance(table, nn.EmbeddingBag):
        return F.embedding_bag(codes, projected, mode=table.mode, padding_idx=table.padding_idx)
    return F.embedding(codes, projected)


def item_scores(users: Tensor, items: Tensor, temperature: float) -> Tensor:
    """(B, C) scores: cosine / temperature plus the item's bias.

    The bias carries what does not depend on the user (how much an item is trending), which a
    cosine alone cannot express strongly for users the towers know little about. It stays
    ANN-friendly: [u, 1] · [v / temperature, bias] is the same score.
    """
    return users @ items[:, :-1].T / temperature + items[:, -1][None, :]


class SummaryAttention(nn.Module):
    """One post-norm transformer encoder layer, computed for its first (summary) token only.

    The user tower reads only the summary token's output, so the query, output projection and
    feed-forward of the other tokens were wasted work: this block gives exactly what
    `nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0)` gives at position 0 (same
    parameter names, so either loads the other's weights) at about a quarter of the cost; the
    history encoder was most of a training step.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.linear1 = nn.Linear(dim, 2 * dim)
        self.linear2 = nn.Linear(2 * dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, tokens: Tensor, padding: Tensor, first: Tensor | None = None) -> Tensor:
        """tokens: (B, T, D), summary first; padding: (B, T) true where padded (never the
        summary) → (B, D); `first`: the summary tokens (B, D) when the caller has them apart.
        The same as `read(first, tokens[:, 1:], padding[:, 1:])`."""
        if first is None:
            first = tokens[:, 0]
        return self.read(first, tokens[:, 1:], padding[:, 1:])

    def read(self, first: Tensor, history: Tensor, padding: Tensor) -> Tensor:
        """The summary token `first` (B, D) reading itself and the `history` tokens
        (B, T, D; `padding` (B, T) true where padded) → (B, D).

        The summary is never concatenated to the history: its own logit and its share of
        the read are computed apart (a (B, 1 + T, D) copy and the backward's slice of it were
        the largest memory traffic of the user tower in training).

        With one query per row, the key and value projections can be moved off the tokens:
        a logit is token · (W_k,h^T q_h) plus a term constant over the tokens (the key bias,
        which the softmax cancels), and the read is W_v,h (Σ_t w_t token_t) + b_v,h (the
        weights sum to 1). So the tokens meet (D, heads) matrices instead of two D × D
        products over every token (B × T × D² multiply-adds each, plus per-head permuted
        copies): the history encoder was most of a training step. Exactly the same function
        and gradients as projecting every token."""
        attn = self.self_attn
        batch, dim = first.shape
        heads = attn.num_heads
        width = dim // heads
        weight, bias = attn.in_proj_weight, attn.in_proj_bias
        query = F.linear(first, weight[:dim], bias[:dim]).view(batch, heads, width)
        key_weight = weight[dim : 2 * dim].view(heads, width, dim)
        # (B, heads, D): each head's query pulled back through its key projection
        # (einsum's products as batched ones over the heads: einsum parsed its equation on
        # every call, a measurable part of a one-user request)
        probes = torch.bmm(query.transpose(0, 1), key_weight).transpose(0, 1) / math.sqrt(width)
        own = (probes * first[:, None, :]).sum(dim=-1, keepdim=True)  # (B, heads, 1)
        logits = torch.bmm(probes, history.transpose(1, 2))  # (B, heads, T)
        logits = logits.masked_fill(padding[:, None, :], float("-inf"))
        weights = torch.softmax(torch.cat([own, logits], dim=-1), dim=-1)
        # (B, heads, D): each head's mix of the summary and the history tokens
        pooled = weights[:, :, :1] * first[:, None, :] + torch.bmm(weights[:, :, 1:], history)
        value_weight = weight[2 * dim :].view(heads, width, dim)
        read = torch.bmm(pooled.transpose(0, 1), value_weight.transpose(1, 2)).transpose(0, 1)
        read = read + bias[2 * dim :].view(heads, width)
        x = self.norm1(first + attn.out_proj(read.reshape(batch, dim)))
        return self.norm2(x + self.linear2(F.relu(self.linear1(x))))


class UserTower(nn.Module):
    def __init__(
        self,
        sizes: TowerSizes,
        dim: int,
        dropout: float,
        sparse_ids: bool,
        heads: int = 2,
        initialise: bool = True,
    ) -> None:
        super().__init__()
        self.id = nn.Embedding(
            sizes.user_ids,
            dim,
            sparse=sparse_ids,
            _weight=_uninitialised(sizes.user_ids, dim, initialise),
        )
        self.region = nn.Embedding(sizes.regions, dim)
        self.attributes = nn.ModuleList(nn.Embedding(n, dim) for n in sizes.attributes)
        self.numeric = nn.Linear(sizes.numeric, dim) if sizes.numeric else None
        self.device = nn.Embedding(sizes.devices, dim)
        self.hour = nn.Embedding(25, dim)
        self.weekday = nn.Embedding(8, dim)
        self.event = nn.Embedding(len(EVENT_CODES) + 1, dim)
        self.event_age = nn.Embedding(AGE_BUCKETS, dim)
        self.summary = nn.Parameter(torch.zeros(1, 1, dim))
        self.history = SummaryAttention(dim, heads)
        self.queries = nn.Linear(sizes.text_dim, dim)
        self.long_term = nn.EmbeddingBag(
            sizes.item_ids,
            dim,
            mode="mean",
            padding_idx=0,
            sparse=sparse_ids,
            _weight=_uninitialised(sizes.item_ids, dim, initialise),
        )
        self.mlp = _mlp(9 * dim, 2 * dim, dim, dropout)

    def forward(
        self,
        f: dict[str, Tensor],
        history: Tensor,
        query_vectors: Tensor,
        long_term: Tensor | None = None,
    ) -> Tensor:
        """f: user/context codes (B,...); history: item vectors (B, N, D) with f["hist_mask"]
        (B, N) true where padded; query_vectors: (B, text_dim), the mean text vector of the
        recent search queries (zeros without any);
        f["bag_items"]/f["bag_offsets"]: the id buckets of all earlier items (up to a cap),
        flattened with per-user offsets, for the long-term taste; or, in eval mode,
        `long_term`: that taste already computed (`UserTowerInference`)."""
        batch = history.shape[0]
        # event type and age through one table of their sums: one (B, N, D) add, not two
        ages = self.event_age.num_embeddings
        kinds = (self.event.weight[:, None, :] + self.event_age.weight[None, :, :]).flatten(0, 1)
        tokens = history + F.embedding(f["hist_event"] * ages + f["hist_age"], kinds)
        read = self.history.read(self.summary[0].expand(batch, -1), tokens, f["hist_mask"])
        # the first layer over the concatenation [id, region, attributes (summed), device,
        # hour, weekday, history read, queries, long-term taste]
        if not self.training:
            if long_term is None:
                long_term = self._long_term(f["bag_items"], f["bag_offsets"])
            pre = self._first_layer_plain(f, read, query_vectors, long_term)
        else:
            pre = self._first_layer_by_blocks(f, read, query_vectors)
        hidden = self.mlp[1](pre)
        return F.normalize(self.mlp[3](dropout(self.mlp[2], hidden, f.get("dropout"))), dim=-1)

    def _first_layer_plain(
        self, f: dict[str, Tensor], read: Tensor, queries: Tensor, long_term: Tensor
    ) -> Tensor:
        """The first layer over the concatenation itself: one product, for serving's small
        batches (a one-user request ran a dozen small products block by block)."""
        attributes = self._attributes_sum(f["attributes"])
        if self.numeric is not None:
            attributes = attributes + self.numeric(f["numeric"])
        parts = [
            self.id(f["id_bucket"]) * f["id_mask"][:, None],
            self.region(f["region"]),
            attributes,
            self.device(f["device"]),
            self.hour(f["hour"]),
            self.weekday(f["weekday"]),
            read,
            self.queries(queries),
            long_term,
        ]
        return self.mlp[0](torch.cat(parts, dim=-1))

    def _attributes_sum(self, codes: Tensor) -> Tensor:
        """(B, D) sum of the user's attribute embeddings (zeros without attributes)."""
        # codes.shape[0], not len(codes): an ONNX trace keeps the former as the batch size
        out = torch.zeros(codes.shape[0], self.id.embedding_dim)
        for j, table in enumerate(self.attributes):
            out = out + table(codes[:, j])
        return out

    def _first_layer_by_blocks(
        self, f: dict[str, Tensor], read: Tensor, query_vectors: Tensor
    ) -> Tensor:
        """The first layer block by block, for training: the small tables through their
        projected rows (see `_projected`), the rest in one product."""
        batch = read.shape[0]
        dim = self.id.embedding_dim
        first = self.mlp[0]
        block = [first.weight[:, j * dim : (j + 1) * dim] for j in range(9)]
        dense = torch.cat(
            [
                self.id(f["id_bucket"]) * f["id_mask"][:, None],
                read,
                self.queries(query_vectors),
                self._long_term(f["bag_items"], f["bag_offsets"]),
            ],
            dim=-1,
        )
        pre = F.linear(dense, torch.cat([block[0], *block[6:]], dim=1), first.bias)
        pre = pre + _projected(self.region, f["region"], block[1], batch)
        for j, table in enumerate(self.attributes):
            pre = pre + _projected(table, f["attributes"][:, j], block[2], batch)
        if self.numeric is not None:
            numeric = self.numeric
            pre = pre + F.linear(f["numeric"], block[2] @ numeric.weight, block[2] @ numeric.bias)
        pre = pre + _projected(self.device, f["device"], block[3], batch)
        pre = pre + _projected(self.hour, f["hour"], block[4], batch)
        pre = pre + _projected(self.weekday, f["weekday"], block[5], batch)
        return pre

    def _long_term(self, items: Tensor, offsets: Tensor) -> Tensor:
        """The long-term bag's mean embeddings; a dense table (small catalogues) goes through
        a sparse-matrix product instead of `nn.EmbeddingBag` (same values and gradient):
        sorting the bags' indices in its backward made the bag a tenth of a training step
        on ml-100k. Sparse tables keep the bag's sparse gradient for the lazy optimizer."""
        if self.long_term.sparse or items.device.type != "cpu":
            return self.long_term(items, offsets)
        return _BagMean.apply(
            self.long_term.weight, bag_matrix(items, offsets, len(self.long_term.weight))
        )


#: the user features `UserTowerInference` takes, in its argument order after the three tensors
USER_INPUTS = (
    "id_bucket",
    "id_mask",
    "region",
    "attributes",
    "numeric",
    "device",
    "hour",
    "weekday",
    "hist_event",
    "hist_age",
    "hist_mask",
)


class UserTowerInference(nn.Module):
    """The user tower's eval pass over plain tensors, its long-term taste given (the bag's
    sparse product stays in SciPy): what `core.onnx_forward` exports for serving."""

    def __init__(self, tower: UserTower) -> None:
        super().__init__()
        self.tower = tower

    def forward(
        self, long_term: Tensor, history: Tensor, queries: Tensor, *features: Tensor
    ) -> Tensor:
        return self.tower(
            dict(zip(USER_INPUTS, features, strict=True)), history, queries, long_term
        )


def bag_matrix(items: Tensor, offsets: Tensor, rows: int) -> sparse.csr_matrix:
    """(bags, rows) CSR matrix whose product with a table is each bag's mean row, like
    `nn.EmbeddingBag(mode="mean", padding_idx=0)`: index 0 is padding, left out of the mean,
    and an empty bag is zeros."""
    index = items.numpy()
    bounds = np.append(offsets.numpy(), len(index))
    kept = (index != 0).astype(np.float32)
    running = np.concatenate([[0.0], np.cumsum(kept, dtype=np.float64)])
    counts = running[bounds[1:]] - running[bounds[:-1]]
    share = kept / np.maximum(np.repeat(counts, np.diff(bounds)), 1.0)
    return sparse.csr_matrix(
        (share.astype(np.float32), index, bounds), shape=(len(bounds) - 1, rows)
    )


class _BagMean(torch.autograd.Function):
    """matrix @ weight with `matrix` a SciPy sparse matrix: the gradient of the table is
    matrix.T @ grad, a sparse product again (no index sort)."""

    @staticmethod
    def forward(ctx, weight: Tensor, matrix: sparse.csr_matrix) -> Tensor:  # type: ignore[override]
        ctx.matrix = matrix
        return torch.from_numpy(np.asarray(matrix @ weight.detach().numpy(), dtype=np.float32))

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        out = ctx.matrix.T @ grad.contiguous().numpy()
        return torch.from_numpy(np.asarray(out, dtype=np.float32)), None


#: Id tables with at least this many rows in all get sparse gradients (see
#: `training._Optimizer`); below it, a dense step over the whole table is cheaper than
#: coalescing the sparse gradient of a batch's long-term bags (ml-100k: 1.7 s an epoch).
SPARSE_ID_MIN_ROWS = 50_000


def _uninitialised(rows: int, dim: int, initialise: bool) -> Tensor | None:
    """Storage for an id table a load fills at once (None: the table initialises itself)."""
    return None if initialise else torch.empty(rows, dim)


class TwoTower(nn.Module):
    def __init__(
        self,
        sizes: TowerSizes,
        dim: int,
        dropout: float,
        sparse_ids: bool | None = None,
        initialise: bool = True,
    ) -> None:
        """`initialise` False: the id tables are left uninitialised, for a model whose
        saved weights replace them at once (a load: drawing random values for the 100k-item
        model's tables first was a third of it, in every worker at every start and swap)."""
        super().__init__()
        self.sizes = sizes
        if sparse_ids is None:
            sparse_ids = sizes.item_ids + sizes.user_ids >= SPARSE_ID_MIN_ROWS
        self.items = ItemTower(sizes, dim, dropout, sparse_ids, initialise=initialise)
        self.users = UserTower(sizes, dim, dropout, sparse_ids, initialise=initialise)
        if not initialise:
            return  # every table is replaced by the saved one
        for module in self.modules():
            # small initial embeddings: a code no training example touched (a new user's
            # attribute value) then stays close to "nothing known" instead of random noise
            if isinstance(module, nn.Embedding | nn.EmbeddingBag):
                nn.init.normal_(module.weight, std=0.02)
