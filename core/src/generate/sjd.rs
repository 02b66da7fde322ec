//! Speculative Jacobi decoding with a coupled draft update (SJD; Teng et al. 2024, with the
//! coupled update of SCD), on the host sampler.
//!
//! Each sample keeps a window of draft tokens beyond its last final token, each with the
//! distribution q it was drawn from (a new draft is a uniform random token whose q is a point
//! mass). One forward pass over [final tokens not yet in the cache, drafts] gives the target p at
//! every position of the window, computed exactly as the sequential sampler computes it (CFG,
//! temperature, top-k, top-p). Walking the window in order, draft d is accepted with probability
//! min(1, p(d)/q(d)); at the first rejection a token is drawn from norm(max(0, p − q)) and the
//! walk stops; when every draft is accepted, one more token is drawn from the last position's p.
//! Each committed token is then distributed exactly as sequential sampling would draw it. The
//! drafts past a rejection are updated with the same rule against the pass's p there (kept with
//! probability min(1, p/q), else redrawn from the residual), so their q becomes that p: the
//! Jacobi iteration that makes later drafts likely to be accepted.
//!
//! Samples of one batch accept different counts. All rows of a forward pass start at one
//! position, so the cache keeps the positions every sample has made final (the batch minimum)
//! and is rolled back past them; a sample that is ahead feeds its extra final tokens again in the
//! next pass (they are not verified again).

use std::sync::atomic::{AtomicBool, Ordering};

use burn::prelude::*;
use burn::tensor::TensorData;

use super::{Generation, Observer, Run, TokenEvent, guided, read_logits as read};
use crate::sampling::{TokenSampler, TokenSampling, argmax, draw, logits_to_probs};

/// The distribution a draft token was drawn from.
#[derive(Debug, Clone)]
enum Proposal {
    /// A uniform random guess, taken as certain (q = 1 at the token).
    Point,
    /// Drawn from (or coupled to) this distribution.
    Dist(Vec<f32>),
}

#[derive(Debug, Clone)]
struct Draft {
    token: usize,
    q: Proposal,
}

impl Draft {
    fn q(&self) -> f32 {
        match &self.q {
            Proposal::Point => 1.0,
            Proposal::Dist(q) => q[self.token],
        }
    }
}

/// The target distribution at one position: the sequential sampler's filtered probabilities,
/// and for greedy samplers (top-k 1) the point mass at their first maximum, as the sequential
/// sampler picks it.
struct Target {
    probs: Vec<f32>,
    greedy: Option<usize>,
    logits: Option<Vec<f32>>,
}

impl Target {
    fn p(&self, token: usize) -> f32 {
        match self.greedy {
            Some(g) => (g == token) as u8 as f32,
            None => self.probs[token],
        }
    }

    /// One draw from p.
    fn draw(&self, uniform: f64) -> usize {
        match self.greedy {
            Some(g) => g,
            None => draw(&self.probs, uniform),
        }
    }

    /// One draw from norm(max(0, p − q)): the residual after a draft was rejected.
    fn residual(&self, draft: &Draft, uniform: f64) -> usize {
        if let Some(g) = self.greedy {
            return g;
        }
        let rest: Vec<f32> = match &draft.q {
            Proposal::Point => {
                let mut r = self.probs.clone();
                r[draft.token] = 0.0;
                r
            }
            Proposal::Dist(q) => self
                .probs
                .iter()
                .zip(q)
                .map(|(&p, &q)| (p - q).max(0.0))
                .collect(),
        };
        // A rejection means p(d) < q(d), so the residual holds mass; rounding aside.
        if rest.iter().any(|&r| r > 0.0) {
            draw(&rest, uniform)
        } else {
            self.draw(uniform)
        }
    }

    /// The distribution a token drawn from this target (or coupled to it) carries as a draft.
    fn as_proposal(&self) -> Proposal {
        match self.greedy {
            Some(g) => {
                let mut q = vec![0.0; self.probs.len()];
                q[g] = 1.0;
                Proposal::Dist(q)
            }
            None => Proposal::Dist(self.probs.clone()),
        }
    }

