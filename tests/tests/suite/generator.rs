//! Behaviour of the generator beyond parity: batches of mixed settings equal their samples run
//! alone, seeds reproduce, cancel is prompt and leaves the generator reusable, prefixes resume.

use std::sync::atomic::{AtomicBool, Ordering};

use llamagen::config::GptConfig;
use llamagen::generate::{EventDetail, Generator, Observer, Request, TokenEvent};
use llamagen::gpt::Transformer;
use llamagen::sampling::SamplerParams;

type B = llamagen::backend::Cpu;

fn tiny_model() -> Transformer<B> {
    let cfg = GptConfig {
        dim: 64,
        n_layer: 2,
        n_head: 4,
        vocab_size: 64,
        num_classes: 5,
        block_size: 16,
        ..GptConfig::default()
    };
    let mut model = Transformer::init(&cfg, &Default::default()).unwrap();
    // The official initialisation zeroes the head (uniform logits); a random head makes the
    // condition and the guidance matter.
    model.output = burn::nn::LinearConfig::new(64, 64)
        .with_bias(false)
        .init(&Default::default());
    model
}

fn params(cfg_scale: f32, temperature: f32, seed: u64) -> SamplerParams {
    SamplerParams {
        cfg_scale,
        temperature,
        top_k: 0,
        seed,
        ..SamplerParams::default()
    }
}

#[test]
fn a_batch_with_per_sample_settings_equals_each_sample_alone() {
    let model = tiny_model();
    let generator = Generator::new(&model);
    // A 2 × 2 grid of CFG scale × temperature, plus one sample without guidance: one batch.
    let batch: Vec<Request> = [(1.0, 1.0), (4.0, 1.0), (1.0, 2.0), (4.0, 0.5), (2.0, 1.5)]
        .iter()
        .enumerate()
        .map(|(i, &(c, t))| Request::class(i % 5, params(c, t, 100 + i as u64)))
        .collect();
    let together = generator.generate(&batch, &mut (), None).unwrap();
    assert!(together.is_complete(16));
    for (i, req) in batch.iter().enumerate() {
        let alone = generator
            .generate(std::slice::from_ref(req), &mut (), None)
            .unwrap();
        assert_eq!(alone.tokens[0], together.tokens[i], "sample {i}");
    }
}

#[test]
fn seeds_reproduce_and_differ() {
    let model = tiny_model();
    let generator = Generator::new(&model);
    let run = |seed| {
        generator
            .generate(&[Request::class(1, params(4.0, 1.0, seed))], &mut (), None)
            .unwrap()
            .tokens[0]
            .clone()
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
    let greedy = |_| {
        generator
            .generate(
                &[Request::class(2, SamplerParams::greedy(4.0))],
                &mut (),
                None,
            )
            .unwrap()
            .tokens[0]
            .clone()
    };
    assert_eq!(greedy(0), greedy(1));
}

struct CancelAfter<'a> {
    flag: &'a AtomicBool,
    after: usize,
    events: usize,
}

impl Observer for CancelAfter<'_> {
    fn detail(&self) -> EventDetail {
        EventDetail {
            confidence: true,
            logits: false,
        }
    }
    fn on_token(&mut self, event: &TokenEvent<'_>) {
        self.events += 1;
        let probs = event.probs.expect("confidence requested");
        assert!(probs.iter().all(|p| *p > 0.0 && *p <= 1.0));
        assert!(event.entropy.unwrap().iter().all(|h| *h >= 0.0));
        assert!(event.logits.is_none());
        if event.index + 1 == self.after {
            self.flag.store(true, Ordering::Relaxed);
        }
    }
}

#[test]
fn cancel_stops_between_tokens_and_the_generator_stays_usable() {
    let model = tiny_model();
    let generator = Generator::new(&model);
    let flag = AtomicBool::new(false);
    let mut obs = CancelAfter {
        flag: &flag,
        after: 3,
        events: 0,
    };
    let reqs = [
        Request::class(0, params(4.0, 1.0, 1)),
        Request::class(3, params(4.0, 1.0, 2)),
    ];
    let out = generator.generate(&reqs, &mut obs, Some(&flag)).unwrap();
    assert!(out.cancelled);
    assert_eq!(obs.events, 3);
    assert!(out.tokens.iter().all(|t| t.len() == 3));
    flag.store(false, Ordering::Relaxed);
    let again = generator.generate(&reqs, &mut (), Some(&flag)).unwrap();
    assert!(again.is_complete(16));
    assert_eq!(&again.tokens[0][..3], &out.tokens[0][..]);
}

#[test]
fn resampling_from_a_prefix_keeps_it_and_continues_consistently() {
    let model = tiny_model();
    let generator = Generator::new(&model);
    let greedy = SamplerParams::greedy(3.0);
    let full = generator
        .generate(&[Request::class(4, greedy)], &mut (), None)
        .unwrap();
    for k in [1, 5, 15] {
        let req = Request {
            prefix: full.tokens[0][..k].to_vec(),
            ..Request::class(4, greedy)
        };
        let mut events = Vec::new();
        let mut obs = |e: &TokenEvent<'_>| events.push(e.index);
        let out = generator.generate(&[req], &mut obs, None).unwrap();
        // Greedy decoding continues exactly as the uninterrupted run did.
        assert_eq!(out.tokens[0], full.tokens[0], "prefix {k}");
        assert_eq!(events, (k..16).collect::<Vec<_>>());
        assert!(out.probs[0][..k].iter().all(|p| p.is_nan()));
    }
    // A random re-roll keeps the prefix.
    let req = Request {
        prefix: full.tokens[0][..8].to_vec(),
        ..Request::class(4, params(4.0, 1.5, 9))
    };
    let out = generator.generate(&[req], &mut (), None).unwrap();
    assert_eq!(&out.tokens[0][..8], &full.tokens[0][..8]);
}

#[test]
fn bad_requests_are_errors() {
    let model = tiny_model();
    let generator = Generator::new(&model);
    let ok = params(4.0, 1.0, 0);
    let err = generator
        .generate(&[Request::class(5, ok)], &mut (), None)
        .unwrap_err();
    assert!(err.to_string().contains("class 5 is out of range"), "{err}");
    let err = generator
        .generate(
            &[Request::class(
                0,
                SamplerParams {
                    temperature: 0.0,
                    ..ok
                },
            )],
            &mut (),
            None,
        )
        .unwrap_err();
    assert!(err.to_string().contains("temperature"), "{err}");
    assert!(generator.generate(&[], &mut (), None).is_err());
    let req = Request {
        prefix: vec![70],
        ..Request::class(0, ok)
    };
    assert!(
        generator
            .generate(&[req], &mut (), None)
            .unwrap_err()
            .to_string()
            .contains("vocabulary")
    );
}
