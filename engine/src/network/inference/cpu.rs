//! The folded network on the CPU in f32, single-threaded and without GPU
//! types: the browser's fallback where WebGPU is missing.
//!
//! Each convolution is, per image, the matrix product `y[co, p] = bias[co] +
//! sum_k w[co, k] * x[k, p]` over taps `k = (ci, kh, kw)` and output pixels
//! `p = (oh, ow)`. The weights are packed once, on the network's first CPU
//! inference, into panels of `MR` output channels interleaved per `k`. The
//! product runs over `MR x NR` tiles whose accumulators stay in registers
//! (plain Rust over fixed-size arrays, which LLVM turns into SSE natively and
//! SIMD128 on wasm), a block of `KC` `k`s at a time so a block of weights
//! stays in cache; the stores add the bias (first block), the residual and
//! the ReLU (last block).
//! The `NR` pixels of a tile come either straight from a zero-padded copy of
//! the image (stride 1, `direct`: `NR` consecutive pixels of an output row
//! read `NR` consecutive inputs per tap), or from the image unrolled (im2col)
//! into panels of `NR` pixels per `k` (`unrolled`). Channel and pixel counts
//! that are not multiples of the tile are padded in the panels and tiles and
//! left out of the store.

use super::{FoldedConv, FoldedNetwork, FoldedOp};
use crate::layers::conv2d::Conv2dShape;
use crate::layers::linear::LinearShape;
use crate::layers::pool::{GlobalAvgPoolShape, MaxPoolShape};
use crate::layers::residual::ShortcutAShape;
use std::fmt;
use std::ops::Range;
use std::sync::{Mutex, OnceLock};

/// Output channels per tile: each `k` broadcasts one weight per row.
const MR: usize = 4;
/// Pixels per tile: two 4-lane vectors. `MR * NR / 4` accumulators plus the
/// operands fit the 16 vector registers of SSE and of V8's SIMD128 on x64.
const NR: usize = 8;
/// The most `k`s per pass over the tiles: a block of packed weights (up to
/// `out_channels * KC` values) stays in L2 while every pixel panel streams by,
/// and one pixel panel's block (`NR * KC`) stays in L1.
const KC: usize = 256;
/// About how many values of an unrolled image [`im2col`] writes at a time
/// (512 KiB: in L2, with a block of weights).
const UNROLLED_BLOCK: usize = 128 * 1024;

/// What [`infer`] builds on a network's first CPU inference and then reuses:
/// the packed weights (from the ops as they are then) and the buffers. Not
/// part of the network's value: equality ignores it and a clone gets fresh
/// buffers.
#[derive(Default)]
pub(super) struct Cache {
    packed: OnceLock<Packed>,
    scratch: Mutex<Scratch>,
}

impl Clone for Cache {
    fn clone(&self) -> Self {
        Self {
            packed: self.packed.clone(),
            scratch: Mutex::default(),
        }
    }
}

impl PartialEq for Cache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let packed = self.packed.get().map(|p| p.convs.iter().flatten().count());
        f.debug_struct("Cache")
            .field("packed_convs", &packed)
            .finish_non_exhaustive()
    }
}

/// The network's constant data in the CPU path's layout.
#[derive(Clone)]
struct Packed {
    /// By op index: the packed weights of each convolution.
    convs: Vec<Option<PackedWeights>>,
    /// By op index: the activations that op reads last.
    releases: Vec<Vec<usize>>,
}

impl Packed {
    fn new(net: &FoldedNetwork) -> Self {
        let last_reads = net.last_reads();
        let mut releases = vec![Vec::new(); net.ops.len()];
        for (t, last) in last_reads.iter().enumerate() {
            if let Some(i) = *last {
                releases[i].push(t);
            }
        }
        let convs = net
            .ops
            .iter()
            .map(|op| match op {
                FoldedOp::Conv(c) => Some(PackedWeights::new(c)),
                _ => None,
            })
            .collect();
        Self { convs, releases }
    }
}

