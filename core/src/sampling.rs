//! Sampler parameters and the logits → token step, with the official semantics
//! (`autoregressive/models/generate.py`): temperature, then top-k, then top-p (nucleus)
//! filtering, softmax, one multinomial draw. Every sample of a batch has its own parameters and
//! its own seeded random stream.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Settings of one sample. `top_k = 0` and `top_p = 1.0` mean "off".
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplerParams {
    /// Classifier-free guidance: `uncond + (cond − uncond) · cfg_scale`, on when > 1.
    pub cfg_scale: f32,
    /// Guidance stops after this decode step; −1 = always on.
    pub cfg_interval: i32,
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplerParams {
    /// The official sampling script's defaults.
    fn default() -> Self {
        Self {
            cfg_scale: 4.0,
            cfg_interval: -1,
            temperature: 1.0,
            top_k: 2000,
            top_p: 1.0,
            seed: 0,
        }
    }
}

/// Where a run's tokens were drawn. The host sampler (the CPU backend, and any observer that
/// asks for the logits) draws the official code's tokens from a ChaCha8 stream per seed; the
/// device sampler (GPU backends) draws from the same filtered distribution with a hash-based
/// Gumbel-max draw. The same seed gives other tokens on the other one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenSampling {
    #[default]
    Host,
    Device,
}

impl TokenSampling {
    pub fn describe(self) -> &'static str {
        match self {
            TokenSampling::Host => "the host sampler (CPU backend)",
            TokenSampling::Device => "the device sampler of a GPU backend",
        }
    }
}

/// Sampler settings that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplingError {
    #[error("temperature must be a positive number, got {0}")]
    Temperature(f32),
    #[error("top-p must be in (0, 1], got {0}")]
    TopP(f32),
    #[error("cfg-scale must be a number ≥ 0, got {0}")]
    CfgScale(f32),
    #[error("cfg-interval must be −1 (always) or ≥ 0, got {0}")]
    CfgInterval(i32),
}

impl SamplerParams {
    /// Greedy decoding (deterministic): keep only the most likely token.
    pub fn greedy(cfg_scale: f32) -> Self {
        Self {
            cfg_scale,
            top_k: 1,
            ..Self::default()
        }
    }

    /// Checks the settings. A top-k above the vocabulary is not an error: it keeps every
    /// token, exactly like `top_k = 0`.
    pub fn validate(&self) -> Result<(), SamplingError> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(SamplingError::Temperature(self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(SamplingError::TopP(self.top_p));
        }
        if !(self.cfg_scale.is_finite() && self.cfg_scale >= 0.0) {
            return Err(SamplingError::CfgScale(self.cfg_scale));
        }
        if self.cfg_interval < -1 {
            return Err(SamplingError::CfgInterval(self.cfg_interval));
        }
        Ok(())
    }

    /// Whether guidance applies to the token at `index` (0 = the one the prefill predicts;
    /// decode step i predicts token i + 1 and keeps CFG while i ≤ cfg_interval).
    pub fn cfg_active(&self, index: usize) -> bool {
        self.cfg_scale > 1.0
            && (index == 0 || self.cfg_interval < 0 || index - 1 <= self.cfg_interval as usize)
    }
}

/// `logits / max(temperature, 1e-5)`, then top-k, then top-p; removed entries become −∞
/// (official `top_k_top_p_filtering`).
pub fn filter_logits(logits: &mut [f32], temperature: f32, top_k: usize, top_p: f32) {
    let t = temperature.max(1e-5);
    for l in logits.iter_mut() {
        *l /= t;
    }
    let n = logits.len();
    if top_k > 0 && top_k < n {
        // Keep every token ≥ the k-th largest value (ties with it stay, as in the official code).
        let mut values = logits.to_vec();
        let (_, pivot, _) = values.select_nth_unstable_by(top_k - 1, |a, b| b.total_cmp(a));
        let pivot = *pivot;
        for l in logits.iter_mut() {
            if *l < pivot {
                *l = f32::NEG_INFINITY;
            }
        }
    }
    if top_p < 1.0 {
        // Nucleus: sort descending, keep a token while the probability mass of the tokens
        // before it is ≤ top_p; the first token always stays.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        let sorted: Vec<f32> = order.iter().map(|&i| logits[i]).collect();
        let probs = softmax(&sorted);
        let mut cumulative = 0f32;
        let mut remove = Vec::new();
        for (rank, &i) in order.iter().enumerate() {
            if rank > 0 && cumulative > top_p {
                remove.push(i);
            }
            cumulative += probs[rank];
        }
        for i in remove {
            logits[i] = f32::NEG_INFINITY;
        }
    }
}

