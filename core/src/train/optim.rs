//! What the official training scripts do around the optimizer step that burn's optimizers do
//! not: clipping by the norm of ALL gradients together (`torch.nn.utils.clip_grad_norm_`), weight
//! decay only on tensors of two or more dimensions (`creat_optimizer`), and an EMA copy.

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::{GradientsParams, MultiGradientsParams};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

/// The global L2 norm of the gradients of `module`'s parameters.
pub fn grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &GradientsParams,
) -> f32 {
    struct Norm<'a, B: AutodiffBackend> {
        grads: &'a GradientsParams,
        sum: Option<Tensor<B::InnerBackend, 1>>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Norm<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
                let s = g.powi_scalar(2).sum();
                self.sum = Some(match self.sum.take() {
                    Some(acc) => acc + s,
                    None => s,
                });
            }
        }
    }
    let mut v = Norm::<B> { grads, sum: None };
    module.visit(&mut v);
    v.sum
        .map(|s| s.into_scalar().elem::<f32>().sqrt())
        .unwrap_or(0.0)
}

/// Gradients split for the official AdamW set-up: `decay` holds tensors of rank ≥ 2 (matrices,
/// convolutions, embeddings), `no_decay` the rest (norm weights, biases).
pub struct SplitGrads {
    pub decay: GradientsParams,
    pub no_decay: GradientsParams,
}

/// Scales every gradient by `scale` and splits them by rank (see [`SplitGrads`]).
pub fn scale_and_split<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: GradientsParams,
    scale: f32,
) -> SplitGrads {
    struct Split<B: AutodiffBackend> {
        grads: GradientsParams,
        out: SplitGrads,
        scale: f32,
        _b: std::marker::PhantomData<B>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Split<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
                let g = if self.scale != 1.0 { g * self.scale } else { g };
                if D >= 2 {
                    self.out.decay.register(param.id, g);
                } else {
                    self.out.no_decay.register(param.id, g);
                }
            }
        }
    }
    let mut v = Split::<B> {
        grads,
        out: SplitGrads {
            decay: GradientsParams::new(),
            no_decay: GradientsParams::new(),
        },
        scale,
        _b: std::marker::PhantomData,
    };
    module.visit(&mut v);
    v.out
}

/// `clip_grad_norm_(max_norm)`: the factor to multiply all gradients by (1 when under the
/// limit), and the norm before clipping.
pub fn clip_factor(norm: f32, max_norm: f32) -> f32 {
    if max_norm > 0.0 && norm.is_finite() && norm > max_norm {
        max_norm / (norm + 1e-6)
    } else {
        1.0
    }
}

/// Scales every gradient by `scale` (whatever its rank).
pub fn scale_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    mut grads: GradientsParams,
    scale: f32,
) -> GradientsParams {
    if scale == 1.0 {
        return grads;
    }
    struct Scale<'a, B: AutodiffBackend> {
        grads: &'a mut GradientsParams,
        scale: f32,
        _b: std::marker::PhantomData<B>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
                self.grads.register(param.id, g * self.scale);
            }
        }
    }
    module.visit(&mut Scale::<B> {
        grads: &mut grads,
        scale,
        _b: std::marker::PhantomData,
    });
    grads
}

/// Marks every float parameter as trained. A module brought onto the autodiff backend with
/// `from_inner` takes each parameter's own flag, and a clone of a module on the inner backend
/// has lost it (burn reads it back from the inner tensor, which never requires gradients): such
/// a module would silently receive no gradients.
pub fn require_grad<B: AutodiffBackend, M: Module<B>>(module: M) -> M {
    struct Mark;
    impl<B: AutodiffBackend> ModuleMapper<B> for Mark {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            // A fresh leaf of the same values (marking the tensor itself fails on one that
            // burn no longer counts as a leaf).
            p.map(|t| Tensor::from_inner(t.inner()).require_grad())
        }
    }
    module.map(&mut Mark)
}

/// Runs every lazy parameter initializer now. burn initialises parameters on first use, and
/// a clone taken before that initialises on its own, with other random values: replicas and
/// copies must be taken from a materialised module.
pub fn materialize<B: Backend, M: Module<B>>(module: M) -> M {
    struct Touch;
    impl<B: Backend> ModuleVisitor<B> for Touch {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let _ = param.val();
        }
    }
    module.visit(&mut Touch);
    module
}

