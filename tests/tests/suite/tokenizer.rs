//! The image tokenizer outside its f32 whole-image decode, on the bundled demo tokenizer (real
//! weights): tiled decoding of grids larger than a tile (bounded memory; the blending itself is
//! tested exactly in `llamagen::vq::model`), and half precision on wgpu against f32.

use burn::prelude::*;
use llamagen::backend::Cpu;
use llamagen::bundle::{LoadOptions, ModelBundle};
use llamagen::generate::{Generator, Request};
use llamagen_tests::to_f32;

/// PSNR in dB of `a` against `b`, images in [−1, 1] (peak-to-peak 2).
fn psnr(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mse = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| ((x - y) as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    10.0 * (4.0 / mse.max(1e-20)).log10()
}

/// `n` demo samples (every class in turn, one seed each), their token grids.
fn demo_tokens(bundle: &ModelBundle<Cpu>, n: usize) -> Vec<Vec<u32>> {
    let classes = bundle.gpt.config.num_classes;
    let reqs: Vec<Request> = (0..n)
        .map(|i| {
            let params = llamagen::sampling::SamplerParams {
                seed: 100 + i as u64,
                ..bundle.sampler
            };
            Request::class(i % classes, params)
        })
        .collect();
    Generator::new(&bundle.gpt)
        .generate(&reqs, &mut (), None)
        .unwrap()
        .tokens
}

fn demo() -> ModelBundle<Cpu> {
    let Some(card) = llamagen::bundle::demo_card_path() else {
        panic!("the bundled demo model is missing");
    };
    ModelBundle::<Cpu>::from_card(&card, &Default::default()).unwrap()
}

/// `tiles × tiles` grids of `grid × grid` tokens laid side by side into one grid.
fn stitch(grids: &[Vec<u32>], grid: usize, tiles: usize) -> Vec<u32> {
    let side = grid * tiles;
    let mut out = vec![0; side * side];
    for (i, g) in grids.iter().take(tiles * tiles).enumerate() {
        let (ty, tx) = (i / tiles, i % tiles);
        for y in 0..grid {
            for x in 0..grid {
                out[(ty * grid + y) * side + tx * grid + x] = g[y * grid + x];
            }
        }
    }
    out
}

#[test]
fn tiled_decoding_on_the_demo() {
    let mut bundle = demo();
    let grid = bundle.gpt.config.grid_size();
    let grids = demo_tokens(&bundle, 16);
    // One 4×4 mosaic of demo grids: a 32×32 grid, 256 px with the demo's 8× tokenizer.
    let big = vec![stitch(&grids, grid, 4)];
    let side = 4 * grid;
    let whole = to_f32(llamagen::generate::decode_tokens(&bundle.vq, &big, side));
    // A tile as large as the grid is the whole decode, exactly.
    bundle.vq.set_decode_tile(Some(side));
    let same = to_f32(llamagen::generate::decode_tokens(&bundle.vq, &big, side));
    assert_eq!(same, whole);
    // Tiles smaller than the grid: the shape and range of a decode, every pixel blended. The
    // demo's decoder normalises over, and attends across, its whole grid, so its tiles cannot
    // reproduce the whole decode (the whole decode of this mosaic is itself far from the 16
    // images decoded one by one); the PSNR is printed, not required.
    for tile in [16, 8] {
        bundle.vq.set_decode_tile(Some(tile));
        let tiled = llamagen::generate::decode_tokens(&bundle.vq, &big, side);
        assert_eq!(tiled.dims(), [1, 3, side * 8, side * 8]);
        let tiled = to_f32(tiled);
        assert!(tiled.iter().all(|v| v.is_finite() && v.abs() < 4.0));
        eprintln!(
            "tiles of {tile}×{tile} codes on a {side}×{side} grid: PSNR {:.1} dB against the whole decode",
            psnr(&tiled, &whole)
        );
    }
}

#[cfg(feature = "wgpu")]
#[test]
fn tokenizer_in_half_precision_stays_close_on_wgpu() {
    use llamagen::Precision;
    use llamagen::backend::Wgpu;
    let device = Default::default();
    if Precision::F16.check::<Wgpu>(&device).is_err() {
        panic!("this test needs an adapter with SHADER_F16 (Mesa's lavapipe has it)");
    }
    let cpu = demo();
    let grid = cpu.gpt.config.grid_size();
    // The demo's images (f32 on the CPU) are what the tokenizer reconstructs.
    let images = llamagen::generate::decode_tokens(&cpu.vq, &demo_tokens(&cpu, 8), grid)
        .clamp(-1.0, 1.0)
        .into_data();
    let card = llamagen::bundle::demo_card_path().unwrap();
    let load = |precision| {
        let opts = LoadOptions {
            precision,
            ..LoadOptions::default()
        };
        ModelBundle::<Wgpu>::from_card_with(&card, &opts, &device)
            .unwrap()
            .vq
    };
    let (f32_vq, f16_vq) = (load(Precision::F32), load(Precision::F16));
    assert_eq!(f16_vq.precision(), Precision::F16);
    // The encoders: f16 picks the same codes but where two entries are near-tied.
    let encode = |vq: &llamagen::vq::VqModel<Wgpu>| {
        let (_, codes) = vq.encode(Tensor::from_data(images.clone(), &device));
        codes.into_data().convert::<i64>().to_vec::<i64>().unwrap()
    };
    let (full_codes, half_codes) = (encode(&f32_vq), encode(&f16_vq));
    let agree = full_codes
        .iter()
        .zip(&half_codes)
        .filter(|(a, b)| a == b)
        .count() as f64
        / full_codes.len() as f64;
    // The decoders, on the same codes (the f32 encoder's): a code that flips redraws a whole
    // patch, so comparing encode + decode would measure how many near-ties the images hold
    // (it gave 48.7 dB on one machine, 25.4 on another, for 4 of 512 codes flipped) rather than
    // the precision of the arithmetic.
    let tokens: Vec<Vec<u32>> = full_codes
        .chunks(grid * grid)
        .map(|c| c.iter().map(|&x| x as u32).collect())
        .collect();
    let decode = |vq: &llamagen::vq::VqModel<Wgpu>| {
        to_f32(llamagen::generate::decode_tokens(vq, &tokens, grid))
    };
    let (full, half) = (decode(&f32_vq), decode(&f16_vq));
    let db = psnr(&half, &full);
    eprintln!(
        "demo reconstructions, f16 against f32 on wgpu: decode PSNR {db:.1} dB, codes agree {:.1} %",
        100.0 * agree
    );
    assert!(db >= 40.0, "{db:.1} dB");
    assert!(agree >= 0.95, "codes agree {:.3}", agree);
}