/// Softmax in f32: `exp(x − max) / Σ`; −∞ entries get exactly 0.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// The official `logits_to_probs`: filtered, then softmax.
pub fn logits_to_probs(logits: &[f32], params: &SamplerParams) -> Vec<f32> {
    let mut l = logits.to_vec();
    filter_logits(&mut l, params.temperature, params.top_k, params.top_p);
    softmax(&l)
}

/// One draw from `probs` (which sum to 1 up to rounding) given a uniform number in [0, 1).
pub fn draw(probs: &[f32], uniform: f64) -> usize {
    let total: f64 = probs.iter().map(|&p| p as f64).sum();
    let target = uniform * total;
    let mut acc = 0f64;
    let mut last_nonzero = 0;
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            acc += p as f64;
            last_nonzero = i;
            if acc > target {
                return i;
            }
        }
    }
    last_nonzero
}

/// A chosen token with what the studio's confidence map shows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Choice {
    pub token: usize,
    /// Probability of the chosen token under the filtered distribution.
    pub prob: f32,
    /// Entropy (nats) of the filtered distribution.
    pub entropy: f32,
}

/// The random stream of one sample: its own ChaCha8 generator seeded from its seed, so a
/// sample draws the same tokens whether it runs alone or inside a batch.
#[derive(Debug, Clone)]
pub struct TokenSampler {
    pub params: SamplerParams,
    rng: ChaCha8Rng,
}

impl TokenSampler {
    pub fn new(params: SamplerParams) -> Self {
        Self {
            params,
            rng: ChaCha8Rng::seed_from_u64(params.seed),
        }
    }

    /// One uniform number in [0, 1) from this sample's stream (the decoding strategies that
    /// draw more than one number per token take theirs here).
    pub fn uniform(&mut self) -> f64 {
        self.rng.random()
    }

    /// Samples one token from (already CFG-combined) logits. One uniform number is drawn per
    /// token whatever the settings, so streams stay aligned.
    pub fn sample(&mut self, logits: &[f32]) -> Choice {
        let probs = logits_to_probs(logits, &self.params);
        let uniform: f64 = self.rng.random();
        let token = if self.params.top_k == 1 {
            argmax(&probs)
        } else {
            draw(&probs, uniform)
        };
        let entropy = -probs
            .iter()
            .filter(|&&p| p > 0.0)
            .map(|&p| p * p.ln())
            .sum::<f32>();
        Choice {
            token,
            prob: probs[token],
            entropy,
        }
    }
}

