//! Forward + backward of every "same" convolution shape in the demo tokenizer (ch 32 × [1, 2, 2,
//! 4], one residual block, z 64, batch 4 per replica), on `Autodiff<Flex>`: burn's own
//! convolution against `train::cpu_conv`. Prints the median of 7 runs per shape, in ms.
//!
//! `cargo bench -p llamagen --features train --bench train_conv`

use std::time::Instant;

use burn::backend::flex::FlexDevice;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2dConfig;
use burn::prelude::*;
use burn::tensor::Distribution;
use llamagen::train::cpu_conv::try_conv2d;

type B = burn::backend::Autodiff<burn::backend::Flex>;

fn median_ms<F: FnMut()>(mut f: F) -> f64 {
    f();
    let mut v: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let dev = FlexDevice;
    // (batch, in, out, side, kernel, input needs a gradient)
    let shapes = [
        (4, 3, 32, 64, 3, false),
        (4, 32, 32, 64, 3, true),
        (4, 32, 64, 32, 3, true),
        (4, 64, 64, 32, 3, true),
        (4, 32, 64, 32, 1, true),
        (4, 64, 64, 16, 3, true),
        (4, 64, 128, 8, 3, true),
        (4, 128, 128, 8, 3, true),
        (4, 128, 128, 8, 1, true),
        (4, 128, 64, 8, 3, true),
        (4, 64, 8, 8, 1, true),
        (4, 8, 64, 8, 1, true),
        (4, 128, 128, 16, 3, true),
        (4, 128, 64, 16, 3, true),
        (4, 128, 64, 16, 1, true),
        (4, 64, 64, 64, 3, true),
        (4, 64, 32, 64, 3, true),
        (4, 64, 32, 64, 1, true),
        (4, 32, 3, 64, 3, true),
    ];
    let (mut total_burn, mut total_ours) = (0.0, 0.0);
    println!("shape (batch×in→out, side, kernel) | burn ms | cpu_conv ms | ratio");
    for (batch, c, o, side, k, grad_x) in shapes {
        let conv = Conv2dConfig::new([c, o], [k, k])
            .with_padding(PaddingConfig2d::Explicit(k / 2, k / 2, k / 2, k / 2))
            .init::<B>(&dev);
        let mut x = Tensor::<B, 4>::random([batch, c, side, side], Distribution::Default, &dev);
        if grad_x {
            x = x.require_grad();
        }
        let burn = median_ms(|| {
            let g = conv.forward(x.clone()).sum().backward();
            let _ = conv.weight.grad(&g).expect("weight grad").into_data();
        });
        let ours = median_ms(|| {
            let y = try_conv2d(&conv, &x).expect("a same convolution on Autodiff<Flex>");
            let g = y.sum().backward();
            let _ = conv.weight.grad(&g).expect("weight grad").into_data();
        });
        total_burn += burn;
        total_ours += ours;
        println!(
            "{batch}×{c}→{o}, {side}², {k}×{k} | {burn:.2} | {ours:.2} | {:.2}×",
            burn / ours
        );
    }
    println!(
        "all shapes | {total_burn:.1} | {total_ours:.1} | {:.2}×",
        total_burn / total_ours
    );
}
