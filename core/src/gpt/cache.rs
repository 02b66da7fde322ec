use burn::prelude::*;
use burn::tensor::Bool;

/// Keys and values of some positions, `[batch, n_kv_head, len, head_dim]` each.
#[derive(Debug, Clone)]
pub struct KvPart<B: Backend> {
    pub k: Tensor<B, 4>,
    pub v: Tensor<B, 4>,
}

impl<B: Backend> KvPart<B> {
    pub fn len(&self) -> usize {
        self.k.dims()[2]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn join(self, other: Self) -> Self {
        Self {
            k: Tensor::cat(vec![self.k, other.k], 2),
            v: Tensor::cat(vec![self.v, other.v], 2),
        }
    }
}

/// Positions gathered in `recent` before they are folded into `settled`.
pub const RECENT_ROWS: usize = 16;

/// Keys and values of one layer in two parts: `settled` (every position up to the last fold)
/// and `recent` (the positions since, fewer than [`RECENT_ROWS`]). A decode step appends to
/// `recent` only, so it copies at most a few rows; every [`RECENT_ROWS`] positions `recent` is
/// folded into `settled`. Attention reads both parts where they lie. (A single pre-allocated
/// buffer written with `slice_assign` was copied whole at every step by the CPU backend:
/// about 1.2 GB a step for GPT-B at batch 32 with CFG.)
#[derive(Debug, Clone)]
pub struct LayerKv<B: Backend> {
    pub settled: Option<KvPart<B>>,
    pub recent: Option<KvPart<B>>,
}

impl<B: Backend> Default for LayerKv<B> {
    fn default() -> Self {
        Self {
            settled: None,
            recent: None,
        }
    }
}

impl<B: Backend> LayerKv<B> {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.parts().map(KvPart::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the keys and values of the next positions.
    pub fn append(&mut self, k: Tensor<B, 4>, v: Tensor<B, 4>) {
        let new = KvPart { k, v };
        let recent = match self.recent.take() {
            Some(r) => r.join(new),
            None => new,
        };
        if recent.len() >= RECENT_ROWS {
            self.settled = Some(match self.settled.take() {
                Some(s) => s.join(recent),
                None => recent,
            });
        } else {
            self.recent = Some(recent);
        }
    }

    /// The parts in position order.
    pub fn parts(&self) -> impl Iterator<Item = &KvPart<B>> {
        self.settled.iter().chain(self.recent.iter())
    }
}

/// The KV cache of one batch, with the attention mask the official code keeps
/// beside it (`setup_caches`): causal, length rounded up to a multiple of 8, and for
/// text-conditional models the caption padding columns switched off.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    pub layers: Vec<LayerKv<B>>,
    /// `[batch, max_len, max_len]`, true where a query row may attend to a key column.
    pub allowed: Tensor<B, 3, Bool>,
    pub batch: usize,
    pub max_len: usize,
}

impl<B: Backend> KvCache<B> {
    pub fn new(n_layer: usize, batch: usize, seq_len: usize, device: &B::Device) -> Self {
        let max_len = crate::config::find_multiple(seq_len.max(1), 8);
        let layers = (0..n_layer).map(|_| LayerKv::default()).collect();
        let allowed = Tensor::<B, 2, Bool>::tril_mask([max_len, max_len], 0, device)
            .bool_not()
            .unsqueeze::<3>()
            .expand([batch, max_len, max_len]);
        Self {
            layers,
            allowed,
            batch,
            max_len,
        }
    }

    /// The official generate() mask edit for captions: every query row loses the caption
    /// columns whose `emb_mask` is 0, then the diagonal is switched back on so that no row is
    /// fully masked. `emb_masks` is `[batch, cls_token_num]`, true = valid caption token.
    pub fn mask_captions(&mut self, emb_masks: Tensor<B, 2, Bool>) {
        let [b, t] = emb_masks.dims();
        let device = emb_masks.device();
        let cols = self.allowed.clone().narrow(2, 0, t);
        let cols = cols.bool_and(emb_masks.unsqueeze_dim::<3>(1).expand([b, self.max_len, t]));
        let allowed = self
            .allowed
            .clone()
            .slice_assign([0..b, 0..self.max_len, 0..t], cols);
        let diag = Tensor::<B, 2, Bool>::diag_mask([self.max_len, self.max_len], 0, &device)
            .bool_not()
            .unsqueeze::<3>()
            .expand([b, self.max_len, self.max_len]);
        self.allowed = allowed.bool_or(diag);
    }

    /// Positions `[start, start+len)` as query rows over key columns `[0, start+len)`: the
    /// "blocked" mask (true = not attended) for `mask_fill`, shaped `[batch, 1, len, start+len]`.
    pub fn blocked(&self, start: usize, len: usize) -> Tensor<B, 4, Bool> {
        self.allowed
            .clone()
            .slice([0..self.batch, start..start + len, 0..start + len])
            .bool_not()
            .unsqueeze_dim(1)
    }
}