/// Exponential moving average of a model's parameters (`update_ema` of the official scripts):
/// `ema ← decay · ema + (1 − decay) · param`.
pub fn update_ema<B: Backend, M: Module<B>>(ema: M, current: &M, decay: f64) -> M {
    struct Collect<B: Backend> {
        tensors: Vec<burn::tensor::TensorPrimitive<B>>,
    }
    impl<B: Backend> ModuleVisitor<B> for Collect<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.tensors.push(param.val().into_primitive());
        }
    }
    struct Blend<B: Backend> {
        tensors: std::vec::IntoIter<burn::tensor::TensorPrimitive<B>>,
        decay: f64,
    }
    impl<B: Backend> ModuleMapper<B> for Blend<B> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let cur =
                Tensor::<B, D>::from_primitive(self.tensors.next().expect("same module structure"));
            let decay = self.decay;
            param.map(|t| t * decay + cur * (1.0 - decay))
        }
    }
    let mut c = Collect::<B> {
        tensors: Vec::new(),
    };
    current.visit(&mut c);
    ema.map(&mut Blend {
        tensors: c.tensors.into_iter(),
        decay,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;
    use burn::nn::{Linear, LinearConfig};

    type AB = crate::train::Autodiff<Cpu>;

    #[test]
    fn global_norm_and_split_by_rank() {
        let device = Default::default();
        let lin: Linear<AB> = LinearConfig::new(3, 2).init(&device);
        let x = Tensor::<AB, 2>::ones([4, 3], &device);
        let loss = lin.forward(x).sum();
        let grads = GradientsParams::from_grads(loss.backward(), &lin);
        // d(sum(xW + b))/dW = 4 for every entry (3×2), d/db = 4 (2): norm = 4·√8.
        let norm = grad_norm(&lin, &grads);
        assert!((norm - 4.0 * 8f32.sqrt()).abs() < 1e-4, "{norm}");
        let f = clip_factor(norm, 1.0);
        let split = scale_and_split(&lin, grads, f);
        assert_eq!(split.decay.len(), 1);
        assert_eq!(split.no_decay.len(), 1);
        let w = split.decay.get::<Cpu, 2>(lin.weight.id).unwrap();
        let expect = 4.0 / (4.0 * 8f32.sqrt());
        assert!((w.into_data().to_vec::<f32>().unwrap()[0] - expect).abs() < 1e-4);
    }

    #[test]
    fn ema_blends() {
        let device = Default::default();
        let a: Linear<Cpu> = materialize(LinearConfig::new(2, 2).init(&device));
        let b = a.clone().map(&mut ZeroMapper);
        let e = update_ema(a.clone(), &b, 0.75);
        let av = a.weight.val().into_data().to_vec::<f32>().unwrap();
        let ev = e.weight.val().into_data().to_vec::<f32>().unwrap();
        for (x, y) in av.iter().zip(&ev) {
            assert!((x * 0.75 - y).abs() < 1e-6);
        }
    }

    struct ZeroMapper;
    impl<B: Backend> ModuleMapper<B> for ZeroMapper {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            p.map(|t| t.zeros_like())
        }
    }
}

/// Sums the shards' gradients parameter by parameter with burn's `MultiGradientsParams`; each
/// sum is brought to its parameter's device (burn adds them on a device of its choosing among
/// the replicas'), so the norm, clipping and optimizer step that follow see one device.
pub fn combine_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    multi: MultiGradientsParams,
) -> GradientsParams {
    struct Combine<B: AutodiffBackend> {
        multi: MultiGradientsParams,
        out: GradientsParams,
        _b: std::marker::PhantomData<B>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Combine<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some((g, _device)) = self.multi.remove::<B::InnerBackend, D>(param.id) {
                self.out.register(param.id, g.to_device(&param.device()));
            }
        }
    }
    let mut v = Combine::<B> {
        multi,
        out: GradientsParams::new(),
        _b: std::marker::PhantomData,
    };
    module.visit(&mut v);
    v.out
}