/// A convolution's weights as `ceil(out_channels / MR)` panels, each `depth`
/// groups of `MR` output channels' weights for one `k` (zero past the last
/// channel).
#[derive(Clone)]
struct PackedWeights {
    panels: Vec<f32>,
    /// `in_channels * kernel^2`.
    depth: usize,
    /// For convolutions run [`direct`]ly, where each `k = (ci, kh, kw)` reads
    /// in the zero-padded image relative to the window's first value; `None`
    /// for those [`unrolled`].
    taps: Option<Vec<usize>>,
}

impl PackedWeights {
    fn new(c: &FoldedConv) -> Self {
        Self::for_path(c, is_direct(&c.shape))
    }

    /// `direct` needs stride 1.
    fn for_path(c: &FoldedConv, direct: bool) -> Self {
        let s = &c.shape;
        let depth = s.in_channels * s.kernel * s.kernel;
        assert_eq!(c.weight.len(), s.out_channels * depth, "folded conv weight length");
        let mut panels = vec![0.0; s.out_channels.div_ceil(MR) * depth * MR];
        for (co, weights) in c.weight.chunks_exact(depth).enumerate() {
            let panel = &mut panels[co / MR * depth * MR..][..depth * MR];
            for (group, &w) in panel.chunks_exact_mut(MR).zip(weights) {
                group[co % MR] = w;
            }
        }
        let (padded_h, padded_w) = (s.in_h + 2 * s.pad, s.in_w + 2 * s.pad);
        let taps = direct.then(|| {
            assert_eq!(s.stride, 1, "only stride-1 convolutions run in place");
            let kernel = s.kernel;
            (0..depth)
                .map(|k| (k / kernel / kernel * padded_h + k / kernel % kernel) * padded_w + k % kernel)
                .collect()
        });
        Self { panels, depth, taps }
    }
}

/// Buffers reused from one inference to the next.
#[derive(Default)]
struct Scratch {
    /// The live activations by tensor id (empty otherwise).
    acts: Vec<Vec<f32>>,
    /// Buffers holding no live activation.
    free: Vec<Vec<f32>>,
    /// One image unrolled for a convolution, in pixel panels.
    cols: Vec<f32>,
    /// One unrolled row (one `k`, every pixel) before it goes to the panels;
    /// the max pool's row maxima.
    row: Vec<f32>,
}

/// The logits (`[batch, classes]`) of `net` for `input`, a batch of NCHW
/// images of `net.input_len()` values.
pub fn infer(net: &FoldedNetwork, input: &[f32]) -> Vec<f32> {
    assert_eq!(input.len(), net.input_len(), "inference input length");
    let packed = net.cpu.packed.get_or_init(|| Packed::new(net));
    // Concurrent calls (or one after a panic) get buffers of their own.
    let mut own = Scratch::default();
    let mut shared = net.cpu.scratch.try_lock();
    let scratch = match &mut shared {
        Ok(shared) => &mut **shared,
        Err(_) => &mut own,
    };
    scratch.run(net, packed, input)
}

impl Scratch {
    fn run(&mut self, net: &FoldedNetwork, packed: &Packed, input: &[f32]) -> Vec<f32> {
        let Self { acts, free, cols, row } = self;
        // Anything still held (after a panic) goes back to the pool.
        free.extend(acts.iter_mut().map(std::mem::take).filter(|a| a.capacity() > 0));
        acts.resize_with(net.tensors.len(), Vec::new);
        acts[net.input] = buffer(free, input.len());
        acts[net.input].copy_from_slice(input);
        for (i, op) in net.ops.iter().enumerate() {
            let mut y = buffer(free, net.tensors[op.output()].iter().product());
            match op {
                FoldedOp::Conv(c) => {
                    let weights = packed.convs[i].as_ref().expect("every convolution is packed");
                    let residual = c.residual.map(|r| acts[r].as_slice());
                    conv(c, weights, &acts[c.x], residual, &mut y, cols, row);
                }
                FoldedOp::ShortcutA { shape, x, .. } => shortcut_a(shape, &acts[*x], &mut y),
                FoldedOp::MaxPool { shape, x, .. } => max_pool(shape, &acts[*x], &mut y, row),
                FoldedOp::GlobalAvgPool { shape, x, .. } => global_avg_pool(shape, &acts[*x], &mut y),
                FoldedOp::Linear {
                    shape, x, weight, bias, ..
                } => linear(shape, &acts[*x], weight, bias, &mut y),
            }
            acts[op.output()] = y;
            for &t in &packed.releases[i] {
                free.push(std::mem::take(&mut acts[t]));
            }
        }
        let logits = acts[net.logits].clone();
        free.push(std::mem::take(&mut acts[net.logits]));
        logits
    }
}

