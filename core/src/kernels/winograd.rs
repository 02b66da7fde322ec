//! Winograd's F(4×4, 3×3) for the tokenizer's 3×3 stride-1 convolutions on the CPU (see the
//! parent module): the kernels' and the tiles' transforms, the 36 products, the output
//! transform, over bands of tile rows.

use rayon::prelude::*;

use super::super::matmul::gemm_into;
use super::{ConvShape, Out};

/// F(4×4, 3×3)'s `G` (interpolation points 0, ±1, ±2, ∞; Lavin & Gray 2016).
const G4: [[f32; 3]; 6] = [
    [0.25, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// `Bᵀ q` for six values `q` of a tile's row or column (`Bᵀ` of F(4×4, 3×3)).
#[inline(always)]
fn bt6(q: [f32; 6]) -> [f32; 6] {
    let [q0, q1, q2, q3, q4, q5] = q;
    [
        4.0 * q0 - 5.0 * q2 + q4,
        -4.0 * q1 - 4.0 * q2 + q3 + q4,
        4.0 * q1 - 4.0 * q2 - q3 + q4,
        -2.0 * q1 - q2 + 2.0 * q3 + q4,
        2.0 * q1 - q2 - 2.0 * q3 + q4,
        4.0 * q1 - 5.0 * q3 + q5,
    ]
}

/// `Aᵀ m` for six values (`Aᵀ` of F(4×4, 3×3)).
#[inline(always)]
fn at6(m: [f32; 6]) -> [f32; 4] {
    let [m0, m1, m2, m3, m4, m5] = m;
    let (s12, d12, s34, d34) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
    [
        m0 + s12 + s34,
        d12 + 2.0 * d34,
        s12 + 4.0 * s34,
        d12 + 8.0 * d34 + m5,
    ]
}

/// The kernels transformed for F(4×4, 3×3): `u[o][ξ][c]` for the 36 positions ξ of a 6×6 tile,
/// `U = G g Gᵀ`, taken over all input channels of one output at once (each output's rows
/// written one after the other; the products read `U[ξ]` as rows of stride 36·c).
fn winograd_weights(w: &[f32], o: usize, c: usize) -> Vec<f32> {
    let mut u = vec![0.0f32; 36 * o * c];
    let out = Out(u.as_mut_ptr());
    (0..o).into_par_iter().for_each_init(Vec::new, |g, oi| {
        g.resize(27 * c, 0.0);
        // Rows (ξ, oi) of u are written by the task of oi alone.
        weights_row_simd(w, oi, c, g, out)
    });
    u
}

simd_fn!(
    /// [`weights_row`] for the CPU's SIMD.
    fn weights_row_simd(w: &[f32], oi: usize, c: usize, g: &mut [f32], out: Out) => weights_row
);

simd_fn!(
    /// [`wino_band`] for the CPU's SIMD.
    fn wino_band_simd(job: &WinoJob<'_>, b: usize, band: usize, sc: &mut WinoScratch) => wino_band
);

/// Output `oi`'s 36 transformed rows `u[oi][ξ][·]`: `G g` (6 × 3 combinations of the 9
/// weights), then `(G g) Gᵀ`, each over all input channels (contiguous, so they vectorise).
#[inline(always)]
fn weights_row(w: &[f32], oi: usize, c: usize, g: &mut [f32], out: Out) {
    let (raw, gg) = g.split_at_mut(9 * c);
    // raw[kl][c]: the 9 weights of output oi, one row per kernel position.
    for ci in 0..c {
        for kl in 0..9 {
            raw[kl * c + ci] = w[(oi * c + ci) * 9 + kl];
        }
    }
    // gg[i·3 + l][c] = Σ_k G[i][k] g[k][l].
    for i in 0..6 {
        for l in 0..3 {
            let dst = &mut gg[(i * 3 + l) * c..(i * 3 + l + 1) * c];
            let (g0, g1, g2) = (
                &raw[l * c..(l + 1) * c],
                &raw[(3 + l) * c..(4 + l) * c],
                &raw[(6 + l) * c..(7 + l) * c],
            );
            let [k0, k1, k2] = G4[i];
            for (((d, &a), &b), &e) in dst.iter_mut().zip(g0).zip(g1).zip(g2) {
                *d = k0 * a + k1 * b + k2 * e;
            }
        }
    }
    for i in 0..6 {
        let (r0, r1, r2) = (
            &gg[(i * 3) * c..(i * 3 + 1) * c],
            &gg[(i * 3 + 1) * c..(i * 3 + 2) * c],
            &gg[(i * 3 + 2) * c..(i * 3 + 3) * c],
        );
        for j in 0..6 {
            let [k0, k1, k2] = G4[j];
            // SAFETY: row (ξ, oi) of u belongs to the caller's task.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(out.ptr().add((oi * 36 + i * 6 + j) * c), c)
            };
            for (((d, &a), &b), &e) in dst.iter_mut().zip(r0).zip(r1).zip(r2) {
                *d = k0 * a + k1 * b + k2 * e;
            }
        }
    }
}

/// What every band of one Winograd convolution shares.
struct WinoJob<'a> {
    x: &'a [f32],
    s: ConvShape,
    u: &'a [f32],
    bias: Option<&'a [f32]>,
    add: Option<&'a [f32]>,
    out: Out,
    /// Tile rows a band.
    rows: usize,
    /// Tiles down and across.
    th: usize,
    tw: usize,
}

#[derive(Default)]
struct WinoScratch {
    v: Vec<f32>,
    m: Vec<f32>,
    d: Vec<f32>,
    r: Vec<f32>,
}

/// F(4×4, 3×3) for a 3×3 stride-1 "same" convolution, over bands of tile rows.
pub(super) fn winograd(
    x: &[f32],
    s: &ConvShape,
    w: &[f32],
    bias: Option<&[f32]>,
    add: Option<&[f32]>,
    out: Out,
) {
    let (th, tw) = (s.h.div_ceil(4), s.w.div_ceil(4));
    let u = winograd_weights(w, s.o, s.c);
    // About 128 tiles a band, and enough bands for every core, but not under 16 tiles (one
    // panel of the product) while the image has them.
    let mut rows = (128 / tw).clamp(1, th);
    let threads = rayon::current_num_threads();
    while rows > 1 && (rows / 2) * tw >= 16 && s.batch * th.div_ceil(rows) < 4 * threads {
        rows = rows.div_ceil(2);
    }
    let bands = th.div_ceil(rows);
    let job = WinoJob {
        x,
        s: *s,
        u: &u,
        bias,
        add,
        out,
        rows,
        th,
        tw,
    };
    let jobs: Vec<(usize, usize)> = (0..s.batch)
        .flat_map(|b| (0..bands).map(move |band| (b, band)))
        .collect();
    jobs.into_par_iter()
        .for_each_init(WinoScratch::default, |sc, (b, band)| {
            // Each band writes its own output rows (see `wino_band`).
            wino_band_simd(&job, b, band, sc)
        });
}

/// Lanes of a band's transforms at a time: 16, held in local arrays that the compiler keeps in
/// vector registers.
const LANES: usize = 16;

/// `y[·][t] = f(x[·][t])` for every `t < y[0].len()` (every slice at least that long).
#[inline(always)]
fn map6<const N: usize>(x: [&[f32]; 6], mut y: [&mut [f32]; N], f: fn([f32; 6]) -> [f32; N]) {
    let n = y[0].len();
    let mut t = 0;
    while t + LANES <= n {
        let a: [[f32; LANES]; 6] =
            std::array::from_fn(|i| x[i][t..t + LANES].try_into().expect("a block of lanes"));
        let r = block(a, f);
        for (y, r) in y.iter_mut().zip(&r) {
            y[t..t + LANES].copy_from_slice(r);
        }
        t += LANES;
    }
    for t in t..n {
        let v = f(std::array::from_fn(|i| x[i][t]));
        for (y, v) in y.iter_mut().zip(v) {
            y[t] = v;
        }
    }
}

/// `y[·][t] = f(y[·][t])` for every `t < y[0].len()`.
#[inline(always)]
fn map6_in_place(mut y: [&mut [f32]; 6], f: fn([f32; 6]) -> [f32; 6]) {
    let n = y[0].len();
    let mut t = 0;
    while t + LANES <= n {
        let a: [[f32; LANES]; 6] =
            std::array::from_fn(|i| y[i][t..t + LANES].try_into().expect("a block of lanes"));
        let r = block(a, f);
        for (y, r) in y.iter_mut().zip(&r) {
            y[t..t + LANES].copy_from_slice(r);
        }
        t += LANES;
    }
    for t in t..n {
        let v = f(std::array::from_fn(|i| y[i][t]));
        for (y, v) in y.iter_mut().zip(v) {
            y[t] = v;
        }
    }
}

/// `f` lane by lane over a block.
#[inline(always)]
fn block<const N: usize>(a: [[f32; LANES]; 6], f: fn([f32; 6]) -> [f32; N]) -> [[f32; LANES]; N] {
    let mut r = [[0.0f32; LANES]; N];
    for l in 0..LANES {
        let v = f(std::array::from_fn(|i| a[i][l]));
        for (r, v) in r.iter_mut().zip(v) {
            r[l] = v;
        }
    }
    r
}

/// One band of tile rows of image `b`: input transform, the 36 products, output transform.
#[inline(always)]
fn wino_band(job: &WinoJob<'_>, b: usize, band: usize, sc: &mut WinoScratch) {
    let s = &job.s;
    let (h, wd, c, o) = (s.h, s.w, s.c, s.o);
    let (tw, plane) = (job.tw, s.h * s.w);
    let t0 = band * job.rows;
    let t1 = (t0 + job.rows).min(job.th);
    let nt = (t1 - t0) * tw;
    // A tile row's six input rows, each held as four phases: ph[r][t] = padded[4t + r], for t
    // in 0..=tw (the padded row has one zero column left and zeros right).
    let pt = tw + 1;
    sc.v.resize(36 * c * nt, 0.0);
    sc.m.resize(36 * o * nt, 0.0);
    sc.d.resize(6 * 4 * pt, 0.0);
    sc.r.resize(4 * 6 * tw, 0.0);
    let img = &job.x[b * c * plane..(b + 1) * c * plane];
    let stride = c * nt;
    // Input transform: V[ξ][c][t] = (Bᵀ d B)[ξ].
    for ci in 0..c {
        let src = &img[ci * plane..(ci + 1) * plane];
        for tr in t0..t1 {
            let d = &mut sc.d[..24 * pt];
            // Rows 4·tr − 1 .. 4·tr + 5 of the zero-padded image, by phase: padded column
            // p = x + 1 goes to phase p % 4, entry p / 4.
            for i in 0..6 {
                let yy = (4 * tr + i) as isize - 1;
                let phased = &mut d[i * 4 * pt..(i + 1) * 4 * pt];
                if yy < 0 || yy as usize >= h {
                    phased.fill(0.0);
                    continue;
                }
                let row = &src[yy as usize * wd..][..wd];
                // Only the padding is zeroed: in phase r, the entries before column 1 and
                // after column wd.
                for (r, ph) in phased.chunks_exact_mut(pt).enumerate() {
                    let first = usize::from(r == 0);
                    let last = (wd - r) / 4;
                    ph[..first].fill(0.0);
                    ph[last + 1..].fill(0.0);
                }
                let (d0, rest) = phased.split_at_mut(pt);
                let (d1, rest) = rest.split_at_mut(pt);
                let (d2, d3) = rest.split_at_mut(pt);
                let quads = row.chunks_exact(4);
                let tail = quads.remainder();
                let n = wd / 4;
                for (t, q) in quads.enumerate() {
                    d1[t] = q[0];
                    d2[t] = q[1];
                    d3[t] = q[2];
                    d0[t + 1] = q[3];
                }
                let phases = [&mut *d1, &mut *d2, &mut *d3];
                for (r, &v) in tail.iter().enumerate() {
                    phases[r][n] = v;
                }
            }
            // Bᵀ over the six rows, phase by phase (contiguous): e replaces d in place.
            for r in 0..4 {
                let mut rows = d.chunks_exact_mut(pt).skip(r).step_by(4);
                let q = [(); 6].map(|_| rows.next().expect("six rows of phase r"));
                map6_in_place(q, bt6);
            }
            // Then along each row: tile t reads padded columns 4t .. 4t + 5, that is phases
            // 0..3 at t and phases 0, 1 at t + 1.
            let at = ci * nt + (tr - t0) * tw;
            for i in 0..6 {
                let ph = |r: usize| &d[(i * 4 + r) * pt..(i * 4 + r + 1) * pt];
                let (p0, p1, p2, p3) = (ph(0), ph(1), ph(2), ph(3));
                let base = i * 6 * stride + at;
                let (v0, rest) = sc.v[base..].split_at_mut(stride);
                let (v1, rest) = rest.split_at_mut(stride);
                let (v2, rest) = rest.split_at_mut(stride);
                let (v3, rest) = rest.split_at_mut(stride);
                let (v4, rest) = rest.split_at_mut(stride);
                let v5 = &mut rest[..tw];
                let (v0, v1, v2, v3, v4) = (
                    &mut v0[..tw],
                    &mut v1[..tw],
                    &mut v2[..tw],
                    &mut v3[..tw],
                    &mut v4[..tw],
                );
                map6(
                    [
                        &p0[..tw],
                        &p1[..tw],
                        &p2[..tw],
                        &p3[..tw],
                        &p0[1..tw + 1],
                        &p1[1..tw + 1],
                    ],
                    [v0, v1, v2, v3, v4, v5],
                    bt6,
                );
            }
        }
    }
    // The 36 products: M[ξ] (o × nt) = U[ξ] (o × c) · V[ξ] (c × nt).
    for xi in 0..36 {
        // SAFETY: M[ξ] is o × nt row-major, V[ξ] c × nt row-major, in live buffers.
        unsafe {
            gemm_into(
                sc.m.as_mut_ptr().add(xi * o * nt),
                nt,
                job.u[xi * c..].as_ptr(),
                36 * c,
                sc.v.as_ptr().add(xi * c * nt),
                nt,
                o,
                nt,
                c,
            );
        }
    }
    // Output transform: Y = Aᵀ M A, plus bias and add, one tile row at a time.
    let on = o * nt;
    for oc in 0..o {
        let base_b = job.bias.map_or(0.0, |bs| bs[oc]);
        let at = (b * o + oc) * plane;
        for tr in t0..t1 {
            let first = oc * nt + (tr - t0) * tw;
            // r[(i·6 + j)·tw + t] = (Aᵀ M)[i][j] of tile t.
            for j in 0..6 {
                let m = |k: usize| &sc.m[(k * 6 + j) * on + first..][..tw];
                let ms = [m(0), m(1), m(2), m(3), m(4), m(5)];
                let (r0, rest) = sc.r[j * tw..].split_at_mut(6 * tw);
                let (r1, rest) = rest.split_at_mut(6 * tw);
                let (r2, rest) = rest.split_at_mut(6 * tw);
                let (r0, r1, r2, r3) =
                    (&mut r0[..tw], &mut r1[..tw], &mut r2[..tw], &mut rest[..tw]);
                map6(ms, [r0, r1, r2, r3], at6);
            }
            for i in 0..4 {
                let yy = 4 * tr + i;
                if yy >= h {
                    break;
                }
                let i0 = at + yy * wd;
                // SAFETY: output rows 4·t0 .. 4·t1 of image b belong to this band.
                let dst = unsafe { std::slice::from_raw_parts_mut(job.out.ptr().add(i0), wd) };
                let r = &sc.r[i * 6 * tw..(i + 1) * 6 * tw];
                let mut cols = r.chunks_exact(tw);
                let [c0, c1, c2, c3, c4, c5] =
                    [(); 6].map(|_| cols.next().expect("six columns of (Aᵀ M)"));
                let full = wd / 4;
                let (body, tail) = dst.split_at_mut(4 * full);
                match job.add {
                    Some(a) => {
                        let (ab, at_) = a[i0..i0 + wd].split_at(4 * full);
                        for (t, (o4, a4)) in
                            body.chunks_exact_mut(4).zip(ab.chunks_exact(4)).enumerate()
                        {
                            let v = at6([c0[t], c1[t], c2[t], c3[t], c4[t], c5[t]]);
                            for jj in 0..4 {
                                o4[jj] = v[jj] + base_b + a4[jj];
                            }
                        }
                        if full < tw {
                            let t = full;
                            let v = at6([c0[t], c1[t], c2[t], c3[t], c4[t], c5[t]]);
                            for (jj, (o, a)) in tail.iter_mut().zip(at_).enumerate() {
                                *o = v[jj] + base_b + a;
                            }
                        }
                    }
                    None => {
                        for (t, o4) in body.chunks_exact_mut(4).enumerate() {
                            let v = at6([c0[t], c1[t], c2[t], c3[t], c4[t], c5[t]]);
                            for jj in 0..4 {
                                o4[jj] = v[jj] + base_b;
                            }
                        }
                        if full < tw {
                            let t = full;
                            let v = at6([c0[t], c1[t], c2[t], c3[t], c4[t], c5[t]]);
                            for (jj, o) in tail.iter_mut().enumerate() {
                                *o = v[jj] + base_b;
                            }
                        }
                    }
                }
            }
        }
    }
}