    fn entropy(&self) -> f32 {
        -self
            .probs
            .iter()
            .filter(|&&p| p > 0.0)
            .map(|&p| p * p.ln())
            .sum::<f32>()
    }
}

/// One sample's state: its final tokens (some may not be in the cache yet) and its drafts for
/// the positions after them.
struct Lane {
    sampler: TokenSampler,
    tokens: Vec<u32>,
    probs: Vec<f32>,
    entropy: Vec<f32>,
    logits: Vec<Vec<f32>>,
    drafts: Vec<Draft>,
}

impl Lane {
    fn commit(&mut self, token: usize, target: &Target) {
        self.tokens.push(token as u32);
        self.probs.push(target.probs[token]);
        self.entropy.push(target.entropy());
        if let Some(l) = &target.logits {
            self.logits.push(l.clone());
        }
    }
}

/// The CFG-combined logits of sample `i` at one output row, and its target for token `index`.
fn target(
    host: &[f32],
    (i, b, v): (usize, usize, usize),
    row: usize,
    seq: usize,
    use_cfg: bool,
    sampler: &TokenSampler,
    index: usize,
    keep_logits: bool,
) -> Target {
    let at = |r: usize| &host[(r * seq + row) * v..(r * seq + row + 1) * v];
    let combined = guided(&sampler.params, index, at(i), use_cfg.then(|| at(b + i)));
    let probs = logits_to_probs(&combined, &sampler.params);
    let greedy = (sampler.params.top_k == 1).then(|| argmax(&probs));
    Target {
        probs,
        greedy,
        logits: keep_logits.then_some(combined),
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
    let rows = if use_cfg { 2 * b } else { b };
    let mut lanes: Vec<Lane> = requests
        .iter()
        .map(|r| Lane {
            sampler: TokenSampler::new(r.params),
            tokens: r.prefix.clone(),
            probs: vec![f32::NAN; prefix_len],
            entropy: vec![f32::NAN; prefix_len],
            logits: Vec::new(),
            drafts: Vec::new(),
        })
        .collect();

    // Events for the tokens every sample has made final, in order.
    let mut announced = prefix_len;
    let mut announce = |lanes: &[Lane], upto: usize, passes: usize, observer: &mut dyn Observer| {
        for index in announced..upto {
            let tokens: Vec<Vec<u32>> = lanes.iter().map(|l| l.tokens[..=index].to_vec()).collect();
            let probs: Vec<f32> = lanes.iter().map(|l| l.probs[index]).collect();
            let entropy: Vec<f32> = lanes.iter().map(|l| l.entropy[index]).collect();
            let logits: Vec<Vec<f32>> = if detail.logits {
                lanes
                    .iter()
                    .map(|l| l.logits[index - prefix_len].clone())
                    .collect()
            } else {
                Vec::new()
            };
            observer.on_token(&TokenEvent {
                index,
                total,
                tokens: &tokens,
                probs: detail.confidence.then_some(&probs[..]),
                entropy: detail.confidence.then_some(&entropy[..]),
                logits: detail.logits.then_some(&logits[..]),
                passes,
            });
        }
        announced = announced.max(upto);
    };

    // The first token comes from the pass that filled the cache, as in sequential decoding.
    let host = read(last);
    for (i, lane) in lanes.iter_mut().enumerate() {
        let target = target(
            &host,
            (i, b, v),
            0,
            1,
            use_cfg,
            &lane.sampler,
            prefix_len,
            detail.logits,
        );
        let token = target.draw(lane.sampler.uniform());
        lane.commit(token, &target);
    }
    // Image tokens whose keys and values are in the cache.
    let mut cached = prefix_len;
    let mut cancelled = false;
    loop {
        let done = lanes.iter().map(|l| l.tokens.len()).min().unwrap_or(total);
        announce(&lanes, done, passes, observer);
        if done >= total {
            break;
        }
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            cancelled = true;
            break;
        }
        // Input positions [cached, cached + seq): every row's final tokens there, then drafts;
        // the pass predicts tokens cached + 1 ..= cached + seq.
        let seq = (window + 1).min(total - 1 - cached);
        let end = cached + seq;
        let mut ids = Vec::with_capacity(rows * seq);
        for lane in &mut lanes {
            let have = lane.tokens.len();
            let need = end.saturating_sub(have);
            lane.drafts.truncate(need);
            while lane.drafts.len() < need {
                let token = ((lane.sampler.uniform() * v as f64) as usize).min(v - 1);
                lane.drafts.push(Draft {
                    token,
                    q: Proposal::Point,
                });
            }
            ids.extend((cached..end).map(|pos| {
                if pos < have {
                    lane.tokens[pos] as i64
                } else {
                    lane.drafts[pos - have].token as i64
                }
            }));
        }
        if use_cfg {
            ids.extend_from_within(..);
        }
        let input = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [rows, seq]), &device);
        let logits = gpt.decode(input, t + cached, &mut cache);
        passes += 1;
        let host = read(logits);

        let mut keep = total;
        for (i, lane) in lanes.iter_mut().enumerate() {
            let have = lane.tokens.len();
            let drafts = std::mem::take(&mut lane.drafts);
            let target_at = |lane: &Lane, pos: usize| {
                target(
                    &host,
                    (i, b, v),
                    pos - cached - 1,
                    seq,
                    use_cfg,
                    &lane.sampler,
                    pos,
                    detail.logits,
                )
            };
            // Verify the drafts in order; a rejection ends the walk.
            let mut rejected = None;
            for (k, d) in drafts.iter().enumerate() {
                let pos = have + k;
                let target = target_at(lane, pos);
                let q = d.q();
                let ratio = if q > 0.0 { target.p(d.token) / q } else { 1.0 };
                if lane.sampler.uniform() < ratio as f64 {
                    lane.commit(d.token, &target);
                } else {
                    let token = target.residual(d, lane.sampler.uniform());
                    lane.commit(token, &target);
                    rejected = Some(k);
                    break;
                }
            }
            match rejected {
                None if have <= end && end < total && lane.tokens.len() == end => {
                    // Every draft accepted: the last position's p gives one more token.
                    let target = target_at(lane, end);
                    let token = target.draw(lane.sampler.uniform());
                    lane.commit(token, &target);
                }
                None => {}
                Some(k) => {
                    // The drafts past the rejection, coupled to this pass's p there; the
                    // position after the window gets a draft from its p.
                    let mut next = Vec::with_capacity(drafts.len() - k);
                    for (j, d) in drafts.iter().enumerate().skip(k + 1) {
                        let target = target_at(lane, have + j);
                        let q = d.q();
                        let ratio = if q > 0.0 { target.p(d.token) / q } else { 1.0 };
                        let token = if lane.sampler.uniform() < ratio as f64 {
                            d.token
                        } else {
                            target.residual(d, lane.sampler.uniform())
                        };
                        next.push(Draft {
                            token,
                            q: target.as_proposal(),
                        });
                    }
                    if end < total {
                        let target = target_at(lane, end);
                        let token = target.draw(lane.sampler.uniform());
                        next.push(Draft {
                            token,
                            q: target.as_proposal(),
                        });
                    }
                    lane.drafts = next;
                }
            }
            // Keys and values stay valid up to the first input whose token changed.
            let valid = (lane.tokens.len() - 1).min(end);
            keep = keep.min(valid);
        }
        cache.truncate(t + keep);
        cached = keep;
    }
    if cancelled {
        for lane in &mut lanes {
            lane.tokens.truncate(announced);
            lane.probs.truncate(announced);
            lane.entropy.truncate(announced);
        }
    }
    let mut tokens = Vec::with_capacity(b);
    let mut probs = Vec::with_capacity(b);
    let mut entropy = Vec::with_capacity(b);
    for lane in lanes {
        tokens.push(lane.tokens);
        probs.push(lane.probs);
        entropy.push(lane.entropy);
    }
    Generation {
        tokens,
        probs,
        entropy,
        cancelled,
        sampling: TokenSampling::Host,
        forward_passes: passes,
    }
}
