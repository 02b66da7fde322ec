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

/// How a cache holds its keys and values. A backend picks the faster one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheLayout {
    /// Settled + recent parts grown by concatenation (the CPU backend: a whole-buffer
    /// `slice_assign` copied about 1.2 GB a step there for GPT-B at batch 32 with CFG).
    Growing,
    /// One buffer per layer for the whole sequence, allocated once and written in place at each
    /// position; attention reads every column with the unwritten ones masked. No shape changes
    /// from one step to the next, so GPU kernels are compiled and tuned once (GPU backends).
    Fixed,
}

impl CacheLayout {
    /// The layout for backend `B`: growing on the CPU, fixed elsewhere.
    pub fn for_backend<B: Backend>() -> Self {
        if crate::kernels::is_cpu::<B>() {
            CacheLayout::Growing
        } else {
            CacheLayout::Fixed
        }
    }
}

/// Keys and values of one layer.
#[derive(Debug, Clone)]
pub enum LayerKv<B: Backend> {
    /// Two parts: `settled` (every position up to the last fold) and `recent` (the positions
    /// since, fewer than `RECENT_ROWS`). A decode step appends to `recent` only, so it copies
    /// at most a few rows; every `RECENT_ROWS` positions `recent` is folded into `settled`.
    /// Attention reads both parts where they lie.
    Growing {
        settled: Option<KvPart<B>>,
        recent: Option<KvPart<B>>,
    },
    /// `[batch, n_kv_head, max_len, head_dim]` buffers and the positions written so far.
    Fixed { buf: KvPart<B>, len: usize },
}

impl<B: Backend> Default for LayerKv<B> {
    fn default() -> Self {
        LayerKv::Growing {
            settled: None,
            recent: None,
        }
    }
}

impl<B: Backend> LayerKv<B> {
    /// Positions held.
    pub fn len(&self) -> usize {
        match self {
            LayerKv::Growing { settled, recent } => {
                settled.iter().chain(recent.iter()).map(KvPart::len).sum()
            }
            LayerKv::Fixed { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the keys and values of positions `[start, start + n)` (in position order).
    pub fn append(&mut self, k: Tensor<B, 4>, v: Tensor<B, 4>) {
        match self {
            LayerKv::Growing { settled, recent } => {
                let new = KvPart { k, v };
                let joined = match recent.take() {
                    Some(r) => r.join(new),
                    None => new,
                };
                if joined.len() >= RECENT_ROWS {
                    *settled = Some(match settled.take() {
                        Some(s) => s.join(joined),
                        None => joined,
                    });
                } else {
                    *recent = Some(joined);
                }
            }
            LayerKv::Fixed { buf, len } => {
                let [b, h, n, d] = k.dims();
                let at = [0..b, 0..h, *len..*len + n, 0..d];
                // Moved out so that the buffers are not shared: written in place.
                let empty = || Tensor::empty([1, 1, 1, 1], &k.device());
                let old = std::mem::replace(
                    buf,
                    KvPart {
                        k: empty(),
                        v: empty(),
                    },
                );
                *buf = KvPart {
                    k: old.k.slice_assign(at.clone(), k),
                    v: old.v.slice_assign(at, v),
                };
                *len += n;
            }
        }
    }

    /// Drops every position from `len` on (a rollback of uncommitted positions): the cache is
    /// then the one that never saw them. A fixed buffer only resets its length (the columns
    /// past it are written again before any query can see them: attention is causal).
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len() {
            return;
        }
        match self {
            LayerKv::Growing { settled, recent } => {
                let keep = |p: KvPart<B>, n: usize| KvPart {
                    k: p.k.narrow(2, 0, n),
                    v: p.v.narrow(2, 0, n),
                };
                let settled_len = settled.as_ref().map_or(0, KvPart::len);
                if len <= settled_len {
                    *recent = None;
                    *settled = match settled.take() {
                        Some(s) if len > 0 => Some(keep(s, len)),
                        _ => None,
                    };
                } else if let Some(r) = recent.take() {
                    *recent = Some(keep(r, len - settled_len));
                }
            }
            LayerKv::Fixed { len: held, .. } => *held = len,
        }
    }

    /// The parts in position order. A fixed buffer is one part of `max_len` positions, the
    /// unwritten ones included (the attention mask hides them).
    pub fn parts(&self) -> Vec<KvPart<B>> {
        match self {
            LayerKv::Growing { settled, recent } => {
                settled.iter().chain(recent.iter()).cloned().collect()
            }
            LayerKv::Fixed { buf, .. } => vec![buf.clone()],
        }
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
    pub layout: CacheLayout,
}

impl<B: Backend> KvCache<B> {
    /// A cache of `n_layer` layers for `batch` rows and `seq_len` positions; a fixed layout
    /// allocates `[batch, n_kv_head, max_len, head_dim]` buffers in `dtype` at once.
    pub fn new(
        n_layer: usize,
        batch: usize,
        seq_len: usize,
        (n_kv_head, head_dim): (usize, usize),
        layout: CacheLayout,
        dtype: burn::tensor::DType,
        device: &B::Device,
    ) -> Self {
        let max_len = crate::config::find_multiple(seq_len.max(1), 8);
        let layers = (0..n_layer)
            .map(|_| match layout {
                CacheLayout::Growing => LayerKv::default(),
                CacheLayout::Fixed => {
                    let zeros = || {
                        Tensor::<B, 4>::zeros([batch, n_kv_head, max_len, head_dim], device)
                            .cast(dtype)
                    };
                    LayerKv::Fixed {
                        buf: KvPart {
                            k: zeros(),
                            v: zeros(),
                        },
                        len: 0,
                    }
                }
            })
            .collect();
        let allowed = Tensor::<B, 2, Bool>::tril_mask([max_len, max_len], 0, device)
            .bool_not()
            .unsqueeze::<3>()
            .expand([batch, max_len, max_len]);
        Self {
            layers,
            allowed,
            batch,
            max_len,
            layout,
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

    /// Drops every position from `len` on, in every layer ([`LayerKv::truncate`]).
    pub fn truncate(&mut self, len: usize) {
        for layer in &mut self.layers {
            layer.truncate(len);
        }
    }

    /// Positions held (those of the first layer; all layers hold the same).
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, LayerKv::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Positions `[start, start+len)` as query rows over the key columns attention reads
    /// (`[0, start+len)` when growing, all `max_len` when fixed): the "blocked" mask (true = not
    /// attended) for `mask_fill`, shaped `[batch, 1, len, columns]`.
    pub fn blocked(&self, start: usize, len: usize) -> Tensor<B, 4, Bool> {
        let cols = match self.layout {
            CacheLayout::Growing => start + len,
            CacheLayout::Fixed => self.max_len,
        };
        self.allowed
            .clone()
            .slice([0..self.batch, start..start + len, 0..cols])
            .bool_not()
            .unsqueeze_dim(1)
    }
}