/// A buffer of `len` values from the pool (stale, or zeros where it grew; every
/// op writes all of its output): the smallest that fits, else the largest,
/// grown (so after the first inference nothing is allocated).
fn buffer(free: &mut Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    let fitting = (free.iter().enumerate())
        .filter(|(_, b)| b.capacity() >= len)
        .min_by_key(|(_, b)| b.capacity());
    let pick = fitting.or_else(|| free.iter().enumerate().max_by_key(|(_, b)| b.capacity()));
    let mut b = match pick.map(|(at, _)| at) {
        Some(at) => free.swap_remove(at),
        None => Vec::new(),
    };
    b.resize(len, 0.0);
    b
}

/// The folded convolution of a batch, image by image.
fn conv(
    c: &FoldedConv,
    weights: &PackedWeights,
    x: &[f32],
    residual: Option<&[f32]>,
    y: &mut [f32],
    cols: &mut Vec<f32>,
    row: &mut Vec<f32>,
) {
    let s = &c.shape;
    let pixels = s.out_h() * s.out_w();
    let (in_len, out_len) = (s.in_channels * s.in_h * s.in_w, s.out_channels * pixels);
    assert!(
        x.len() == s.batch * in_len && y.len() == s.batch * out_len && c.bias.len() == s.out_channels,
        "folded conv: x, y or bias length does not fit {s:?}"
    );
    for (b, y) in y.chunks_exact_mut(out_len).enumerate() {
        let x = &x[b * in_len..][..in_len];
        let epilogue = Epilogue {
            bias: &c.bias,
            residual: residual.map(|r| &r[b * out_len..][..out_len]),
            relu: c.relu,
            pixels,
        };
        if let Some(taps) = &weights.taps {
            direct(s, weights, taps, x, &epilogue, y, cols);
            continue;
        }
        // A few output rows at a time, so that their unrolled image stays in
        // cache: whole panels (a multiple of NR rows) but the last.
        let (out_h, out_w) = (s.out_h(), s.out_w());
        let rows = (UNROLLED_BLOCK / weights.depth / out_w).max(1).next_multiple_of(NR);
        for oh in (0..out_h).step_by(rows) {
            let rows = rows.min(out_h - oh);
            let cols_len = (rows * out_w).div_ceil(NR) * weights.depth * NR;
            if cols.len() < cols_len {
                cols.resize(cols_len, 0.0);
            }
            im2col(s, x, oh..oh + rows, &mut cols[..cols_len], row);
            unrolled(
                weights,
                &cols[..cols_len],
                oh * out_w..(oh + rows) * out_w,
                &epilogue,
                y,
            );
        }
    }
}

/// Outputs `o` in `[lo, hi)` (of `out`) whose tap `k` reads inside an input
/// of length `input`: `0 <= o * stride + k - pad < input`.
fn inside(k: usize, input: usize, out: usize, stride: usize, pad: usize) -> (usize, usize) {
    let lo = pad.saturating_sub(k).div_ceil(stride).min(out);
    let hi = if input + pad > k {
        (input + pad - k - 1) / stride + 1
    } else {
        0
    };
    (lo, hi.clamp(lo, out))
}

/// The blocks of at most [`KC`] `k`s (of equal size) the product runs in:
/// `(first k, count)`.
fn blocks(depth: usize) -> impl Iterator<Item = (usize, usize)> {
    let block = depth.div_ceil(depth.div_ceil(KC));
    (0..depth).step_by(block).map(move |k0| (k0, block.min(depth - k0)))
}

