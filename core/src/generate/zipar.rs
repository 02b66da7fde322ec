//! ZipAR (He et al. 2024, "ZipAR: Accelerating Auto-regressive Image Generation through Spatial
//! Locality"), on the host sampler.
//!
//! The first row is decoded one token a pass. After that, row r + 1 starts once row r has
//! `window` tokens, and every started row advances one token a pass, so a H × W grid takes
//! 2W + (H − 2)·window passes. A token attends to every token made so far at an earlier raster
//! position; the tokens to its upper right that are not made yet are missing, which is why ZipAR
//! changes the distribution (with `window` = W it is sequential decoding).
//!
//! A row starts from the latest token of the row above placed at that row's last position (the
//! position that precedes the new row's first token); while the row above is unfinished, that
//! entry stands in for a token not made yet, so it is seen by its own query only and hidden
//! afterwards. When a row finishes after the row below it started, its last token is fed in the
//! next pass so that later tokens see it.
//!
//! The cache holds entries in the order they were written, with their positions beside them;
//! every pass gives each query the mask of the entries it may see.

use std::sync::atomic::{AtomicBool, Ordering};

use burn::prelude::*;
use burn::tensor::{Bool, TensorData};

use super::{Generation, Observer, Run, TokenEvent, guided, read_logits as read};
use crate::sampling::{TokenSampler, TokenSampling};

/// One input of a pass.
struct Input {
    /// Row and column of the token fed.
    from: (usize, usize),
    /// Raster index whose position it takes (differs from `from` for a row's start).
    at: usize,
    /// The token this input's output predicts, as a raster index.
    predicts: Option<usize>,
    /// Whether the entry stands in for a token not made yet (hidden after this pass).
    stand_in: bool,
}

/// Every sample's tokens in raster order, made out of order.
struct Tokens {
    samplers: Vec<TokenSampler>,
    grid: Vec<Vec<u32>>,
    probs: Vec<Vec<f32>>,
    entropy: Vec<Vec<f32>>,
    /// `[sample][index]` the logits each token was drawn from (when asked for).
    logits: Vec<Vec<Vec<f32>>>,
    /// Whether token k exists (the batch shares the schedule).
    made: Vec<bool>,
    /// Tokens announced to the observer (a gap-free raster prefix).
    announced: usize,
    use_cfg: bool,
    vocab: usize,
}

impl Tokens {
    /// Draws token `index` of every sample from output `at` of `host` (`[rows, seq, vocab]`).
    fn draw(&mut self, host: &[f32], seq: usize, at: usize, index: usize) {
        let (v, b) = (self.vocab, self.samplers.len());
        let keep = !self.logits.is_empty();
        for (i, sampler) in self.samplers.iter_mut().enumerate() {
            let row = |r: usize| &host[(r * seq + at) * v..(r * seq + at + 1) * v];
            let combined = guided(
                &sampler.params,
                index,
                row(i),
                self.use_cfg.then(|| row(b + i)),
            );
            let choice = sampler.sample(&combined);
            self.grid[i][index] = choice.token as u32;
            self.probs[i][index] = choice.prob;
            self.entropy[i][index] = choice.entropy;
            if keep {
                self.logits[i][index] = combined;
            }
        }
        self.made[index] = true;
    }

    /// Events in raster order for the tokens made with no gap before them.
    fn announce(
        &mut self,
        total: usize,
        passes: usize,
        detail: super::EventDetail,
        observer: &mut dyn Observer,
    ) {
        while self.announced < total && self.made[self.announced] {
            let index = self.announced;
            let tokens: Vec<Vec<u32>> = self.grid.iter().map(|t| t[..=index].to_vec()).collect();
            let p: Vec<f32> = self.probs.iter().map(|p| p[index]).collect();
            let h: Vec<f32> = self.entropy.iter().map(|h| h[index]).collect();
            let l: Vec<Vec<f32>> = self.logits.iter().map(|l| l[index].clone()).collect();
            observer.on_token(&TokenEvent {
                index,
                total,
                tokens: &tokens,
                probs: detail.confidence.then_some(&p[..]),
                entropy: detail.confidence.then_some(&h[..]),
                logits: detail.logits.then_some(&l[..]),
                passes,
            });
            self.announced += 1;
        }
    }
}