/// Index of the largest value (the first on ties).
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pearson chi-square statistic of observed counts against expected probabilities.
    fn chi_square(counts: &[usize], probs: &[f32], n: usize) -> f64 {
        counts
            .iter()
            .zip(probs)
            .filter(|(_, p)| **p > 0.0)
            .map(|(&c, &p)| {
                let e = p as f64 * n as f64;
                (c as f64 - e).powi(2) / e
            })
            .sum()
    }

    fn histogram(params: SamplerParams, logits: &[f32], n: usize) -> Vec<usize> {
        let mut s = TokenSampler::new(params);
        let mut counts = vec![0; logits.len()];
        for _ in 0..n {
            counts[s.sample(logits).token] += 1;
        }
        counts
    }

    const LOGITS: [f32; 8] = [2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0];

    #[test]
    fn draws_follow_the_filtered_distribution() {
        let n = 20_000;
        // 99.9% quantile of chi-square with ≤ 7 degrees of freedom is 24.3.
        for params in [
            SamplerParams {
                temperature: 1.0,
                top_k: 0,
                top_p: 1.0,
                seed: 1,
                ..Default::default()
            },
            SamplerParams {
                temperature: 0.5,
                top_k: 0,
                top_p: 1.0,
                seed: 2,
                ..Default::default()
            },
            SamplerParams {
                temperature: 1.0,
                top_k: 3,
                top_p: 1.0,
                seed: 3,
                ..Default::default()
            },
            SamplerParams {
                temperature: 1.0,
                top_k: 0,
                top_p: 0.7,
                seed: 4,
                ..Default::default()
            },
            SamplerParams {
                temperature: 2.0,
                top_k: 5,
                top_p: 0.9,
                seed: 5,
                ..Default::default()
            },
        ] {
            let probs = logits_to_probs(&LOGITS, &params);
            let counts = histogram(params, &LOGITS, n);
            for (c, p) in counts.iter().zip(&probs) {
                if *p == 0.0 {
                    assert_eq!(*c, 0, "{params:?}: a filtered-out token was drawn");
                }
            }
            let stat = chi_square(&counts, &probs, n);
            assert!(stat < 24.3, "{params:?}: chi-square {stat}");

            // The test has power: the same draws against the unfiltered distribution fail.
            let plain = softmax(&LOGITS);
            if probs.iter().zip(&plain).any(|(a, b)| (a - b).abs() > 0.02) {
                let wrong = chi_square(&counts, &plain, n);
                assert!(
                    wrong > 100.0 || counts.iter().zip(&plain).any(|(&c, &p)| c == 0 && p > 0.01),
                    "{params:?}: {wrong}"
                );
            }
        }
    }

    #[test]
    fn greedy_is_deterministic_and_seeds_reproduce() {
        let g = SamplerParams::greedy(1.0);
        assert!(histogram(g, &LOGITS, 100)[0] == 100);
        let p = SamplerParams {
            seed: 42,
            ..Default::default()
        };
        assert_eq!(histogram(p, &LOGITS, 500), histogram(p, &LOGITS, 500));
        let q = SamplerParams {
            seed: 43,
            ..Default::default()
        };
        assert_ne!(histogram(p, &LOGITS, 500), histogram(q, &LOGITS, 500));
    }

    #[test]
    fn cfg_interval_matches_the_official_step_rule() {
        let p = SamplerParams {
            cfg_scale: 4.0,
            cfg_interval: 5,
            ..Default::default()
        };
        let active: Vec<bool> = (0..10).map(|i| p.cfg_active(i)).collect();
        assert_eq!(
            active,
            [
                true, true, true, true, true, true, true, false, false, false
            ]
        );
        assert!(
            !SamplerParams {
                cfg_scale: 1.0,
                ..Default::default()
            }
            .cfg_active(0)
        );
        assert!(
            SamplerParams {
                cfg_scale: 2.0,
                cfg_interval: -1,
                ..Default::default()
            }
            .cfg_active(255)
        );
    }

    #[test]
    fn bad_settings_are_rejected() {
        let ok = SamplerParams::default();
        assert!(ok.validate().is_ok());
        assert!(
            SamplerParams {
                temperature: 0.0,
                ..ok
            }
            .validate()
            .is_err()
        );
        assert!(
            SamplerParams {
                temperature: f32::NAN,
                ..ok
            }
            .validate()
            .is_err()
        );
        assert!(SamplerParams { top_p: 0.0, ..ok }.validate().is_err());
        assert!(SamplerParams { top_p: 1.5, ..ok }.validate().is_err());
        assert!(
            SamplerParams {
                cfg_scale: -1.0,
                ..ok
            }
            .validate()
            .is_err()
        );
        assert!(
            SamplerParams {
                cfg_interval: -2,
                ..ok
            }
            .validate()
            .is_err()
        );
    }
}