/// Stride-1 convolutions skip the unrolling ([`direct`]) unless unrolling
/// needs fewer tiles: direct tiles stay within an output row, unrolled panels
/// run on across rows (14x14 outputs: 28 tiles against 25 panels).
fn is_direct(s: &Conv2dShape) -> bool {
    let (out_h, out_w) = (s.out_h(), s.out_w());
    s.stride == 1 && out_h * out_w.div_ceil(NR) <= (out_h * out_w).div_ceil(NR)
}

/// A stride-1 convolution of one CHW image without unrolling it: the image
/// is copied once into `padded` with its zero border (and `NR` values of
/// slack), where the `NR` pixels of a tile in one output row read, for tap
/// `k`, the `NR` consecutive values at `taps[k]` past the tile's first window.
/// Lanes past the end of an output row read into the next row, and the store
/// drops them.
fn direct(
    s: &Conv2dShape,
    weights: &PackedWeights,
    taps: &[usize],
    x: &[f32],
    epilogue: &Epilogue,
    y: &mut [f32],
    padded: &mut Vec<f32>,
) {
    let (out_h, out_w) = (s.out_h(), s.out_w());
    let (padded_h, padded_w) = (s.in_h + 2 * s.pad, s.in_w + 2 * s.pad);
    padded.clear();
    padded.resize(s.in_channels * padded_h * padded_w + NR, 0.0);
    for (plane, x) in padded
        .chunks_exact_mut(padded_h * padded_w)
        .zip(x.chunks_exact(s.in_h * s.in_w))
    {
        for (row, x) in plane[s.pad * padded_w..]
            .chunks_exact_mut(padded_w)
            .zip(x.chunks_exact(s.in_w))
        {
            row[s.pad..s.pad + s.in_w].copy_from_slice(x);
        }
    }
    // What a tile reads: the taps of its first pixel's window, plus NR - 1.
    let last_tap = taps.iter().copied().max().unwrap_or(0);
    let span = last_tap.checked_add(NR).expect("a tile's span fits in usize");
    for (k0, kc) in blocks(weights.depth) {
        let taps = &taps[k0..k0 + kc];
        let store = epilogue.block(k0, kc, weights.depth);
        for oh in 0..out_h {
            for ow in (0..out_w).step_by(NR) {
                let window = &padded[oh * padded_w + ow..][..span];
                for (ip, a) in weights.panels.chunks_exact(weights.depth * MR).enumerate() {
                    // The clamp changes nothing (no tap is past `last_tap`)
                    // but shows LLVM that no bounds check can fail.
                    let b = (taps.iter()).map(|&t| window[t.min(span - NR)..].first_chunk::<NR>().expect("inside"));
                    let acc = tile(&a[k0 * MR..][..kc * MR], b);
                    store.write(&acc, ip * MR, oh * out_w + ow, NR.min(out_w - ow), y);
                }
            }
        }
    }
}

/// Unrolls output rows `out_rows` of one CHW image into `cols`: for each
/// panel of `NR` of their pixels, for each `k = (ci, kh, kw)`, the `NR` input
/// values tap `k` reads (0 in the padding and past the last pixel). Each `k`'s
/// row of every pixel is built contiguously in `row`, then dealt out to the
/// panels `NR` values at a time.
fn im2col(s: &Conv2dShape, x: &[f32], out_rows: Range<usize>, cols: &mut [f32], row: &mut Vec<f32>) {
    let out_w = s.out_w();
    let panel_len = s.in_channels * s.kernel * s.kernel * NR;
    row.clear();
    row.resize((out_rows.len() * out_w).div_ceil(NR) * NR, 0.0);
    let in_plane = s.in_h * s.in_w;
    for (ci, plane) in x.chunks_exact(in_plane).enumerate() {
        for kh in 0..s.kernel {
            for kw in 0..s.kernel {
                let (lo, hi) = inside(kw, s.in_w, out_w, s.stride, s.pad);
                for (oh, out) in out_rows.clone().zip(row.chunks_exact_mut(out_w)) {
                    let ih = (oh * s.stride + kh).wrapping_sub(s.pad);
                    if ih >= s.in_h || lo == hi {
                        out.fill(0.0);
                        continue;
                    }
                    out[..lo].fill(0.0);
                    out[hi..].fill(0.0);
                    let x_row = &plane[ih * s.in_w + lo * s.stride + kw - s.pad..];
                    if s.stride == 1 {
                        out[lo..hi].copy_from_slice(&x_row[..hi - lo]);
                    } else {
                        for (o, v) in out[lo..hi].iter_mut().zip(x_row.iter().step_by(s.stride)) {
                            *o = *v;
                        }
                    }
                }
                let k = (ci * s.kernel + kh) * s.kernel + kw;
                for (panel, values) in cols.chunks_exact_mut(panel_len).zip(row.as_chunks::<NR>().0) {
                    panel[k * NR..][..NR].copy_from_slice(values);
                }
            }
        }
    }
}