pub(super) fn run<B: Backend>(
    run: Run<'_, B>,
    window: usize,
    observer: &mut dyn Observer,
    cancel: Option<&AtomicBool>,
) -> Generation {
    let Run {
        gpt,
        mut cache,
        last,
        requests,
        use_cfg,
        prefix_len,
        detail,
        mut passes,
    } = run;
    let cfg = &gpt.config;
    let device = gpt.device();
    let (b, t, v, total) = (
        requests.len(),
        cfg.cls_token_num,
        cfg.vocab_size,
        cfg.block_size,
    );
    let g = cfg.grid_size();
    let rows = if use_cfg { 2 * b } else { b };
    let mut st = Tokens {
        samplers: requests
            .iter()
            .map(|r| TokenSampler::new(r.params))
            .collect(),
        grid: vec![vec![0; total]; b],
        probs: vec![vec![f32::NAN; total]; b],
        entropy: vec![vec![f32::NAN; total]; b],
        logits: vec![vec![Vec::new(); total]; if detail.logits { b } else { 0 }],
        made: vec![false; total],
        announced: prefix_len,
        use_cfg,
        vocab: v,
    };
    for (i, r) in requests.iter().enumerate() {
        st.grid[i][..prefix_len].copy_from_slice(&r.prefix);
    }
    st.made[..prefix_len].iter_mut().for_each(|m| *m = true);

    // Which condition columns an image query sees (the caption mask), per row of the batch.
    let cond_cols: Vec<bool> = cache
        .allowed
        .clone()
        .slice([0..rows, t..t + 1, 0..t])
        .int()
        .into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .expect("mask values")
        .into_iter()
        .map(|x| x != 0)
        .collect();

    // Raster order up to the end of the row of the first token to make.
    let rows_done = prefix_len / g + 1;
    let sequential_end = rows_done * g;
    let mut host = read(last);
    let mut cancelled = false;
    for index in prefix_len..sequential_end {
        st.draw(&host, 1, 0, index);
        st.announce(total, passes, detail, observer);
        if index + 1 == sequential_end {
            break;
        }
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            cancelled = true;
            break;
        }
        let mut ids: Vec<i64> = st.grid.iter().map(|tk| tk[index] as i64).collect();
        if use_cfg {
            ids.extend_from_within(..);
        }
        let input = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [rows, 1]), &device);
        host = read(gpt.decode(input, t + index, &mut cache));
        passes += 1;
    }

    // The cache's entries: absolute positions, and whether later queries may see them.
    let mut positions: Vec<usize> = (0..t + sequential_end - 1).collect();
    let mut visible: Vec<bool> = vec![true; positions.len()];
    // Tokens made per row, the rows under way (in order), and a finished row's last token to
    // feed.
    let mut count: Vec<usize> = (0..g).map(|r| if r < rows_done { g } else { 0 }).collect();
    let mut active: Vec<usize> = if rows_done < g {
        vec![rows_done]
    } else {
        Vec::new()
    };
    let mut feed_last: Vec<usize> = Vec::new();

    while !cancelled && !active.is_empty() {
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            cancelled = true;
            break;
        }
        let mut inputs: Vec<Input> = feed_last
            .drain(..)
            .map(|r| Input {
                from: (r, g - 1),
                at: r * g + g - 1,
                predicts: None,
                stand_in: false,
            })
            .collect();
        for &r in &active {
            let c = count[r];
            inputs.push(if c > 0 {
                Input {
                    from: (r, c - 1),
                    at: r * g + c - 1,
                    predicts: Some(r * g + c),
                    stand_in: false,
                }
            } else {
                let above = count[r - 1];
                Input {
                    from: (r - 1, above - 1),
                    at: (r - 1) * g + g - 1,
                    predicts: Some(r * g),
                    stand_in: above < g,
                }
            });
        }
        let seq = inputs.len();
        let mut ids = Vec::with_capacity(rows * seq);
        for tk in &st.grid {
            ids.extend(inputs.iter().map(|x| tk[x.from.0 * g + x.from.1] as i64));
        }
        if use_cfg {
            ids.extend_from_within(..);
        }
        let at: Vec<usize> = inputs.iter().map(|x| t + x.at).collect();
        positions.extend(&at);
        visible.extend(std::iter::repeat_n(true, seq));
        // Query j sees the condition columns its caption allows and every visible entry at a
        // position up to its own.
        let columns = match cache.layout {
            crate::gpt::CacheLayout::Growing => positions.len(),
            crate::gpt::CacheLayout::Fixed => cache.max_len,
        };
        let mut blocked = vec![1i64; rows * seq * columns];
        for r in 0..rows {
            for (j, &q) in at.iter().enumerate() {
                let base = (r * seq + j) * columns;
                for (e, (&p, &vis)) in positions.iter().zip(&visible).enumerate() {
                    let seen = if p < t {
                        cond_cols[r * t + p]
                    } else {
                        vis && p <= q
                    };
                    blocked[base + e] = (!seen) as i64;
                }
            }
        }
        // Built as integers: backends hold booleans in their own element types.
        let blocked: Tensor<B, 4, Bool> = Tensor::<B, 4, Int>::from_data(
            TensorData::new(blocked, [rows, 1, seq, columns]),
            &device,
        )
        .equal_elem(1);
        let input = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [rows, seq]), &device);
        let out = gpt.decode_at(input, &at, blocked, &mut cache);
        passes += 1;
        let host = read(out);
        let first_new = positions.len() - seq;
        for (j, x) in inputs.iter().enumerate() {
            if x.stand_in {
                visible[first_new + j] = false;
            }
            if let Some(index) = x.predicts {
                st.draw(&host, seq, j, index);
                count[index / g] += 1;
            }
        }
        // Rows that reached the window start the next row; finished rows leave.
        let mut next_active = Vec::with_capacity(active.len() + 1);
        for &r in &active {
            if count[r] < g {
                next_active.push(r);
            } else if r + 1 < g && count[r + 1] > 0 {
                // The row below started from a stand-in: feed the real last token.
                feed_last.push(r);
            }
            let below = r + 1;
            if count[r] >= window.min(g)
                && below < g
                && count[below] == 0
                && !active.contains(&below)
            {
                next_active.push(below);
            }
        }
        active = next_active;
        st.announce(total, passes, detail, observer);
    }

    let done = st.announced;
    for i in 0..b {
        st.grid[i].truncate(done);
        st.probs[i].truncate(done);
        st.entropy[i].truncate(done);
    }
    Generation {
        tokens: st.grid,
        probs: st.probs,
        entropy: st.entropy,
        cancelled: cancelled || done < total,
        sampling: TokenSampling::Host,
        forward_passes: passes,
    }
}