/// The product with the output pixels `pixels` unrolled ([`im2col`]'s
/// panels).
fn unrolled(weights: &PackedWeights, cols: &[f32], pixels: Range<usize>, epilogue: &Epilogue, y: &mut [f32]) {
    let depth = weights.depth;
    for (k0, kc) in blocks(depth) {
        let store = epilogue.block(k0, kc, depth);
        for (p0, b) in pixels.clone().step_by(NR).zip(cols.chunks_exact(depth * NR)) {
            let b = b[k0 * NR..][..kc * NR].as_chunks::<NR>().0;
            for (ip, a) in weights.panels.chunks_exact(depth * MR).enumerate() {
                let acc = tile(&a[k0 * MR..][..kc * MR], b.iter());
                store.write(&acc, ip * MR, p0, NR.min(pixels.end - p0), y);
            }
        }
    }
}

/// The `MR x NR` products of a block of `k`s: `a` holds `MR` weights per `k`,
/// `b` yields `NR` pixels per `k`. Fixed-size arrays and no indexing by `k`
/// leave LLVM a loop of broadcasts, vector multiplies and adds on registers.
#[inline(always)]
fn tile<'a>(a: &[f32], b: impl Iterator<Item = &'a [f32; NR]>) -> [[f32; NR]; MR] {
    let mut acc = [[0.0f32; NR]; MR];
    for (a, b) in a.as_chunks::<MR>().0.iter().zip(b) {
        for (acc, &a) in acc.iter_mut().zip(a) {
            for (acc, &b) in acc.iter_mut().zip(b) {
                *acc += a * b;
            }
        }
    }
    acc
}

/// What follows the product for one image: `y = relu?(product + bias +
/// residual?)`, `y` and `residual` being `[out_channels, pixels]`.
struct Epilogue<'a> {
    bias: &'a [f32],
    residual: Option<&'a [f32]>,
    relu: bool,
    pixels: usize,
}

impl<'a> Epilogue<'a> {
    /// The store for the block of `kc` `k`s from `k0` of `depth`.
    fn block(&'a self, k0: usize, kc: usize, depth: usize) -> Store<'a> {
        Store {
            first: k0 == 0,
            last: k0 + kc == depth,
            epilogue: self,
        }
    }
}

/// How a tile's sums reach the output: the first block of `k`s adds the bias,
/// later ones add to what is there, the last adds the residual and applies the
/// ReLU; rows past the last channel and columns past the tile's `n` are
/// dropped.
struct Store<'a> {
    first: bool,
    last: bool,
    epilogue: &'a Epilogue<'a>,
}

impl Store<'_> {
    /// The tile of channels from `co0` and `n` pixels from `p0`.
    #[inline(always)]
    fn write(&self, acc: &[[f32; NR]; MR], co0: usize, p0: usize, n: usize, y: &mut [f32]) {
        let Epilogue {
            bias,
            residual,
            relu,
            pixels,
        } = *self.epilogue;
        for (co, acc) in (co0..bias.len()).zip(acc) {
            let at = co * pixels + p0;
            let out = &mut y[at..at + n];
            if self.first {
                for (o, &a) in out.iter_mut().zip(acc) {
                    *o = a + bias[co];
                }
            } else {
                for (o, &a) in out.iter_mut().zip(acc) {
                    *o += a;
                }
            }
            if self.last {
                if let Some(r) = residual {
                    for (o, &r) in out.iter_mut().zip(&r[at..at + n]) {
                        *o += r;
                    }
                }
                if relu {
                    for o in out.iter_mut() {
                        *o = o.max(0.0);
                    }
                }
            }
        }
    }
}

/// Option-A shortcut: every `stride`-th pixel of each input channel, the new
/// channels zero on both sides.
fn shortcut_a(s: &ShortcutAShape, x: &[f32], y: &mut [f32]) {
    let (out_h, out_w) = (s.out_h(), s.out_w());
    let (in_plane, out_plane) = (s.in_h * s.in_w, out_h * out_w);
    assert!(
        x.len() == s.in_len() && y.len() == s.out_len(),
        "shortcut A: x or y length does not fit {s:?}"
    );
    y.fill(0.0);
    for (x, y) in x
        .chunks_exact(s.in_channels * in_plane)
        .zip(y.chunks_exact_mut(s.out_channels * out_plane))
    {
        let y = &mut y[s.pad_before() * out_plane..];
        for (x, y) in x.chunks_exact(in_plane).zip(y.chunks_exact_mut(out_plane)) {
            for (x, y) in x.chunks(s.in_w * s.stride).zip(y.chunks_exact_mut(out_w)) {
                for (y, x) in y.iter_mut().zip(x.iter().step_by(s.stride)) {
                    *y = *x;
                }
            }
        }
    }
}

/// Max pool with the padding left out (as `-inf` padding would be): per
/// output row, the maximum of its window's input rows (in `rows_max`), then
/// of each window's columns of that.
fn max_pool(s: &MaxPoolShape, x: &[f32], y: &mut [f32], rows_max: &mut Vec<f32>) {
    let (out_h, out_w) = (s.out_h(), s.out_w());
    let (in_plane, out_plane) = (s.in_h * s.in_w, out_h * out_w);
    assert!(
        x.len() == s.batch * s.channels * in_plane && y.len() == s.batch * s.channels * out_plane,
        "max pool: x or y length does not fit {s:?}"
    );
    let window = |o: usize, input: usize| {
        let start = o * s.stride;
        start.saturating_sub(s.pad)..(start + s.kernel).saturating_sub(s.pad).min(input)
    };
    rows_max.resize(s.in_w, 0.0);
    for (x, y) in x.chunks_exact(in_plane).zip(y.chunks_exact_mut(out_plane)) {
        for (oh, y) in y.chunks_exact_mut(out_w).enumerate() {
            rows_max.fill(f32::NEG_INFINITY);
            for x in x
                .chunks_exact(s.in_w)
                .take(window(oh, s.in_h).end)
                .skip(window(oh, s.in_h).start)
            {
                for (m, &v) in rows_max.iter_mut().zip(x) {
                    *m = m.max(v);
                }
            }
            for (ow, y) in y.iter_mut().enumerate() {
                *y = rows_max[window(ow, s.in_w)]
                    .iter()
                    .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            }
        }
    }
}

fn global_avg_pool(s: &GlobalAvgPoolShape, x: &[f32], y: &mut [f32]) {
    assert!(
        x.len() == s.batch * s.channels * s.spatial && y.len() == s.batch * s.channels,
        "global average pool: x or y length does not fit {s:?}"
    );
    for (x, y) in x.chunks_exact(s.spatial).zip(y) {
        *y = (x.iter().map(|&v| f64::from(v)).sum::<f64>() / s.spatial as f64) as f32;
    }
}

/// `y = w x + b` per image (`w` is `[out, in]`).
fn linear(s: &LinearShape, x: &[f32], w: &[f32], b: &[f32], y: &mut [f32]) {
    assert!(
        x.len() == s.batch * s.in_features
            && w.len() == s.out_features * s.in_features
            && b.len() == s.out_features
            && y.len() == s.batch * s.out_features,
        "linear: x, w, b or y length does not fit {s:?}"
    );
    for (x, y) in x.chunks_exact(s.in_features).zip(y.chunks_exact_mut(s.out_features)) {
        for ((y, w), &b) in y.iter_mut().zip(w.chunks_exact(s.in_features)).zip(b) {
            *y = b + dot(x, w);
        }
    }
}

/// In `NR` interleaved partial sums, so it vectorises.
fn dot(x: &[f32], w: &[f32]) -> f32 {
    let (xs, x_tail) = x.as_chunks::<NR>();
    let (ws, w_tail) = w.as_chunks::<NR>();
    let mut acc = [0.0f32; NR];
    for (x, w) in xs.iter().zip(ws) {
        for ((acc, &x), &w) in acc.iter_mut().zip(x).zip(w) {
            *acc += x * w;
        }
    }
    let tail: f32 = x_tail.iter().zip(w_tail).map(|(x, w)| x * w).sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::conv2d;
    use crate::rng::Rng;
    use crate::testing::assert_close;

    /// `relu?(conv(x, w) + bias + residual?)` by the layer's f64 reference.
    fn naive_conv(c: &FoldedConv, x: &[f32], residual: Option<&[f32]>) -> Vec<f64> {
        let widen = |v: &[f32]| v.iter().map(|&v| f64::from(v)).collect::<Vec<_>>();
        let residual = residual.map(widen);
        conv2d::cpu::conv2d_forward_fused(
            &c.shape,
            &widen(x),
            &widen(&c.weight),
            &widen(&c.bias),
            residual.as_deref(),
            c.relu,
        )
    }

    fn random(rng: &mut Rng, len: usize) -> Vec<f32> {
        rng.vec(len, -1.0, 1.0).into_iter().map(|v| v as f32).collect()
    }

    /// Both paths (unrolled, and in place for stride-1 1x1 and 3x3) on
    /// shapes whose pixel and channel counts are not multiples of the tile,
    /// strides 1 and 2, 1x1 projections, the 7x7 stem and reductions deeper
    /// than one block of `KC`, each with and without residual and ReLU, at
    /// batch 2 (one shape at 1), through shared buffers that the previous
    /// shape left dirty, into an output of NaNs. f32 sums of up to 630
    /// products of values in [-1, 1] stay within a few 1e-6 of the f64 sums;
    /// a lost bias, tap, residual or ReLU is off by 1e-2 or more.
    #[test]
    fn packed_conv_matches_a_naive_f64_convolution_on_awkward_shapes_in_both_paths() {
        let shapes = [
            // 3x3 stride 1: 5 channels (MR + 1), 7x9 = 63 pixels (8 NR - 1).
            Conv2dShape::new(2, 3, (7, 9), 5, 3, 1, 1),
            // 3x3 stride 2: 9x9 -> 5x5 = 25 pixels, 10 channels.
            Conv2dShape::new(2, 6, (9, 9), 10, 3, 2, 1),
            // 1x1 stride-2 projection: 14x14 -> 7x7 = 49 pixels.
            Conv2dShape::new(2, 8, (14, 14), 12, 1, 2, 0),
            // 1x1 stride 1 on a 6x5 map.
            Conv2dShape::new(2, 5, (6, 5), 7, 1, 1, 0),
            // The ImageNet stem: 7x7 stride 2 pad 3, 3 input channels, 15x17 -> 8x9.
            Conv2dShape::new(2, 3, (15, 17), 6, 7, 2, 3),
            // Reductions over more than one block of KC: 630 = 70 * 9 ks
            // unrolled in place, 360 unrolled by im2col, 300 1x1.
            Conv2dShape::new(2, 70, (5, 6), 9, 3, 1, 1),
            Conv2dShape::new(2, 40, (7, 7), 6, 3, 2, 1),
            Conv2dShape::new(1, 300, (3, 3), 5, 1, 1, 0),
            // The unrolled image in blocks of 16 output rows (UNROLLED_BLOCK /
            // 147 / 91, rounded up to a multiple of NR), the last of 4 rows
            // ending in a partial panel: 40x181 -> 20x91.
            Conv2dShape::new(1, 3, (40, 181), 2, 7, 2, 3),
            // A map smaller than the kernel's reach: 2x3 with 5x5 pad 2.
            Conv2dShape::new(2, 4, (2, 3), 3, 5, 1, 2),
            // A single pixel and a single channel.
            Conv2dShape::new(2, 2, (1, 1), 1, 3, 1, 1),
        ];
        let mut rng = Rng::new(11);
        let (mut cols, mut row) = (Vec::new(), Vec::new());
        for s in shapes {
            let paths: &[bool] = if s.stride == 1 { &[false, true] } else { &[false] };
            for direct in paths.iter().copied() {
                for (residual, relu) in [(false, false), (false, true), (true, false), (true, true)] {
                    let c = FoldedConv {
                        shape: s,
                        weight: random(&mut rng, s.weight_len()),
                        bias: random(&mut rng, s.out_channels),
                        x: 0,
                        residual: residual.then_some(1),
                        relu,
                        y: 2,
                    };
                    let x = random(&mut rng, s.input_len());
                    let r = residual.then(|| random(&mut rng, s.output_len()));
                    // Garbage in the output: every value must be written.
                    let mut y = vec![f32::NAN; s.output_len()];
                    let weights = PackedWeights::for_path(&c, direct);
                    conv(&c, &weights, &x, r.as_deref(), &mut y, &mut cols, &mut row);
                    let want = naive_conv(&c, &x, r.as_deref());
                    let what = format!("{s:?} direct {direct} residual {residual} relu {relu}");
                    assert_close(&what, &y, &want, 1e-5, 1e-5);
                }
            }
        }
    }

    /// Max pools (with and without padding, windows cut by the edge) and
    /// option-A shortcuts against the f64 references of the layers.
    #[test]
    fn max_pool_and_shortcut_a_match_the_f64_references() {
        use crate::layers::{pool, residual};
        let mut rng = Rng::new(13);
        let mut rows_max = vec![f32::NAN; 3];
        for (kernel, stride, pad, (in_h, in_w)) in [(3, 2, 1, (7, 5)), (2, 2, 0, (6, 9)), (3, 1, 1, (4, 4))] {
            let s = MaxPoolShape {
                batch: 2,
                channels: 3,
                in_h,
                in_w,
                kernel,
                stride,
                pad,
            };
            let x = random(&mut rng, 2 * 3 * in_h * in_w);
            let mut y = vec![f32::NAN; 2 * 3 * s.out_h() * s.out_w()];
            max_pool(&s, &x, &mut y, &mut rows_max);
            let want = pool::cpu::max_pool_forward(s, &x.iter().map(|&v| f64::from(v)).collect::<Vec<_>>());
            assert_close(&format!("{s:?}"), &y, &want, 0.0, 0.0);
        }
        for (in_h, in_w, stride) in [(5, 7, 2), (4, 4, 1)] {
            let s = ShortcutAShape {
                batch: 2,
                in_channels: 3,
                out_channels: 8,
                in_h,
                in_w,
                stride,
            };
            let x = random(&mut rng, s.in_len());
            let mut y = vec![f32::NAN; s.out_len()];
            shortcut_a(&s, &x, &mut y);
            let want = residual::cpu::shortcut_a_forward(s, &x.iter().map(|&v| f64::from(v)).collect::<Vec<_>>());
            assert_close(&format!("{s:?}"), &y, &want, 0.0, 0.0);
        }
    }

    #[test]
    fn linear_matches_a_naive_f64_product_with_a_tail_of_features() {
        let s = LinearShape {
            batch: 2,
            in_features: 21,
            out_features: 3,
        };
        let mut rng = Rng::new(12);
        let (x, w, b) = (random(&mut rng, 42), random(&mut rng, 63), random(&mut rng, 3));
        let mut y = vec![f32::NAN; 6];
        linear(&s, &x, &w, &b, &mut y);
        let want: Vec<f64> = (0..6)
            .map(|i| {
                let (n, o) = (i / 3, i % 3);
                let dot: f64 = (0..21)
                    .map(|k| f64::from(x[n * 21 + k]) * f64::from(w[o * 21 + k]))
                    .sum();
                f64::from(b[o]) + dot
            })
            .collect();
        assert_close("linear", &y, &want, 1e-6, 1e-6);
    }
}
