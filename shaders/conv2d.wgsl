// 2-D convolution (NCHW activations, OIHW weights, zero padding, no bias) as
// implicit GEMMs, forward and backward.
//
// Forward and backward-data are one kernel, `conv2d_implicit_gemm`:
//   dst[b][row][pixel] = sum over taps t, channels c of
//                        wt[t][c][row] * src[b][c][source pixel of (pixel, t)]
// over transposed weights `wt` ([tap][channel][row], channels padded to a
// multiple of 4 and rows to a multiple of 16 with zeros, written by
// `conv2d_transpose_weights`).
// - forward: rows = Cout, channels = Cin, src = x, dst = y, every tap;
// - backward-data: rows = Cin, channels = Cout, src = dy, dst = dx. With stride
//   s the input pixels split into s*s phases by (ih + pad) mod s; in a phase only
//   the taps kh = phase + s*t reach output pixels, at oh = q + first - t, so each
//   phase is a dense GEMM (one dispatch per phase) and no tap is masked away.
// A phase's columns are its pixels of all images: column -> (b, qh, qw), the
// destination pixel is (dst_first + q * dst_step) and tap t of the source is
// read at (q * src_step + src_first + t * src_tap_step).
//
// Backward-weight reduces over batch x output pixels, split into chunks of whole
// output rows; each chunk writes its partial dw (OIHW) to a scratch buffer and
// `conv2d_reduce_partials` sums them in a fixed order (deterministic).
//
// Three tilings of each GEMM:
// - register tile (CPU adapters natively: lavapipe): 16 x 24 outputs per
//   invocation, no barriers, no bounds checks in the inner loop (pixels
//   outside the image or past the end are read at a clamped address and
//   multiplied by 0, rows and channels past the end are zero padding or
//   clamped and not stored);
// - workgroup tile (GPUs): 4096 outputs per workgroup of 256 invocations,
//   4x4 each, staged through workgroup memory: 64x64, or 32x128 and 16x256
//   where the GEMM has few rows (ResNet's 16 and 32 channels) and enough
//   columns, so that no invocation computes only padding rows;
// - compact tile (CPU adapters in browsers: SwiftShader): 8 x 8 outputs per
//   invocation, no barriers, no branches in loops, quick to compile.
// Code that one tiling alone runs sits between `// BEGIN <tiling> tile` and
// `// END <tiling> tile.` lines: the engine compiles each tiling's module
// without the others' code (`conv2d_source`), since a browser parses and
// translates the whole module for each pipeline (in Chromium on SwiftShader
// this whole file took 80-90 ms to parse).
//
// The `*_fused` entry points run a GEMM with an epilogue:
// dst = relu?(gemm + bias[row] + residual?), zeroed where mask <= 0 (MASK).
// - inference: the forward, batch norm folded into the weights and bias at
//   load, with the block's residual add and ReLU;
// - training: backward-data (zero bias), where the input it differentiates
//   is a ReLU's output: masked by that output it is the ReLU's backward, and
//   with the residual (the shortcut's gradient) the backward of the sum the
//   ReLU read, so neither runs as a pass of its own.
// They share the helpers and bindings of the plain entry points and add the
// epilogue after them, so the plain kernels bind and read nothing more.
//
// Training on the register tile adds two twins of the aligned GEMMs that
// also leave partial sums per channel for a batch norm, so that it reads one
// vec4 per 24 values instead of whole tensors:
// `conv2d_implicit_gemm_aligned_statistics` (forward: the batch statistics
// of its output) and `conv2d_implicit_gemm_aligned_fused_sums`
// (backward-data: the backward reduce of the batch norm whose output
// gradient it writes).

struct ImplicitGemm {
    batch: u32,
    channels: u32,
    rows: u32,
    rows_padded: u32,
    src_h: u32,
    src_w: u32,
    dst_h: u32,
    dst_w: u32,
    q_h: u32,
    q_w: u32,
    dst_first_h: u32,
    dst_first_w: u32,
    dst_step: u32,
    src_step: u32,
    src_first_h: i32,
    src_first_w: i32,
    src_tap_step: i32,
    taps_h: u32,
    taps_w: u32,
    kernel: u32,
    kernel_first_h: u32,
    kernel_first_w: u32,
    kernel_step: u32,
    columns: u32,
    // Channel stride of wt: channels rounded up to a multiple of 4 (zero weights).
    channels_padded: u32,
    // EPILOGUE_* flags, read by the fused entry points only (they always add the bias).
    epilogue: u32,
    // Register tile: invocations per block of 16 rows, at least the triples of
    // pixel blocks (see rt_gemm).
    row_block_stride: u32,
    // Workgroup tile: its rows in vec4s, R = 4, 8 or 16 (see wt_gemm).
    tile_row_quads: u32,
}

const EPILOGUE_RESIDUAL: u32 = 1u;
const EPILOGUE_RELU: u32 = 2u;
const EPILOGUE_MASK: u32 = 4u;

// BEGIN workgroup tile
// Four consecutive columns of an implicit GEMM: where they read and write.
struct Columns4 {
    live: vec4<bool>,
    // First element of the column's image in src.
    src_base: vec4<u32>,
    // Source row and column of tap 0 (may lie in the padding).
    src_row: vec4<i32>,
    src_col: vec4<i32>,
    // Index in dst of the column's pixel in row 0.
    dst: vec4<u32>,
}

fn columns4(p: ImplicitGemm, first: u32) -> Columns4 {
    let col = vec4<u32>(first) + vec4<u32>(0u, 1u, 2u, 3u);
    let clamped = min(col, vec4<u32>(p.columns - 1u));
    let per_image = p.q_h * p.q_w;
    let b = clamped / per_image;
    let q = clamped % per_image;
    let qh = q / p.q_w;
    let qw = q % p.q_w;
    var out: Columns4;
    out.live = col < vec4<u32>(p.columns);
    out.src_base = b * (p.channels * p.src_h * p.src_w);
    out.src_row = vec4<i32>(qh * p.src_step) + p.src_first_h;
    out.src_col = vec4<i32>(qw * p.src_step) + p.src_first_w;
    out.dst = b * (p.rows * p.dst_h * p.dst_w) + (p.dst_first_h + qh * p.dst_step) * p.dst_w
        + p.dst_first_w + qw * p.dst_step;
    return out;
}

// Where four columns read tap (th, tw) of channel 0, and a 0/1 mask for the
// padding: invalid pixels read a clamped (valid) address and are multiplied by 0.
struct Tap4 {
    offset: vec4<u32>,
    mask: vec4<f32>,
}

fn tap4(p: ImplicitGemm, cols: Columns4, th: u32, tw: u32) -> Tap4 {
    let r = cols.src_row + i32(th) * p.src_tap_step;
    let c = cols.src_col + i32(tw) * p.src_tap_step;
    let h = i32(p.src_h);
    let w = i32(p.src_w);
    let ok = cols.live & (r >= vec4<i32>(0)) & (r < vec4<i32>(h)) & (c >= vec4<i32>(0)) & (c < vec4<i32>(w));
    let rc = vec4<u32>(clamp(r, vec4<i32>(0), vec4<i32>(h - 1)));
    let cc = vec4<u32>(clamp(c, vec4<i32>(0), vec4<i32>(w - 1)));
    return Tap4(cols.src_base + rc * p.src_w + cc, select(vec4<f32>(0.0), vec4<f32>(1.0), ok));
}
// END workgroup tile.

// Index of tap (th, tw) of a phase in the weights' K x K taps.
fn weight_tap(p: ImplicitGemm, th: u32, tw: u32) -> u32 {
    return (p.kernel_first_h + th * p.kernel_step) * p.kernel + p.kernel_first_w + tw * p.kernel_step;
}

// conv2d_transpose_weights: w (OIHW) -> wt[tap][channel][row], channels and
// rows padded with zeros to channels_padded and rows_padded (multiples of 4).
// Forward: row = co, channel = ci; backward-data: row = ci, channel = co; the
// strides say which. One invocation per 4 channels x 4 rows, for all taps:
// consecutive invocations take consecutive row blocks, so both the reads (runs
// of 4 channels x taps per row) and the vec4 writes stream.
struct Transpose {
    rows: u32,
    channels: u32,
    taps: u32,
    rows_padded: u32,
    row_stride: u32,
    channel_stride: u32,
    channels_padded: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> transpose_params: Transpose;
@group(0) @binding(1) var<storage, read> transpose_w: array<f32>;
@group(0) @binding(2) var<storage, read_write> transpose_wt: array<vec4<f32>>;

@compute @workgroup_size(256)
fn conv2d_transpose_weights(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let p = transpose_params;
    let i = gid.x + gid.y * groups.x * 256u;
    let row_blocks = p.rows_padded / 4u;
    if i >= p.channels_padded / 4u * row_blocks {
        return;
    }
    let row_block = i % row_blocks;
    let rows = row_block * 4u + vec4<u32>(0u, 1u, 2u, 3u);
    let rows_live = rows < vec4<u32>(p.rows);
    // Clamped source offsets; padding rows and channels are masked to 0.
    let row_offsets = min(rows, vec4<u32>(p.rows - 1u)) * p.row_stride;
    for (var channel = (i / row_blocks) * 4u; channel < (i / row_blocks) * 4u + 4u; channel++) {
        let src = row_offsets + min(channel, p.channels - 1u) * p.channel_stride;
        let live = rows_live & vec4<bool>(channel < p.channels);
        for (var tap = 0u; tap < p.taps; tap++) {
            let v = vec4<f32>(transpose_w[src.x + tap], transpose_w[src.y + tap], transpose_w[src.z + tap], transpose_w[src.w + tap]);
            transpose_wt[(tap * p.channels_padded + channel) * row_blocks + row_block] = select(vec4<f32>(0.0), v, live);
        }
    }
}

// BEGIN register tile
// conv2d_implicit_gemm (register tile): 16 rows x 24 columns per invocation,
// the columns being three blocks of 8 consecutive pixels of a destination row
// (consecutive blocks in (b, qh, qw) order, so narrow maps waste nothing); 8
// invocations per workgroup (see rt_gemm). On llvmpipe storage loads
// dominate (a GEMM with its loads hoisted out of the loop ran 4x faster), so
// loads are what to save: with a source stride of 1 the taps of one kernel
// row read overlapping windows, so each channel loads 8 pixels per block once
// and then one more per tap, shifting the window (stride 2 reloads 8 pixels
// per tap).
@group(0) @binding(10) var<uniform> rt_params: ImplicitGemm;
@group(0) @binding(11) var<storage, read> rt_wt: array<vec4<f32>>;
// The source through its texture mirror (`mirrored`: shaders/mirror.wgsl,
// which the engine appends). llvmpipe fetches a texel
// for its 8 lanes with one gather but loads from a storage buffer lane by
// lane: ResNet-20's forward GEMMs with statistics took 0.72x the time.
@group(0) @binding(12) var rt_src: texture_2d<f32>;
@group(0) @binding(13) var<storage, read_write> rt_dst: array<f32>;
// conv2d_implicit_gemm_fused only: bias [rows], residual and mask (shaped
// like dst; any small buffer when the epilogue has none).
@group(0) @binding(14) var<storage, read> rt_bias: array<f32>;
@group(0) @binding(15) var<storage, read> rt_residual: array<f32>;
@group(0) @binding(16) var<storage, read> rt_mask: array<f32>;

// 16 consecutive rows of wt (one tap and channel).
struct Rows16 {
    a0: vec4<f32>,
    a1: vec4<f32>,
    a2: vec4<f32>,
    a3: vec4<f32>,
}
// END register tile.

// 8 source pixels of one channel for the 8 columns of a block.
struct Window {
    lo: vec4<f32>,
    hi: vec4<f32>,
}

// BEGIN register tile
// Four terms of a GEMM's reduction, each 16 rows and 8 pixels: four
// consecutive channels in the forward and backward-data GEMMs (their rows of
// wt and their windows of the same 8 pixels), four consecutive pixels in the
// backward-weight (their dy and their input windows).
struct Rows16x4 {
    t0: Rows16,
    t1: Rows16,
    t2: Rows16,
    t3: Rows16,
}

struct Windows4 {
    t0: Window,
    t1: Window,
    t2: Window,
    t3: Window,
}

// acc[2i + h] += the sum over the four terms of a_i * x_h, in one update: on
// llvmpipe every update of a loop-carried accumulator is a masked store, so
// fewer updates per multiply-add are faster (four terms per update took
// 0.82-0.91x the time of two in ResNet-20's register-tile GEMMs; eight no
// less than four).
fn outer_product_16x8x4(acc: ptr<function, array<vec4<f32>, 32>>, a: Rows16x4, x: Windows4) {
    (*acc)[0] += a.t0.a0.x * x.t0.lo + a.t1.a0.x * x.t1.lo + a.t2.a0.x * x.t2.lo + a.t3.a0.x * x.t3.lo;
    (*acc)[1] += a.t0.a0.x * x.t0.hi + a.t1.a0.x * x.t1.hi + a.t2.a0.x * x.t2.hi + a.t3.a0.x * x.t3.hi;
    (*acc)[2] += a.t0.a0.y * x.t0.lo + a.t1.a0.y * x.t1.lo + a.t2.a0.y * x.t2.lo + a.t3.a0.y * x.t3.lo;
    (*acc)[3] += a.t0.a0.y * x.t0.hi + a.t1.a0.y * x.t1.hi + a.t2.a0.y * x.t2.hi + a.t3.a0.y * x.t3.hi;
    (*acc)[4] += a.t0.a0.z * x.t0.lo + a.t1.a0.z * x.t1.lo + a.t2.a0.z * x.t2.lo + a.t3.a0.z * x.t3.lo;
    (*acc)[5] += a.t0.a0.z * x.t0.hi + a.t1.a0.z * x.t1.hi + a.t2.a0.z * x.t2.hi + a.t3.a0.z * x.t3.hi;
    (*acc)[6] += a.t0.a0.w * x.t0.lo + a.t1.a0.w * x.t1.lo + a.t2.a0.w * x.t2.lo + a.t3.a0.w * x.t3.lo;
    (*acc)[7] += a.t0.a0.w * x.t0.hi + a.t1.a0.w * x.t1.hi + a.t2.a0.w * x.t2.hi + a.t3.a0.w * x.t3.hi;
    (*acc)[8] += a.t0.a1.x * x.t0.lo + a.t1.a1.x * x.t1.lo + a.t2.a1.x * x.t2.lo + a.t3.a1.x * x.t3.lo;
    (*acc)[9] += a.t0.a1.x * x.t0.hi + a.t1.a1.x * x.t1.hi + a.t2.a1.x * x.t2.hi + a.t3.a1.x * x.t3.hi;
    (*acc)[10] += a.t0.a1.y * x.t0.lo + a.t1.a1.y * x.t1.lo + a.t2.a1.y * x.t2.lo + a.t3.a1.y * x.t3.lo;
    (*acc)[11] += a.t0.a1.y * x.t0.hi + a.t1.a1.y * x.t1.hi + a.t2.a1.y * x.t2.hi + a.t3.a1.y * x.t3.hi;
    (*acc)[12] += a.t0.a1.z * x.t0.lo + a.t1.a1.z * x.t1.lo + a.t2.a1.z * x.t2.lo + a.t3.a1.z * x.t3.lo;
    (*acc)[13] += a.t0.a1.z * x.t0.hi + a.t1.a1.z * x.t1.hi + a.t2.a1.z * x.t2.hi + a.t3.a1.z * x.t3.hi;
    (*acc)[14] += a.t0.a1.w * x.t0.lo + a.t1.a1.w * x.t1.lo + a.t2.a1.w * x.t2.lo + a.t3.a1.w * x.t3.lo;
    (*acc)[15] += a.t0.a1.w * x.t0.hi + a.t1.a1.w * x.t1.hi + a.t2.a1.w * x.t2.hi + a.t3.a1.w * x.t3.hi;
    (*acc)[16] += a.t0.a2.x * x.t0.lo + a.t1.a2.x * x.t1.lo + a.t2.a2.x * x.t2.lo + a.t3.a2.x * x.t3.lo;
    (*acc)[17] += a.t0.a2.x * x.t0.hi + a.t1.a2.x * x.t1.hi + a.t2.a2.x * x.t2.hi + a.t3.a2.x * x.t3.hi;
    (*acc)[18] += a.t0.a2.y * x.t0.lo + a.t1.a2.y * x.t1.lo + a.t2.a2.y * x.t2.lo + a.t3.a2.y * x.t3.lo;
    (*acc)[19] += a.t0.a2.y * x.t0.hi + a.t1.a2.y * x.t1.hi + a.t2.a2.y * x.t2.hi + a.t3.a2.y * x.t3.hi;
    (*acc)[20] += a.t0.a2.z * x.t0.lo + a.t1.a2.z * x.t1.lo + a.t2.a2.z * x.t2.lo + a.t3.a2.z * x.t3.lo;
    (*acc)[21] += a.t0.a2.z * x.t0.hi + a.t1.a2.z * x.t1.hi + a.t2.a2.z * x.t2.hi + a.t3.a2.z * x.t3.hi;
    (*acc)[22] += a.t0.a2.w * x.t0.lo + a.t1.a2.w * x.t1.lo + a.t2.a2.w * x.t2.lo + a.t3.a2.w * x.t3.lo;
    (*acc)[23] += a.t0.a2.w * x.t0.hi + a.t1.a2.w * x.t1.hi + a.t2.a2.w * x.t2.hi + a.t3.a2.w * x.t3.hi;
    (*acc)[24] += a.t0.a3.x * x.t0.lo + a.t1.a3.x * x.t1.lo + a.t2.a3.x * x.t2.lo + a.t3.a3.x * x.t3.lo;
    (*acc)[25] += a.t0.a3.x * x.t0.hi + a.t1.a3.x * x.t1.hi + a.t2.a3.x * x.t2.hi + a.t3.a3.x * x.t3.hi;
    (*acc)[26] += a.t0.a3.y * x.t0.lo + a.t1.a3.y * x.t1.lo + a.t2.a3.y * x.t2.lo + a.t3.a3.y * x.t3.lo;
    (*acc)[27] += a.t0.a3.y * x.t0.hi + a.t1.a3.y * x.t1.hi + a.t2.a3.y * x.t2.hi + a.t3.a3.y * x.t3.hi;
    (*acc)[28] += a.t0.a3.z * x.t0.lo + a.t1.a3.z * x.t1.lo + a.t2.a3.z * x.t2.lo + a.t3.a3.z * x.t3.lo;
    (*acc)[29] += a.t0.a3.z * x.t0.hi + a.t1.a3.z * x.t1.hi + a.t2.a3.z * x.t2.hi + a.t3.a3.z * x.t3.hi;
    (*acc)[30] += a.t0.a3.w * x.t0.lo + a.t1.a3.w * x.t1.lo + a.t2.a3.w * x.t2.lo + a.t3.a3.w * x.t3.lo;
    (*acc)[31] += a.t0.a3.w * x.t0.hi + a.t1.a3.w * x.t1.hi + a.t2.a3.w * x.t2.hi + a.t3.a3.w * x.t3.hi;
}

// acc[2i + h] += a_i * x_h + b_i * y_h: outer_product_16x8x4 for two pairs
// of rows and pixels (the backward-weight's pixel pairs at stride 2).
fn outer_product_16x8x2(acc: ptr<function, array<vec4<f32>, 32>>, a: Rows16, x: Window, b: Rows16, y: Window) {
    (*acc)[0] += a.a0.x * x.lo + b.a0.x * y.lo;
    (*acc)[1] += a.a0.x * x.hi + b.a0.x * y.hi;
    (*acc)[2] += a.a0.y * x.lo + b.a0.y * y.lo;
    (*acc)[3] += a.a0.y * x.hi + b.a0.y * y.hi;
    (*acc)[4] += a.a0.z * x.lo + b.a0.z * y.lo;
    (*acc)[5] += a.a0.z * x.hi + b.a0.z * y.hi;
    (*acc)[6] += a.a0.w * x.lo + b.a0.w * y.lo;
    (*acc)[7] += a.a0.w * x.hi + b.a0.w * y.hi;
    (*acc)[8] += a.a1.x * x.lo + b.a1.x * y.lo;
    (*acc)[9] += a.a1.x * x.hi + b.a1.x * y.hi;
    (*acc)[10] += a.a1.y * x.lo + b.a1.y * y.lo;
    (*acc)[11] += a.a1.y * x.hi + b.a1.y * y.hi;
    (*acc)[12] += a.a1.z * x.lo + b.a1.z * y.lo;
    (*acc)[13] += a.a1.z * x.hi + b.a1.z * y.hi;
    (*acc)[14] += a.a1.w * x.lo + b.a1.w * y.lo;
    (*acc)[15] += a.a1.w * x.hi + b.a1.w * y.hi;
    (*acc)[16] += a.a2.x * x.lo + b.a2.x * y.lo;
    (*acc)[17] += a.a2.x * x.hi + b.a2.x * y.hi;
    (*acc)[18] += a.a2.y * x.lo + b.a2.y * y.lo;
    (*acc)[19] += a.a2.y * x.hi + b.a2.y * y.hi;
    (*acc)[20] += a.a2.z * x.lo + b.a2.z * y.lo;
    (*acc)[21] += a.a2.z * x.hi + b.a2.z * y.hi;
    (*acc)[22] += a.a2.w * x.lo + b.a2.w * y.lo;
    (*acc)[23] += a.a2.w * x.hi + b.a2.w * y.hi;
    (*acc)[24] += a.a3.x * x.lo + b.a3.x * y.lo;
    (*acc)[25] += a.a3.x * x.hi + b.a3.x * y.hi;
    (*acc)[26] += a.a3.y * x.lo + b.a3.y * y.lo;
    (*acc)[27] += a.a3.y * x.hi + b.a3.y * y.hi;
    (*acc)[28] += a.a3.z * x.lo + b.a3.z * y.lo;
    (*acc)[29] += a.a3.z * x.hi + b.a3.z * y.hi;
    (*acc)[30] += a.a3.w * x.lo + b.a3.w * y.lo;
    (*acc)[31] += a.a3.w * x.hi + b.a3.w * y.hi;
}
// END register tile.

// One block of 8 consecutive destination pixels of a row.
struct RtBlock {
    image: u32,
    qh: u32,
    qw0: u32,
    // Pixels of the block inside the row: 8, fewer at the row's end, 0 for a
    // block past the last one (it computes a clamped block and stores nothing).
    live: u32,
}

fn rt_block(p: ImplicitGemm, index: u32, blocks: u32) -> RtBlock {
    let per_row = (p.q_w + 7u) / 8u;
    let i = min(index, blocks - 1u);
    var block: RtBlock;
    block.qw0 = (i % per_row) * 8u;
    block.qh = (i / per_row) % p.q_h;
    block.image = i / (per_row * p.q_h);
    block.live = select(0u, min(8u, p.q_w - block.qw0), index < blocks);
    return block;
}

// The source row read by tap row `th` of a block.
struct RtRow {
    base: u32,
    ok: bool,
}

// BEGIN register tile
fn rt_row(p: ImplicitGemm, block: RtBlock, th: u32) -> RtRow {
    let r = i32(block.qh * p.src_step) + p.src_first_h + i32(th) * p.src_tap_step;
    let base = block.image * p.channels * p.src_h * p.src_w + u32(clamp(r, 0, i32(p.src_h) - 1)) * p.src_w;
    return RtRow(base, (r >= 0) & (r < i32(p.src_h)));
}

// Pixel `col` of channel plane `plane_offset` of a source row, 0 in the padding.
fn rt_pixel(p: ImplicitGemm, row: RtRow, plane_offset: u32, col: i32) -> f32 {
    let value = mirrored(rt_src, row.base + plane_offset + u32(clamp(col, 0, i32(p.src_w) - 1)));
    return select(0.0, value, row.ok & (col >= 0) & (col < i32(p.src_w)));
}

// Pixels col, col + s, ..., col + 7s.
fn rt_window(p: ImplicitGemm, row: RtRow, plane_offset: u32, col: i32, s: i32) -> Window {
    return Window(
        vec4<f32>(rt_pixel(p, row, plane_offset, col), rt_pixel(p, row, plane_offset, col + s), rt_pixel(p, row, plane_offset, col + 2 * s), rt_pixel(p, row, plane_offset, col + 3 * s)),
        vec4<f32>(rt_pixel(p, row, plane_offset, col + 4 * s), rt_pixel(p, row, plane_offset, col + 5 * s), rt_pixel(p, row, plane_offset, col + 6 * s), rt_pixel(p, row, plane_offset, col + 7 * s)),
    );
}

// The window one pixel to the right, `col` being the new last pixel.
fn rt_shift(p: ImplicitGemm, w: Window, row: RtRow, plane_offset: u32, col: i32) -> Window {
    return Window(vec4<f32>(w.lo.yzw, w.hi.x), vec4<f32>(w.hi.yzw, rt_pixel(p, row, plane_offset, col)));
}

// Offsets of the planes of channels c to c + 3, the last channel's past it.
fn rt_planes4(p: ImplicitGemm, c: u32) -> vec4<u32> {
    let plane = p.src_h * p.src_w;
    return min(vec4<u32>(c) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(p.channels - 1u)) * plane;
}

// The windows of four channels, at channel planes `planes`.
fn rt_windows4(p: ImplicitGemm, row: RtRow, planes: vec4<u32>, col: i32, s: i32) -> Windows4 {
    return Windows4(rt_window(p, row, planes.x, col, s), rt_window(p, row, planes.y, col, s), rt_window(p, row, planes.z, col, s), rt_window(p, row, planes.w, col, s));
}

fn rt_shift4(p: ImplicitGemm, w: Windows4, row: RtRow, planes: vec4<u32>, col: i32) -> Windows4 {
    return Windows4(rt_shift(p, w.t0, row, planes.x, col), rt_shift(p, w.t1, row, planes.y, col), rt_shift(p, w.t2, row, planes.z, col), rt_shift(p, w.t3, row, planes.w, col));
}

// The 16 rows from row block `a_block` (in vec4s) of wt for channels c to
// c + 3 at tap (tap_row, tw); a channel of wt is rows_padded / 4 vec4s.
fn rt_tap_rows4(p: ImplicitGemm, tap_row: u32, tw: u32, c: u32, a_block: u32, lane: u32) -> Rows16x4 {
    let a_step = p.rows_padded / 4u;
    let a = ((tap_row + p.kernel_first_w + tw * p.kernel_step) * p.channels_padded + c) * a_step + a_block;
    return Rows16x4(rt_rows(a, lane), rt_rows(a + a_step, lane), rt_rows(a + 2u * a_step, lane), rt_rows(a + 3u * a_step, lane));
}
// END register tile.

// Index in dst of a block's first pixel in `row`.
fn rt_dst_index(p: ImplicitGemm, block: RtBlock, row: u32) -> u32 {
    return ((block.image * p.rows + row) * p.dst_h + p.dst_first_h + block.qh * p.dst_step) * p.dst_w + p.dst_first_w + block.qw0 * p.dst_step;
}

// BEGIN register tile
fn rt_store_row(p: ImplicitGemm, block: RtBlock, row: u32, lo: vec4<f32>, hi: vec4<f32>) {
    let n = block.live;
    if row >= p.rows || n == 0u {
        return;
    }
    let step = p.dst_step;
    let base = rt_dst_index(p, block, row);
    rt_dst[base] = lo.x;
    if n > 1u { rt_dst[base + step] = lo.y; }
    if n > 2u { rt_dst[base + 2u * step] = lo.z; }
    if n > 3u { rt_dst[base + 3u * step] = lo.w; }
    if n > 4u { rt_dst[base + 4u * step] = hi.x; }
    if n > 5u { rt_dst[base + 5u * step] = hi.y; }
    if n > 6u { rt_dst[base + 6u * step] = hi.z; }
    if n > 7u { rt_dst[base + 7u * step] = hi.w; }
}

fn rt_store(p: ImplicitGemm, block: RtBlock, row0: u32, acc: ptr<function, array<vec4<f32>, 32>>) {
    rt_store_row(p, block, row0, (*acc)[0], (*acc)[1]);
    rt_store_row(p, block, row0 + 1u, (*acc)[2], (*acc)[3]);
    rt_store_row(p, block, row0 + 2u, (*acc)[4], (*acc)[5]);
    rt_store_row(p, block, row0 + 3u, (*acc)[6], (*acc)[7]);
    rt_store_row(p, block, row0 + 4u, (*acc)[8], (*acc)[9]);
    rt_store_row(p, block, row0 + 5u, (*acc)[10], (*acc)[11]);
    rt_store_row(p, block, row0 + 6u, (*acc)[12], (*acc)[13]);
    rt_store_row(p, block, row0 + 7u, (*acc)[14], (*acc)[15]);
    rt_store_row(p, block, row0 + 8u, (*acc)[16], (*acc)[17]);
    rt_store_row(p, block, row0 + 9u, (*acc)[18], (*acc)[19]);
    rt_store_row(p, block, row0 + 10u, (*acc)[20], (*acc)[21]);
    rt_store_row(p, block, row0 + 11u, (*acc)[22], (*acc)[23]);
    rt_store_row(p, block, row0 + 12u, (*acc)[24], (*acc)[25]);
    rt_store_row(p, block, row0 + 13u, (*acc)[26], (*acc)[27]);
    rt_store_row(p, block, row0 + 14u, (*acc)[28], (*acc)[29]);
    rt_store_row(p, block, row0 + 15u, (*acc)[30], (*acc)[31]);
}
// END register tile.

// Blocks of 8 destination pixels of the register-tile GEMM, over all rows.
fn rt_blocks(p: ImplicitGemm) -> u32 {
    return p.batch * p.q_h * ((p.q_w + 7u) / 8u);
}

// BEGIN register tile
// What invocation g computes: the 16 rows from row0 of three blocks.
struct RtTile {
    block0: RtBlock,
    block1: RtBlock,
    block2: RtBlock,
    row0: u32,
    // The triple of pixel blocks, 0 to row_block_stride - 1.
    slot: u32,
}

// Accumulates the tile of an invocation into acc0 (block0), acc1 (block1) and
// acc2 (block2). Invocation g takes triple g % row_block_stride of pixel
// blocks and row block g / row_block_stride: with subgroup weight loads the
// engine pads the stride to whole workgroups, so that a workgroup shares one
// row block's weights. Past the last triple or row block an invocation
// computes a clamped block and stores nothing.
fn rt_gemm(p: ImplicitGemm, ids: Ids, acc0: ptr<function, array<vec4<f32>, 32>>, acc1: ptr<function, array<vec4<f32>, 32>>, acc2: ptr<function, array<vec4<f32>, 32>>) -> RtTile {
    let blocks = rt_blocks(p);
    let g = ids.global.x + ids.global.y * ids.groups.x * 8u;
    let row_blocks = (p.rows + 15u) / 16u;
    let row_block = min(g / p.row_block_stride, row_blocks - 1u);
    let triple = select(blocks, g % p.row_block_stride, g / p.row_block_stride < row_blocks);
    let lane = subgroup_lane(ids);
    let block0 = rt_block(p, 3u * triple, blocks);
    let block1 = rt_block(p, 3u * triple + 1u, blocks);
    let block2 = rt_block(p, 3u * triple + 2u, blocks);
    // wt in vec4s: a row block is 4 vec4s.
    let a_block = row_block * 4u;
    // With a tap step of -1 (backward-data) the window starts at the last tap.
    let window_shift = select(0, 1 - i32(p.taps_w), p.src_tap_step < 0);
    let col0 = i32(block0.qw0 * p.src_step) + p.src_first_w + window_shift;
    let col1 = i32(block1.qw0 * p.src_step) + p.src_first_w + window_shift;
    let col2 = i32(block2.qw0 * p.src_step) + p.src_first_w + window_shift;
    let s = i32(p.src_step);
    for (var th = 0u; th < p.taps_h; th++) {
        let row0 = rt_row(p, block0, th);
        let row1 = rt_row(p, block1, th);
        let row2 = rt_row(p, block2, th);
        let tap_row = (p.kernel_first_h + th * p.kernel_step) * p.kernel;
        // Channels in fours; past the last channel a window reads the last
        // one again, against the zero weights of the padding channels (wt's
        // channels are padded to a multiple of 4). One loop per stride: a
        // branch on the stride inside the loop made it 1.1x slower.
        if s == 1 {
            for (var c = 0u; c < p.channels; c += 4u) {
                let planes = rt_planes4(p, c);
                var x0 = rt_windows4(p, row0, planes, col0, 1);
                var x1 = rt_windows4(p, row1, planes, col1, 1);
                var x2 = rt_windows4(p, row2, planes, col2, 1);
                for (var o = 0u; o < p.taps_w; o++) {
                    if o > 0u {
                        let last = 7 + i32(o);
                        x0 = rt_shift4(p, x0, row0, planes, col0 + last);
                        x1 = rt_shift4(p, x1, row1, planes, col1 + last);
                        x2 = rt_shift4(p, x2, row2, planes, col2 + last);
                    }
                    let tw = select(o, p.taps_w - 1u - o, p.src_tap_step < 0);
                    let rows = rt_tap_rows4(p, tap_row, tw, c, a_block, lane);
                    outer_product_16x8x4(acc0, rows, x0);
                    outer_product_16x8x4(acc1, rows, x1);
                    outer_product_16x8x4(acc2, rows, x2);
                }
            }
        } else {
            for (var c = 0u; c < p.channels; c += 4u) {
                let planes = rt_planes4(p, c);
                for (var tw = 0u; tw < p.taps_w; tw++) {
                    let rows = rt_tap_rows4(p, tap_row, tw, c, a_block, lane);
                    outer_product_16x8x4(acc0, rows, rt_windows4(p, row0, planes, col0 + i32(tw), s));
                    outer_product_16x8x4(acc1, rows, rt_windows4(p, row1, planes, col1 + i32(tw), s));
                    outer_product_16x8x4(acc2, rows, rt_windows4(p, row2, planes, col2 + i32(tw), s));
                }
            }
        }
    }
    return RtTile(block0, block1, block2, row_block * 16u, g % p.row_block_stride);
}

// No early return before the GEMM: with subgroups every invocation of the
// workgroup takes part in the broadcasts.
@compute @workgroup_size(8)
fn conv2d_implicit_gemm(ids: Ids) {
    let p = rt_params;
    var acc0: array<vec4<f32>, 32>;
    var acc1: array<vec4<f32>, 32>;
    var acc2: array<vec4<f32>, 32>;
    let tile = rt_gemm(p, ids, &acc0, &acc1, &acc2);
    rt_store(p, tile.block0, tile.row0, &acc0);
    rt_store(p, tile.block1, tile.row0, &acc1);
    rt_store(p, tile.block2, tile.row0, &acc2);
}

// The epilogue of row `row` of a block, whose 8 pixels the GEMM left in lo, hi:
// the residual (read where the epilogue adds one) and the mask (where it
// masks) come from the caller, which loads them and stores the row returned.
fn rt_epilogue_row(p: ImplicitGemm, row: u32, lo: vec4<f32>, hi: vec4<f32>, residual: Window, mask: Window) -> Window {
    let bias = rt_bias[min(row, p.rows - 1u)];
    var out = Window(lo + bias, hi + bias);
    if (p.epilogue & EPILOGUE_RESIDUAL) != 0u {
        out = Window(out.lo + residual.lo, out.hi + residual.hi);
    }
    if (p.epilogue & EPILOGUE_RELU) != 0u {
        out = Window(max(out.lo, vec4<f32>(0.0)), max(out.hi, vec4<f32>(0.0)));
    }
    if (p.epilogue & EPILOGUE_MASK) != 0u {
        let zero = vec4<f32>(0.0);
        out = Window(select(zero, out.lo, mask.lo > zero), select(zero, out.hi, mask.hi > zero));
    }
    return out;
}

// rt_epilogue_row's residual and mask loads, one value at a time: rows and
// pixels past the end read clamped addresses (valid, and not stored).
fn rt_epilogue(p: ImplicitGemm, block: RtBlock, row0: u32, acc: ptr<function, array<vec4<f32>, 32>>) {
    // A copy, indexed by the loop, so that the GEMM's accumulators keep
    // constant indices (see conv2d_implicit_gemm_compact_fused).
    var rows = *acc;
    let last = vec4<u32>(p.q_w - 1u - block.qw0);
    for (var i = 0u; i < 16u; i++) {
        let base = rt_dst_index(p, block, min(row0 + i, p.rows - 1u));
        let a = base + min(vec4<u32>(0u, 1u, 2u, 3u), last) * p.dst_step;
        let b = base + min(vec4<u32>(4u, 5u, 6u, 7u), last) * p.dst_step;
        var residual = Window(vec4<f32>(0.0), vec4<f32>(0.0));
        var mask = residual;
        if (p.epilogue & EPILOGUE_RESIDUAL) != 0u {
            residual = Window(
                vec4<f32>(rt_residual[a.x], rt_residual[a.y], rt_residual[a.z], rt_residual[a.w]),
                vec4<f32>(rt_residual[b.x], rt_residual[b.y], rt_residual[b.z], rt_residual[b.w]),
            );
        }
        if (p.epilogue & EPILOGUE_MASK) != 0u {
            mask = Window(
                vec4<f32>(rt_mask[a.x], rt_mask[a.y], rt_mask[a.z], rt_mask[a.w]),
                vec4<f32>(rt_mask[b.x], rt_mask[b.y], rt_mask[b.z], rt_mask[b.w]),
            );
        }
        let out = rt_epilogue_row(p, row0 + i, rows[2u * i], rows[2u * i + 1u], residual, mask);
        rt_store_row(p, block, row0 + i, out.lo, out.hi);
    }
}

// conv2d_implicit_gemm_fused: the GEMM, then the epilogue, which stores.
@compute @workgroup_size(8)
fn conv2d_implicit_gemm_fused(ids: Ids) {
    let p = rt_params;
    var acc0: array<vec4<f32>, 32>;
    var acc1: array<vec4<f32>, 32>;
    var acc2: array<vec4<f32>, 32>;
    let tile = rt_gemm(p, ids, &acc0, &acc1, &acc2);
    rt_epilogue(p, tile.block0, tile.row0, &acc0);
    rt_epilogue(p, tile.block1, tile.row0, &acc1);
    rt_epilogue(p, tile.block2, tile.row0, &acc2);
}

// The `*_aligned` entry points: the same where every block is 8 consecutive
// pixels starting at a multiple of 4 (stride-1 destination rows of a multiple
// of 8 pixels), so that a row of a block loads and stores as two vec4 instead
// of 8 gathers or scatters, which llvmpipe runs lane by lane: the masked
// backward-data of ResNet-20's 16 channels took 1.09x the plain one's time
// instead of 1.2x with vec4 loads of residual and mask. The same bindings as
// vec4 arrays (their lengths, a multiple of 8, allow it).
@group(0) @binding(13) var<storage, read_write> rt_dst4: array<vec4<f32>>;
@group(0) @binding(15) var<storage, read> rt_residual4: array<vec4<f32>>;
@group(0) @binding(16) var<storage, read> rt_mask4: array<vec4<f32>>;

// Row `row` of an aligned block; every block is whole or past the end.
fn rt_store_row_aligned(p: ImplicitGemm, block: RtBlock, row: u32, out: Window) {
    if row >= p.rows || block.live == 0u {
        return;
    }
    let quad = rt_dst_index(p, block, row) / 4u;
    rt_dst4[quad] = out.lo;
    rt_dst4[quad + 1u] = out.hi;
}

fn rt_store_aligned(p: ImplicitGemm, block: RtBlock, row0: u32, acc: ptr<function, array<vec4<f32>, 32>>) {
    var rows = *acc;
    for (var i = 0u; i < 16u; i++) {
        rt_store_row_aligned(p, block, row0 + i, Window(rows[2u * i], rows[2u * i + 1u]));
    }
}

fn rt_store_tile_aligned(p: ImplicitGemm, tile: RtTile, acc0: ptr<function, array<vec4<f32>, 32>>, acc1: ptr<function, array<vec4<f32>, 32>>, acc2: ptr<function, array<vec4<f32>, 32>>) {
    rt_store_aligned(p, tile.block0, tile.row0, acc0);
    rt_store_aligned(p, tile.block1, tile.row0, acc1);
    rt_store_aligned(p, tile.block2, tile.row0, acc2);
}

@compute @workgroup_size(8)
fn conv2d_implicit_gemm_aligned(ids: Ids) {
    let p = rt_params;
    var acc0: array<vec4<f32>, 32>;
    var acc1: array<vec4<f32>, 32>;
    var acc2: array<vec4<f32>, 32>;
    let tile = rt_gemm(p, ids, &acc0, &acc1, &acc2);
    rt_store_tile_aligned(p, tile, &acc0, &acc1, &acc2);
}

// The epilogue of row `row` of an aligned block, whose first quad in dst is
// `quad`: stored, and returned.
fn rt_epilogue_row_aligned(p: ImplicitGemm, block: RtBlock, row: u32, quad: u32, lo: vec4<f32>, hi: vec4<f32>) -> Window {
    var residual = Window(vec4<f32>(0.0), vec4<f32>(0.0));
    var mask = residual;
    if (p.epilogue & EPILOGUE_RESIDUAL) != 0u {
        residual = Window(rt_residual4[quad], rt_residual4[quad + 1u]);
    }
    if (p.epilogue & EPILOGUE_MASK) != 0u {
        mask = Window(rt_mask4[quad], rt_mask4[quad + 1u]);
    }
    let out = rt_epilogue_row(p, row, lo, hi, residual, mask);
    rt_store_row_aligned(p, block, row, out);
    return out;
}

// Quad of a block's row in dst; rows past the end read the last row's
// (valid, and not stored).
fn rt_quad_aligned(p: ImplicitGemm, block: RtBlock, row: u32) -> u32 {
    return rt_dst_index(p, block, min(row, p.rows - 1u)) / 4u;
}

fn rt_epilogue_aligned(p: ImplicitGemm, block: RtBlock, row0: u32, acc: ptr<function, array<vec4<f32>, 32>>) {
    var rows = *acc;
    for (var i = 0u; i < 16u; i++) {
        rt_epilogue_row_aligned(p, block, row0 + i, rt_quad_aligned(p, block, row0 + i), rows[2u * i], rows[2u * i + 1u]);
    }
}

@compute @workgroup_size(8)
fn conv2d_implicit_gemm_aligned_fused(ids: Ids) {
    let p = rt_params;
    var acc0: array<vec4<f32>, 32>;
    var acc1: array<vec4<f32>, 32>;
    var acc2: array<vec4<f32>, 32>;
    let tile = rt_gemm(p, ids, &acc0, &acc1, &acc2);
    rt_epilogue_aligned(p, tile.block0, tile.row0, &acc0);
    rt_epilogue_aligned(p, tile.block1, tile.row0, &acc1);
    rt_epilogue_aligned(p, tile.block2, tile.row0, &acc2);
}

// conv2d_implicit_gemm_aligned_statistics: the aligned forward, which also
// leaves partial sums of its output's per-channel batch statistics for the
// batch norm that follows it in training, so that the batch norm reads one
// vec4 per 24 outputs instead of every output (batch_norm_statistics_partials).
// For row r of the tile, over its live pixels d = y - pivot, the pivot being
// the row's first pixel: (pixels, pivot, sum of d, sum of d^2) at
// rt_statistics[slot * rows + r]. A tile without live pixels
// stores nothing; its slot keeps its zeros (0 pixels).
@group(0) @binding(14) var<storage, read_write> rt_statistics: array<vec4<f32>>;

// Row i of the tile's statistics from its pixels in blocks 0, 1 and 2; rows
// past the end store nothing.
fn rt_statistics_row(p: ImplicitGemm, tile: RtTile, i: u32, x: Window, y: Window, z: Window) {
    let row = tile.row0 + i;
    if row >= p.rows {
        return;
    }
    // Aligned blocks are whole or past the end, and consecutive: block 1
    // past the end means block 2 is too.
    let zero = vec4<f32>(0.0);
    let pivot = x.lo.x;
    let d0 = x.lo - pivot;
    let e0 = x.hi - pivot;
    let d1 = select(zero, y.lo - pivot, tile.block1.live > 0u);
    let e1 = select(zero, y.hi - pivot, tile.block1.live > 0u);
    let d2 = select(zero, z.lo - pivot, tile.block2.live > 0u);
    let e2 = select(zero, z.hi - pivot, tile.block2.live > 0u);
    let ones = vec4<f32>(1.0);
    let sum = dot(d0 + e0 + d1 + e1 + d2 + e2, ones);
    let squares = dot(d0 * d0 + e0 * e0 + d1 * d1 + e1 * e1 + d2 * d2 + e2 * e2, ones);
    let pixels = f32(tile.block0.live + tile.block1.live + tile.block2.live);
    rt_statistics[tile.slot * p.rows + row] = vec4<f32>(pixels, pivot, sum, squares);
}

// Row by row with constant indices, so that the accumulators need no copy
// (a loop over a copy made the forward 1.04x slower).
fn rt_store_statistics(p: ImplicitGemm, tile: RtTile, acc0: ptr<function, array<vec4<f32>, 32>>, acc1: ptr<function, array<vec4<f32>, 32>>, acc2: ptr<function, array<vec4<f32>, 32>>) {
    if tile.block0.live == 0u {
        return;
    }
    rt_statistics_row(p, tile, 0u, Window((*acc0)[0], (*acc0)[1]), Window((*acc1)[0], (*acc1)[1]), Window((*acc2)[0], (*acc2)[1]));
    rt_statistics_row(p, tile, 1u, Window((*acc0)[2], (*acc0)[3]), Window((*acc1)[2], (*acc1)[3]), Window((*acc2)[2], (*acc2)[3]));
    rt_statistics_row(p, tile, 2u, Window((*acc0)[4], (*acc0)[5]), Window((*acc1)[4], (*acc1)[5]), Window((*acc2)[4], (*acc2)[5]));
    rt_statistics_row(p, tile, 3u, Window((*acc0)[6], (*acc0)[7]), Window((*acc1)[6], (*acc1)[7]), Window((*acc2)[6], (*acc2)[7]));
    rt_statistics_row(p, tile, 4u, Window((*acc0)[8], (*acc0)[9]), Window((*acc1)[8], (*acc1)[9]), Window((*acc2)[8], (*acc2)[9]));
    rt_statistics_row(p, tile, 5u, Window((*acc0)[10], (*acc0)[11]), Window((*acc1)[10], (*acc1)[11]), Window((*acc2)[10], (*acc2)[11]));
    rt_statistics_row(p, tile, 6u, Window((*acc0)[12], (*acc0)[13]), Window((*acc1)[12], (*acc1)[13]), Window((*acc2)[12], (*acc2)[13]));
    rt_statistics_row(p, tile, 7u, Window((*acc0)[14], (*acc0)[15]), Window((*acc1)[14], (*acc1)[15]), Window((*acc2)[14], (*acc2)[15]));
    rt_statistics_row(p, tile, 8u, Window((*acc0)[16], (*acc0)[17]), Window((*acc1)[16], (*acc1)[17]), Window((*acc2)[16], (*acc2)[17]));
    rt_statistics_row(p, tile, 9u, Window((*acc0)[18], (*acc0)[19]), Window((*acc1)[18], (*acc1)[19]), Window((*acc2)[18], (*acc2)[19]));
    rt_statistics_row(p, tile, 10u, Window((*acc0)[20], (*acc0)[21]), Window((*acc1)[20], (*acc1)[21]), Window((*acc2)[20], (*acc2)[21]));
    rt_statistics_row(p, tile, 11u, Window((*acc0)[22], (*acc0)[23]), Window((*acc1)[22], (*acc1)[23]), Window((*acc2)[22], (*acc2)[23]));
    rt_statistics_row(p, tile, 12u, Window((*acc0)[24], (*acc0)[25]), Window((*acc1)[24], (*acc1)[25]), Window((*acc2)[24], (*acc2)[25]));
    rt_statistics_row(p, tile, 13u, Window((*acc0)[26], (*acc0)[27]), Window((*acc1)[26], (*acc1)[27]), Window((*acc2)[26], (*acc2)[27]));
    rt_statistics_row(p, tile, 14u, Window((*acc0)[28], (*acc0)[29]), Window((*acc1)[28], (*acc1)[29]), Window((*acc2)[28], (*acc2)[29]));
    rt_statistics_row(p, tile, 15u, Window((*acc0)[30], (*acc0)[31]), Window((*acc1)[30], (*acc1)[31]), Window((*acc2)[30], (*acc2)[31]));
}

@compute @workgroup_size(8)
fn conv2d_implicit_gemm_aligned_statistics(ids: Ids) {
    let p = rt_params;
    var acc0: array<vec4<f32>, 32>;
    var acc1: array<vec4<f32>, 32>;
    var acc2: array<vec4<f32>, 32>;
    let tile = rt_gemm(p, ids, &acc0, &acc1, &acc2);
    rt_store_tile_aligned(p, tile, &acc0, &acc1, &acc2);
    rt_store_statistics(p, tile, &acc0, &acc1, &acc2);
}

// conv2d_implicit_gemm_aligned_fused_sums: the aligned fused backward-data
// where what it writes, dst, is the output gradient of a training batch norm
// whose input is `rt_sums_x`: it also leaves partial sums of that batch
// norm's backward reduce, so that the reduce reads one vec4 per 24 values
// instead of x and dy (batch_norm_backward_reduce_partials). For row r of
// the tile, over its live pixels: (sum of dst, sum of dst * (x - pivot),
// pivot, 0) at rt_sums[slot * rows + r], the pivot being the row's first x.
// A tile without live pixels stores nothing; its slot keeps its zeros.
@group(0) @binding(17) var<storage, read> rt_sums_x: array<vec4<f32>>;
@group(0) @binding(18) var<storage, read_write> rt_sums: array<vec4<f32>>;

// The epilogue of a block's row, stored, with its sums: (sum of dst, sum of
// dst * (x - pivot)), zero for a block past the end.
fn rt_epilogue_row_sums(p: ImplicitGemm, block: RtBlock, row: u32, lo: vec4<f32>, hi: vec4<f32>, pivot: f32) -> vec2<f32> {
    let quad = rt_quad_aligned(p, block, row);
    let dy = rt_epilogue_row_aligned(p, block, row, quad, lo, hi);
    let x = Window(rt_sums_x[quad], rt_sums_x[quad + 1u]);
    let ones = vec4<f32>(1.0);
    let sums = vec2<f32>(dot(dy.lo + dy.hi, ones), dot(dy.lo * (x.lo - pivot) + dy.hi * (x.hi - pivot), ones));
    return select(vec2<f32>(0.0), sums, block.live > 0u);
}

// Row by row, the row's three blocks together, so that its sums need no
// array carried across blocks. In ResNet-20's training step on llvmpipe
// these GEMMs took 1.06x the plain fused ones' time (1971 against 1864 ms),
// most of it loading x; with such an array, 1.08x.
fn rt_epilogue_tile_sums(p: ImplicitGemm, tile: RtTile, acc0: ptr<function, array<vec4<f32>, 32>>, acc1: ptr<function, array<vec4<f32>, 32>>, acc2: ptr<function, array<vec4<f32>, 32>>) {
    var rows0 = *acc0;
    var rows1 = *acc1;
    var rows2 = *acc2;
    for (var i = 0u; i < 16u; i++) {
        let row = tile.row0 + i;
        let pivot = rt_sums_x[rt_quad_aligned(p, tile.block0, row)].x;
        let sums = rt_epilogue_row_sums(p, tile.block0, row, rows0[2u * i], rows0[2u * i + 1u], pivot)
            + rt_epilogue_row_sums(p, tile.block1, row, rows1[2u * i], rows1[2u * i + 1u], pivot)
            + rt_epilogue_row_sums(p, tile.block2, row, rows2[2u * i], rows2[2u * i + 1u], pivot);
        if tile.block0.live > 0u && row < p.rows {
            rt_sums[tile.slot * p.rows + row] = vec4<f32>(sums, pivot, 0.0);
        }
    }
}

@compute @workgroup_size(8)
fn conv2d_implicit_gemm_aligned_fused_sums(ids: Ids) {
    let p = rt_params;
    var acc0: array<vec4<f32>, 32>;
    var acc1: array<vec4<f32>, 32>;
    var acc2: array<vec4<f32>, 32>;
    let tile = rt_gemm(p, ids, &acc0, &acc1, &acc2);
    rt_epilogue_tile_sums(p, tile, &acc0, &acc1, &acc2);
}
// END register tile.

// BEGIN workgroup tile
// Workgroup-memory tiles shared by the two tiled kernels, as vec4s of 4
// consecutive rows (a: `depth` x `a_width`) or columns (b: `depth` x
// `b_width`), k-major.
var<workgroup> tile_a: array<vec4<f32>, 256>;
var<workgroup> tile_b: array<vec4<f32>, 256>;

// Multiplies the staged tiles into this invocation's 4x4 outputs: rows 4 ty.., columns 4 tx...
fn accumulate_tiles(acc: ptr<function, array<vec4<f32>, 4>>, tx: u32, ty: u32, depth: u32, a_width: u32, b_width: u32) {
    for (var k = 0u; k < depth; k++) {
        let a = tile_a[k * a_width + ty];
        let b = tile_b[k * b_width + tx];
        (*acc)[0] += a.x * b;
        (*acc)[1] += a.y * b;
        (*acc)[2] += a.z * b;
        (*acc)[3] += a.w * b;
    }
}

// conv2d_implicit_gemm_tiled (workgroup tile): a workgroup computes R x 256/R
// vec4s of rows x columns (R = tile_row_quads) in slices R deep. Each
// invocation stages 4 columns of a slice, and the first R x R 4 rows.
@group(0) @binding(20) var<uniform> wt_params: ImplicitGemm;
@group(0) @binding(21) var<storage, read> wt_wt: array<vec4<f32>>;
@group(0) @binding(22) var<storage, read> wt_src: array<f32>;
@group(0) @binding(23) var<storage, read_write> wt_dst: array<f32>;
// conv2d_implicit_gemm_tiled_fused only, as rt_bias, rt_residual and rt_mask.
@group(0) @binding(24) var<storage, read> wt_bias: array<f32>;
@group(0) @binding(25) var<storage, read> wt_residual: array<f32>;
@group(0) @binding(26) var<storage, read> wt_mask: array<f32>;

fn wt_store_row(p: ImplicitGemm, cols: Columns4, row: u32, v: vec4<f32>) {
    if row >= p.rows {
        return;
    }
    let offset = row * p.dst_h * p.dst_w;
    if cols.live.x { wt_dst[cols.dst.x + offset] = v.x; }
    if cols.live.y { wt_dst[cols.dst.y + offset] = v.y; }
    if cols.live.z { wt_dst[cols.dst.z + offset] = v.z; }
    if cols.live.w { wt_dst[cols.dst.w + offset] = v.w; }
}

// The workgroup's tile: its first row and column (uniform over the
// workgroup: the early returns before the barriers depend on it).
struct WtTile {
    row0: u32,
    col0: u32,
}

fn wt_tile(p: ImplicitGemm, wg: vec3<u32>, groups: vec3<u32>) -> WtTile {
    return WtTile(wg.z * p.tile_row_quads * 4u, (wg.x + wg.y * groups.x) * (256u / p.tile_row_quads) * 4u);
}

// This invocation's outputs in the tile: columns 4 x.. and rows 4 y...
fn wt_local(p: ImplicitGemm, lid: u32) -> vec2<u32> {
    let col_quads = 256u / p.tile_row_quads;
    return vec2<u32>(lid % col_quads, lid / col_quads);
}

// The GEMM's k = (tap, channel): its weight tap and channel.
fn wt_depth(p: ImplicitGemm, k: u32) -> vec3<u32> {
    let t = k / p.channels;
    return vec3<u32>(t / p.taps_w, t % p.taps_w, k % p.channels);
}

// Accumulates this invocation's 4x4 outputs of the workgroup's tile. Has
// barriers: call it in uniform control flow.
fn wt_gemm(p: ImplicitGemm, tile: WtTile, lid: u32, acc: ptr<function, array<vec4<f32>, 4>>) {
    let r = p.tile_row_quads;
    let col_quads = 256u / r;
    let depth = p.taps_h * p.taps_w * p.channels;
    let plane = p.src_h * p.src_w;
    let stages_a = lid < r * r;
    let stage_row = tile.row0 + (lid % r) * 4u;
    let stage_cols = columns4(p, tile.col0 + (lid % col_quads) * 4u);
    for (var k0 = 0u; k0 < depth; k0 += r) {
        let ka = k0 + lid / r;
        if stages_a {
            var a = vec4<f32>(0.0);
            if ka < depth && stage_row < p.rows_padded {
                let d = wt_depth(p, ka);
                a = wt_wt[((weight_tap(p, d.x, d.y) * p.channels_padded + d.z) * p.rows_padded + stage_row) / 4u];
            }
            tile_a[lid] = a;
        }
        let kb = k0 + lid / col_quads;
        var b = vec4<f32>(0.0);
        if kb < depth {
            let d = wt_depth(p, kb);
            let tap = tap4(p, stage_cols, d.x, d.y);
            let s = d.z * plane;
            b = vec4<f32>(wt_src[tap.offset.x + s], wt_src[tap.offset.y + s], wt_src[tap.offset.z + s], wt_src[tap.offset.w + s]) * tap.mask;
        }
        tile_b[lid] = b;
        workgroupBarrier();
        let local = wt_local(p, lid);
        accumulate_tiles(acc, local.x, local.y, r, r, col_quads);
        workgroupBarrier();
    }
}

// The epilogue for 4 columns of a row; rows past the end read clamped
// addresses (valid, and not stored), as do dead columns.
fn wt_epilogue(p: ImplicitGemm, cols: Columns4, row: u32, v: vec4<f32>) -> vec4<f32> {
    let r = min(row, p.rows - 1u);
    var out = v + wt_bias[r];
    let at = cols.dst + r * p.dst_h * p.dst_w;
    if (p.epilogue & EPILOGUE_RESIDUAL) != 0u {
        out += vec4<f32>(wt_residual[at.x], wt_residual[at.y], wt_residual[at.z], wt_residual[at.w]);
    }
    if (p.epilogue & EPILOGUE_RELU) != 0u {
        out = max(out, vec4<f32>(0.0));
    }
    if (p.epilogue & EPILOGUE_MASK) != 0u {
        out = select(vec4<f32>(0.0), out, vec4<f32>(wt_mask[at.x], wt_mask[at.y], wt_mask[at.z], wt_mask[at.w]) > vec4<f32>(0.0));
    }
    return out;
}

@compute @workgroup_size(256)
fn conv2d_implicit_gemm_tiled(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let p = wt_params;
    let tile = wt_tile(p, wg, groups);
    // Uniform per workgroup, so the barriers in wt_gemm stay in uniform control flow.
    if tile.col0 >= p.columns {
        return;
    }
    var acc: array<vec4<f32>, 4>;
    wt_gemm(p, tile, lid, &acc);
    let local = wt_local(p, lid);
    let cols = columns4(p, tile.col0 + local.x * 4u);
    let row = tile.row0 + local.y * 4u;
    wt_store_row(p, cols, row, acc[0]);
    wt_store_row(p, cols, row + 1u, acc[1]);
    wt_store_row(p, cols, row + 2u, acc[2]);
    wt_store_row(p, cols, row + 3u, acc[3]);
}

// conv2d_implicit_gemm_tiled_fused: the GEMM, then the epilogue.
@compute @workgroup_size(256)
fn conv2d_implicit_gemm_tiled_fused(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let p = wt_params;
    let tile = wt_tile(p, wg, groups);
    if tile.col0 >= p.columns {
        return;
    }
    var acc: array<vec4<f32>, 4>;
    wt_gemm(p, tile, lid, &acc);
    let local = wt_local(p, lid);
    let cols = columns4(p, tile.col0 + local.x * 4u);
    let row = tile.row0 + local.y * 4u;
    wt_store_row(p, cols, row, wt_epilogue(p, cols, row, acc[0]));
    wt_store_row(p, cols, row + 1u, wt_epilogue(p, cols, row + 1u, acc[1]));
    wt_store_row(p, cols, row + 2u, wt_epilogue(p, cols, row + 2u, acc[2]));
    wt_store_row(p, cols, row + 3u, wt_epilogue(p, cols, row + 3u, acc[3]));
}
// END workgroup tile.

// BEGIN compact tile
// conv2d_implicit_gemm_compact (compact tile: CPU adapters in browsers, e.g.
// SwiftShader): 8 rows x 8 consecutive pixels of a destination row per
// invocation, no barriers, 8 invocations per workgroup, all on the same 8 rows
// (workgroup_id.z), so the weights they load are the same for the whole
// workgroup. Written for what SwiftShader's shader compiler and 4-wide SIMD
// code need, found by measuring (see conv2d.rs):
// - no `&&` or `||`: each is a branch, and SwiftShader's compile time grows
//   exponentially with branches in a loop body (the register tile did not
//   compile in minutes);
// - no branch inside a loop, even a uniform one (a loop body with one ran 4x
//   slower);
// - 16 vec4 accumulators: 16x8 or 8x16 tiles ran slower, 4x8 loads too much;
// - every load is a gather of one f32 per invocation, the expensive part:
//   with 3 taps per row at stride 1 a 10-pixel window serves all 3 taps,
//   at stride 2 17 pixels, and 7 taps of stride 2 (the stem) 24. Each of
//   these fast paths has entry points of its own: a path added to ct_gemm
//   slows its others, and every path compiles slowly on SwiftShader, where
//   a page waits for its first plan's pipelines (see CONTRIBUTING.md).
@group(0) @binding(60) var<uniform> ct_params: ImplicitGemm;
@group(0) @binding(61) var<storage, read> ct_wt: array<vec4<f32>>;
@group(0) @binding(62) var<storage, read> ct_src: array<f32>;
@group(0) @binding(63) var<storage, read_write> ct_dst: array<f32>;
// The fused entry points only, as rt_bias, rt_residual and rt_mask (the
// mask: conv2d_implicit_gemm_compact_masked only).
@group(0) @binding(64) var<storage, read> ct_bias: array<f32>;
@group(0) @binding(65) var<storage, read> ct_residual: array<f32>;
@group(0) @binding(66) var<storage, read> ct_mask: array<f32>;

// 8 consecutive rows of wt (one tap and channel).
struct Rows8 {
    lo: vec4<f32>,
    hi: vec4<f32>,
}
// END compact tile.

// BEGIN plain loads: the weights of the register and compact tiles. Where
// the device has subgroups the engine swaps this block for
// `SUBGROUP_WEIGHT_LOADS` (conv2d.rs): the invocations of a workgroup share
// their weights, so lane l of a subgroup loads one vec4 and the subgroup
// broadcasts them, instead of every invocation loading the same 8 or 16
// weights.
struct Ids {
    @builtin(global_invocation_id) global: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(workgroup_id) workgroup: vec3<u32>,
}

// The invocation's lane in its subgroup (unused without subgroups).
fn subgroup_lane(ids: Ids) -> u32 {
    return 0u;
}

// BEGIN compact tile
fn ct_rows(index: u32, lane: u32) -> Rows8 {
    return Rows8(ct_wt[index], ct_wt[index + 1u]);
}

// 4 consecutive rows of wt.
fn ct_rows4(index: u32, lane: u32) -> vec4<f32> {
    return ct_wt[index];
}
// END compact tile.

// BEGIN register tile
// 16 consecutive rows of wt (one tap and channel).
fn rt_rows(index: u32, lane: u32) -> Rows16 {
    return Rows16(rt_wt[index], rt_wt[index + 1u], rt_wt[index + 2u], rt_wt[index + 3u]);
}

// dy at `own` (one pixel of the invocation's group) for its 16 output
// channels. `loads`: the pixel of the group whose dy this lane loads for the
// subgroup (subgroup loads only).
fn rw_rows(own: u32, loads: u32, d: DyChannels) -> Rows16 {
    return Rows16(
        vec4<f32>(mirrored(rw_dy, own + d.d0.x), mirrored(rw_dy, own + d.d0.y), mirrored(rw_dy, own + d.d0.z), mirrored(rw_dy, own + d.d0.w)),
        vec4<f32>(mirrored(rw_dy, own + d.d1.x), mirrored(rw_dy, own + d.d1.y), mirrored(rw_dy, own + d.d1.z), mirrored(rw_dy, own + d.d1.w)),
        vec4<f32>(mirrored(rw_dy, own + d.d2.x), mirrored(rw_dy, own + d.d2.y), mirrored(rw_dy, own + d.d2.z), mirrored(rw_dy, own + d.d2.w)),
        vec4<f32>(mirrored(rw_dy, own + d.d3.x), mirrored(rw_dy, own + d.d3.y), mirrored(rw_dy, own + d.d3.z), mirrored(rw_dy, own + d.d3.w)),
    );
}
// END register tile.
// END plain loads.

// BEGIN compact tile
// acc[2i + h] += a_i * x_h: 8 rows a with 8 pixels x (lo: 0..3, hi: 4..7).
fn ct_outer_product(acc: ptr<function, array<vec4<f32>, 16>>, a: Rows8, x: Window) {
    (*acc)[0] += a.lo.x * x.lo;
    (*acc)[1] += a.lo.x * x.hi;
    (*acc)[2] += a.lo.y * x.lo;
    (*acc)[3] += a.lo.y * x.hi;
    (*acc)[4] += a.lo.z * x.lo;
    (*acc)[5] += a.lo.z * x.hi;
    (*acc)[6] += a.lo.w * x.lo;
    (*acc)[7] += a.lo.w * x.hi;
    (*acc)[8] += a.hi.x * x.lo;
    (*acc)[9] += a.hi.x * x.hi;
    (*acc)[10] += a.hi.y * x.lo;
    (*acc)[11] += a.hi.y * x.hi;
    (*acc)[12] += a.hi.z * x.lo;
    (*acc)[13] += a.hi.z * x.hi;
    (*acc)[14] += a.hi.w * x.lo;
    (*acc)[15] += a.hi.w * x.hi;
}

// Block `index` of 8 destination pixels (as rt_block), clamped to a valid one
// (live 0) past the last.
fn ct_block(p: ImplicitGemm, index: u32) -> RtBlock {
    return rt_block(p, index, rt_blocks(p));
}

// Where a block reads tap row `th`: the row's offset in src, and whether the
// row lies inside the image.
fn ct_row(p: ImplicitGemm, block: RtBlock, th: u32) -> RtRow {
    let r = i32(block.qh * p.src_step) + p.src_first_h + i32(th) * p.src_tap_step;
    let base = block.image * p.channels * p.src_h * p.src_w + u32(clamp(r, 0, i32(p.src_h) - 1)) * p.src_w;
    return RtRow(base, (r >= 0) & (r < i32(p.src_h)));
}

// Four source columns of a row: offsets in src (clamped into the row) and 0/1
// masks (0 in the padding), so that loads need no branch.
struct Cols4 {
    offset: vec4<u32>,
    mask: vec4<f32>,
}

fn ct_cols(p: ImplicitGemm, row: RtRow, col: vec4<i32>) -> Cols4 {
    let w = i32(p.src_w);
    let ok = (col >= vec4<i32>(0)) & (col < vec4<i32>(w)) & vec4<bool>(row.ok);
    let offset = row.base + vec4<u32>(clamp(col, vec4<i32>(0), vec4<i32>(w - 1)));
    return Cols4(offset, select(vec4<f32>(0.0), vec4<f32>(1.0), ok));
}

// The four pixels of `cols` in the channel plane at `plane_offset`.
fn ct_pixels(plane_offset: u32, cols: Cols4) -> vec4<f32> {
    let o = cols.offset + plane_offset;
    return vec4<f32>(ct_src[o.x], ct_src[o.y], ct_src[o.z], ct_src[o.w]) * cols.mask;
}

// Accumulates the 8 rows from 8 * row_block of `block` into acc: any taps,
// strides and tap steps (backward-data too), 8 pixels per tap.
fn ct_gemm(p: ImplicitGemm, block: RtBlock, row_block: u32, lane: u32, acc: ptr<function, array<vec4<f32>, 16>>) {
    let plane = p.src_h * p.src_w;
    // wt in vec4s: a channel step is rows_padded / 4, a tap step
    // channels_padded channel steps, the row block 2 vec4s.
    let a_step = p.rows_padded / 4u;
    let tap_step = p.channels_padded * a_step;
    let s = i32(p.src_step);
    let iota = vec4<i32>(0, 1, 2, 3);
    let first = i32(block.qw0 * p.src_step) + p.src_first_w;
    for (var th = 0u; th < p.taps_h; th++) {
        let row = ct_row(p, block, th);
        for (var tw = 0u; tw < p.taps_w; tw++) {
            let col = first + i32(tw) * p.src_tap_step;
            let lo = ct_cols(p, row, vec4<i32>(col) + iota * s);
            let hi = ct_cols(p, row, vec4<i32>(col + 4 * s) + iota * s);
            var a = weight_tap(p, th, tw) * tap_step + row_block * 2u;
            for (var c = 0u; c < p.channels; c++) {
                let offset = c * plane;
                ct_outer_product(acc, ct_rows(a, lane), Window(ct_pixels(offset, lo), ct_pixels(offset, hi)));
                a += a_step;
            }
        }
    }
}

// ct_gemm for 3 taps of stride 1 (3x3 convolutions): per channel and tap
// row, one window of 10 pixels, shifted by one pixel per tap, instead of 24.
fn ct_gemm_3_taps_stride1(p: ImplicitGemm, block: RtBlock, row_block: u32, lane: u32, acc: ptr<function, array<vec4<f32>, 16>>) {
    let plane = p.src_h * p.src_w;
    let a_step = p.rows_padded / 4u;
    let tap_step = p.channels_padded * a_step;
    let iota = vec4<i32>(0, 1, 2, 3);
    let first = i32(block.qw0) + p.src_first_w;
    for (var th = 0u; th < p.taps_h; th++) {
        let row = ct_row(p, block, th);
        let cols_a = ct_cols(p, row, vec4<i32>(first) + iota);
        let cols_b = ct_cols(p, row, vec4<i32>(first + 4) + iota);
        let cols_c = ct_cols(p, row, vec4<i32>(first + 8) + iota);
        var a = weight_tap(p, th, 0u) * tap_step + row_block * 2u;
        for (var c = 0u; c < p.channels; c++) {
            let offset = c * plane;
            let x = ct_pixels(offset, cols_a);
            let y = ct_pixels(offset, cols_b);
            let z = vec2<f32>(ct_src[offset + cols_c.offset.x], ct_src[offset + cols_c.offset.y]) * cols_c.mask.xy;
            ct_outer_product(acc, ct_rows(a, lane), Window(x, y));
            ct_outer_product(acc, ct_rows(a + tap_step, lane), Window(vec4<f32>(x.yzw, y.x), vec4<f32>(y.yzw, z.x)));
            ct_outer_product(acc, ct_rows(a + 2u * tap_step, lane), Window(vec4<f32>(x.zw, y.xy), vec4<f32>(y.zw, z)));
            a += a_step;
        }
    }
}

// ct_gemm for 7 taps of stride 2 (ResNet's 7x7 stem): tap tw of output pixel
// j reads source pixel first + 2j + tw, so per channel and tap row the 22
// pixels first..first + 21 (24 loaded: six gathers of 4) serve all 7 taps,
// instead of 8 gathers per tap.
fn ct_gemm_7_taps_stride2(p: ImplicitGemm, block: RtBlock, row_block: u32, lane: u32, acc: ptr<function, array<vec4<f32>, 16>>) {
    let plane = p.src_h * p.src_w;
    let a_step = p.rows_padded / 4u;
    let tap_step = p.channels_padded * a_step;
    let evens = vec4<i32>(0, 2, 4, 6);
    let first = i32(block.qw0 * 2u) + p.src_first_w;
    for (var th = 0u; th < p.taps_h; th++) {
        let row = ct_row(p, block, th);
        let e0 = ct_cols(p, row, vec4<i32>(first) + evens);
        let e1 = ct_cols(p, row, vec4<i32>(first + 8) + evens);
        let e2 = ct_cols(p, row, vec4<i32>(first + 16) + evens);
        let o0 = ct_cols(p, row, vec4<i32>(first + 1) + evens);
        let o1 = ct_cols(p, row, vec4<i32>(first + 9) + evens);
        let o2 = ct_cols(p, row, vec4<i32>(first + 17) + evens);
        var a = weight_tap(p, th, 0u) * tap_step + row_block * 2u;
        for (var c = 0u; c < p.channels; c++) {
            let offset = c * plane;
            // even[k] = pixel first + 2k, odd[k] = pixel first + 2k + 1.
            let x0 = ct_pixels(offset, e0);
            let x1 = ct_pixels(offset, e1);
            let x2 = ct_pixels(offset, e2);
            let y0 = ct_pixels(offset, o0);
            let y1 = ct_pixels(offset, o1);
            let y2 = ct_pixels(offset, o2);
            ct_outer_product(acc, ct_rows(a, lane), Window(x0, x1));
            ct_outer_product(acc, ct_rows(a + tap_step, lane), Window(y0, y1));
            ct_outer_product(acc, ct_rows(a + 2u * tap_step, lane), Window(vec4<f32>(x0.yzw, x1.x), vec4<f32>(x1.yzw, x2.x)));
            ct_outer_product(acc, ct_rows(a + 3u * tap_step, lane), Window(vec4<f32>(y0.yzw, y1.x), vec4<f32>(y1.yzw, y2.x)));
            ct_outer_product(acc, ct_rows(a + 4u * tap_step, lane), Window(vec4<f32>(x0.zw, x1.xy), vec4<f32>(x1.zw, x2.xy)));
            ct_outer_product(acc, ct_rows(a + 5u * tap_step, lane), Window(vec4<f32>(y0.zw, y1.xy), vec4<f32>(y1.zw, y2.xy)));
            ct_outer_product(acc, ct_rows(a + 6u * tap_step, lane), Window(vec4<f32>(x0.w, x1.xyz), vec4<f32>(x1.w, x2.xyz)));
            a += a_step;
        }
    }
}

// ct_gemm for 3 taps of stride 2 (ResNets' downsampling 3x3 convolutions):
// as ct_gemm_7_taps_stride2, the 17 pixels first..first + 16 (four gathers
// of 4 and one pixel) serve all 3 taps, instead of 6 gathers.
fn ct_gemm_3_taps_stride2(p: ImplicitGemm, block: RtBlock, row_block: u32, lane: u32, acc: ptr<function, array<vec4<f32>, 16>>) {
    let plane = p.src_h * p.src_w;
    let a_step = p.rows_padded / 4u;
    let tap_step = p.channels_padded * a_step;
    let evens = vec4<i32>(0, 2, 4, 6);
    let first = i32(block.qw0 * 2u) + p.src_first_w;
    for (var th = 0u; th < p.taps_h; th++) {
        let row = ct_row(p, block, th);
        let e0 = ct_cols(p, row, vec4<i32>(first) + evens);
        let e1 = ct_cols(p, row, vec4<i32>(first + 8) + evens);
        let o0 = ct_cols(p, row, vec4<i32>(first + 1) + evens);
        let o1 = ct_cols(p, row, vec4<i32>(first + 9) + evens);
        let last = ct_cols(p, row, vec4<i32>(first + 16));
        var a = weight_tap(p, th, 0u) * tap_step + row_block * 2u;
        for (var c = 0u; c < p.channels; c++) {
            let offset = c * plane;
            let x0 = ct_pixels(offset, e0);
            let x1 = ct_pixels(offset, e1);
            let x2 = ct_src[offset + last.offset.x] * last.mask.x;
            ct_outer_product(acc, ct_rows(a, lane), Window(x0, x1));
            ct_outer_product(acc, ct_rows(a + tap_step, lane), Window(ct_pixels(offset, o0), ct_pixels(offset, o1)));
            ct_outer_product(acc, ct_rows(a + 2u * tap_step, lane), Window(vec4<f32>(x0.yzw, x1.x), vec4<f32>(x1.yzw, x2)));
            a += a_step;
        }
    }
}

// Block index of an invocation: blocks over x and y, 8 per workgroup.
fn ct_block_index(ids: Ids) -> u32 {
    return ids.global.x + ids.global.y * ids.groups.x * 8u;
}

// Stores 8 pixels of a row, those of the block and not past the last row.
// Branch-free inside (an early return makes SwiftShader's compile slower):
// pixels past the block's end write to its last pixel, before it does.
fn ct_store_row(p: ImplicitGemm, block: RtBlock, row: u32, lo: vec4<f32>, hi: vec4<f32>) {
    let n = block.live;
    if (row < p.rows) & (n > 0u) {
        let base = rt_dst_index(p, block, row);
        let last = n - 1u;
        let step = p.dst_step;
        ct_dst[base + min(7u, last) * step] = hi.w;
        ct_dst[base + min(6u, last) * step] = hi.z;
        ct_dst[base + min(5u, last) * step] = hi.y;
        ct_dst[base + min(4u, last) * step] = hi.x;
        ct_dst[base + min(3u, last) * step] = lo.w;
        ct_dst[base + min(2u, last) * step] = lo.z;
        ct_dst[base + min(1u, last) * step] = lo.y;
        ct_dst[base] = lo.x;
    }
}

// Stores the 8 x 8 tile of acc, rows from row0.
fn ct_store(p: ImplicitGemm, block: RtBlock, row0: u32, acc: ptr<function, array<vec4<f32>, 16>>) {
    ct_store_row(p, block, row0, (*acc)[0], (*acc)[1]);
    ct_store_row(p, block, row0 + 1u, (*acc)[2], (*acc)[3]);
    ct_store_row(p, block, row0 + 2u, (*acc)[4], (*acc)[5]);
    ct_store_row(p, block, row0 + 3u, (*acc)[6], (*acc)[7]);
    ct_store_row(p, block, row0 + 4u, (*acc)[8], (*acc)[9]);
    ct_store_row(p, block, row0 + 5u, (*acc)[10], (*acc)[11]);
    ct_store_row(p, block, row0 + 6u, (*acc)[12], (*acc)[13]);
    ct_store_row(p, block, row0 + 7u, (*acc)[14], (*acc)[15]);
}

// The compact entry points: the block and rows of an invocation, the GEMM,
// then ct_store or (fused) ct_epilogue. No early return before the GEMM: with
// subgroups every invocation of the workgroup takes part in the broadcasts
// (blocks past the end compute a clamped block and store nothing).
@compute @workgroup_size(8)
fn conv2d_implicit_gemm_compact(ids: Ids) {
    let p = ct_params;
    let block = ct_block(p, ct_block_index(ids));
    var acc: array<vec4<f32>, 16>;
    ct_gemm(p, block, ids.workgroup.z, subgroup_lane(ids), &acc);
    ct_store(p, block, ids.workgroup.z * 8u, &acc);
}

@compute @workgroup_size(8)
fn conv2d_implicit_gemm_compact_3_taps_stride1(ids: Ids) {
    let p = ct_params;
    let block = ct_block(p, ct_block_index(ids));
    var acc: array<vec4<f32>, 16>;
    ct_gemm_3_taps_stride1(p, block, ids.workgroup.z, subgroup_lane(ids), &acc);
    ct_store(p, block, ids.workgroup.z * 8u, &acc);
}

@compute @workgroup_size(8)
fn conv2d_implicit_gemm_compact_7_taps_stride2(ids: Ids) {
    let p = ct_params;
    let block = ct_block(p, ct_block_index(ids));
    var acc: array<vec4<f32>, 16>;
    ct_gemm_7_taps_stride2(p, block, ids.workgroup.z, subgroup_lane(ids), &acc);
    ct_store(p, block, ids.workgroup.z * 8u, &acc);
}

// Where row `row` of a block's epilogue reads and stores its pixels 0-3 (lo)
// and 4-7 (hi). Rows past the end read clamped addresses (valid, and not
// stored), as do pixels past the end of the block.
struct CtPixels {
    lo: vec4<u32>,
    hi: vec4<u32>,
}

fn ct_epilogue_pixels(p: ImplicitGemm, block: RtBlock, row: u32) -> CtPixels {
    let base = rt_dst_index(p, block, row);
    let last = vec4<u32>(max(block.live, 1u) - 1u);
    return CtPixels(base + min(vec4<u32>(0u, 1u, 2u, 3u), last) * p.dst_step, base + min(vec4<u32>(4u, 5u, 6u, 7u), last) * p.dst_step);
}

// Row `row` of the GEMM (lo, hi at `at`) plus its bias, then the residual
// and ReLU where p.epilogue says.
fn ct_epilogue_values(p: ImplicitGemm, row: u32, at: CtPixels, lo: vec4<f32>, hi: vec4<f32>) -> Window {
    let bias = ct_bias[row];
    var x = lo + bias;
    var y = hi + bias;
    if (p.epilogue & EPILOGUE_RESIDUAL) != 0u {
        x += vec4<f32>(ct_residual[at.lo.x], ct_residual[at.lo.y], ct_residual[at.lo.z], ct_residual[at.lo.w]);
        y += vec4<f32>(ct_residual[at.hi.x], ct_residual[at.hi.y], ct_residual[at.hi.z], ct_residual[at.hi.w]);
    }
    if (p.epilogue & EPILOGUE_RELU) != 0u {
        x = max(x, vec4<f32>(0.0));
        y = max(y, vec4<f32>(0.0));
    }
    return Window(x, y);
}

// Row row0 + i of the fused epilogue without the mask (the forward's:
// inference), stored.
fn ct_epilogue_row(p: ImplicitGemm, block: RtBlock, row0: u32, i: u32, lo: vec4<f32>, hi: vec4<f32>) {
    let row = min(row0 + i, p.rows - 1u);
    let v = ct_epilogue_values(p, row, ct_epilogue_pixels(p, block, row), lo, hi);
    ct_store_row(p, block, row0 + i, v.lo, v.hi);
}

// The same with zeros where the mask is not positive (backward-data through
// a ReLU). Only conv2d_implicit_gemm_compact_masked reads the mask: with it,
// the forward's fused pipeline compiled in 1.25x the time in Chromium on
// SwiftShader (six alternating compiles), before a page's first result.
fn ct_epilogue_row_masked(p: ImplicitGemm, block: RtBlock, row0: u32, i: u32, lo: vec4<f32>, hi: vec4<f32>) {
    let row = min(row0 + i, p.rows - 1u);
    let at = ct_epilogue_pixels(p, block, row);
    let v = ct_epilogue_values(p, row, at, lo, hi);
    let x = select(vec4<f32>(0.0), v.lo, vec4<f32>(ct_mask[at.lo.x], ct_mask[at.lo.y], ct_mask[at.lo.z], ct_mask[at.lo.w]) > vec4<f32>(0.0));
    let y = select(vec4<f32>(0.0), v.hi, vec4<f32>(ct_mask[at.hi.x], ct_mask[at.hi.y], ct_mask[at.hi.z], ct_mask[at.hi.w]) > vec4<f32>(0.0));
    ct_store_row(p, block, row0 + i, x, y);
}

// The fused epilogue of the 8 x 8 tile of acc, rows from row0, stored.
fn ct_epilogue(p: ImplicitGemm, block: RtBlock, row0: u32, acc: ptr<function, array<vec4<f32>, 16>>) {
    // A loop, not 8 inlined rows: SwiftShader compiles this pipeline in 0.3 s
    // instead of 0.7 s, most of a cold start in the browser. The copy is what
    // the loop indexes, so that acc keeps constant indices (registers).
    var rows = *acc;
    for (var i = 0u; i < 8u; i++) {
        ct_epilogue_row(p, block, row0, i, rows[2u * i], rows[2u * i + 1u]);
    }
}

// ct_epilogue with the mask.
fn ct_epilogue_masked(p: ImplicitGemm, block: RtBlock, row0: u32, acc: ptr<function, array<vec4<f32>, 16>>) {
    var rows = *acc;
    for (var i = 0u; i < 8u; i++) {
        ct_epilogue_row_masked(p, block, row0, i, rows[2u * i], rows[2u * i + 1u]);
    }
}

@compute @workgroup_size(8)
fn conv2d_implicit_gemm_compact_fused(ids: Ids) {
    let p = ct_params;
    let block = ct_block(p, ct_block_index(ids));
    var acc: array<vec4<f32>, 16>;
    ct_gemm(p, block, ids.workgroup.z, subgroup_lane(ids), &acc);
    ct_epilogue(p, block, ids.workgroup.z * 8u, &acc);
}

// Backward-data fused with its epilogue, mask included (the general path:
// backward-data reads its taps in reverse).
@compute @workgroup_size(8)
fn conv2d_implicit_gemm_compact_masked(ids: Ids) {
    let p = ct_params;
    let block = ct_block(p, ct_block_index(ids));
    var acc: array<vec4<f32>, 16>;
    ct_gemm(p, block, ids.workgroup.z, subgroup_lane(ids), &acc);
    ct_epilogue_masked(p, block, ids.workgroup.z * 8u, &acc);
}

@compute @workgroup_size(8)
fn conv2d_implicit_gemm_compact_3_taps_stride1_fused(ids: Ids) {
    let p = ct_params;
    let block = ct_block(p, ct_block_index(ids));
    var acc: array<vec4<f32>, 16>;
    ct_gemm_3_taps_stride1(p, block, ids.workgroup.z, subgroup_lane(ids), &acc);
    ct_epilogue(p, block, ids.workgroup.z * 8u, &acc);
}

@compute @workgroup_size(8)
fn conv2d_implicit_gemm_compact_7_taps_stride2_fused(ids: Ids) {
    let p = ct_params;
    let block = ct_block(p, ct_block_index(ids));
    var acc: array<vec4<f32>, 16>;
    ct_gemm_7_taps_stride2(p, block, ids.workgroup.z, subgroup_lane(ids), &acc);
    ct_epilogue(p, block, ids.workgroup.z * 8u, &acc);
}

@compute @workgroup_size(8)
fn conv2d_implicit_gemm_compact_3_taps_stride2(ids: Ids) {
    let p = ct_params;
    let block = ct_block(p, ct_block_index(ids));
    var acc: array<vec4<f32>, 16>;
    ct_gemm_3_taps_stride2(p, block, ids.workgroup.z, subgroup_lane(ids), &acc);
    ct_store(p, block, ids.workgroup.z * 8u, &acc);
}

@compute @workgroup_size(8)
fn conv2d_implicit_gemm_compact_3_taps_stride2_fused(ids: Ids) {
    let p = ct_params;
    let block = ct_block(p, ct_block_index(ids));
    var acc: array<vec4<f32>, 16>;
    ct_gemm_3_taps_stride2(p, block, ids.workgroup.z, subgroup_lane(ids), &acc);
    ct_epilogue(p, block, ids.workgroup.z * 8u, &acc);
}
// END compact tile.

// Backward-weight: partial[chunk][co][ci][kh][kw] = sum over the chunk's output
// rows (b, oh) and ow of dy[b][co][oh][ow] * x[b][ci][oh*s - pad + kh][ow*s - pad + kw].
struct WeightGrad {
    batch: u32,
    in_channels: u32,
    in_h: u32,
    in_w: u32,
    out_channels: u32,
    out_h: u32,
    out_w: u32,
    kernel: u32,
    stride: u32,
    pad: u32,
    // Output rows (of batch * out_h) per chunk.
    rows_per_chunk: u32,
    chunks: u32,
    // Blocks of output and input channels, and taps of a kernel row, per
    // invocation.
    co_blocks: u32,
    ci_blocks: u32,
    tap_width: u32,
    invocations: u32,
    weight_len: u32,
    // Invocations per (chunk, block of output channels): at least
    // ci_blocks x tap blocks, padded to whole workgroups where the register
    // tile shares dy through subgroups.
    combo_stride: u32,
    // Workgroup tile: rows (output channels) of a tile in vec4s.
    tile_row_quads: u32,
}

// What invocation g of a weight-gradient kernel sums: a chunk of output rows
// (of batch * out_h), taps (kh, kw..kw + tap_width - 1), one block of output
// channels and one of input channels; `base` is where its chunk's partial sum
// of tap (kh, kw) starts.
struct WeightGradSlice {
    // False for the padding of combo_stride (computes a clamped slice and
    // stores nothing).
    live: bool,
    first_row: u32,
    end_row: u32,
    kh: u32,
    kw: u32,
    co_block: u32,
    ci_block: u32,
    base: u32,
}

// The invocations of a group (g / combo_stride) share a chunk of output rows
// and a block of output channels.
struct WeightGradGroup {
    first_row: u32,
    end_row: u32,
    co_block: u32,
    chunk: u32,
}

fn weight_grad_group(p: WeightGrad, group: u32) -> WeightGradGroup {
    let chunk = group / p.co_blocks;
    let first_row = chunk * p.rows_per_chunk;
    return WeightGradGroup(first_row, min(first_row + p.rows_per_chunk, p.batch * p.out_h), group % p.co_blocks, chunk);
}

fn weight_grad_slice(p: WeightGrad, g: u32) -> WeightGradSlice {
    let row_blocks = (p.kernel + p.tap_width - 1u) / p.tap_width;
    let tap_blocks = p.kernel * row_blocks;
    let combo = g % p.combo_stride;
    let group = weight_grad_group(p, g / p.combo_stride);
    let ci_block = combo % p.ci_blocks;
    let tap_block = min(combo / p.ci_blocks, tap_blocks - 1u);
    let kh = tap_block / row_blocks;
    let kw = (tap_block % row_blocks) * p.tap_width;
    return WeightGradSlice(
        combo < p.ci_blocks * tap_blocks,
        group.first_row,
        group.end_row,
        kh,
        kw,
        group.co_block,
        ci_block,
        group.chunk * p.weight_len + kh * p.kernel + kw,
    );
}

// BEGIN register tile
// conv2d_weight_grad (register tile): one invocation per (chunk, kernel row
// kh, taps kw..kw + 2 of it, 16 output channels, 8 input channels). On
// llvmpipe a load from a per-invocation address is gathered lane by lane, so
// loads are what to save: per pair of output pixels it loads 16 dy per pixel,
// shared by the 3 taps, and 8 input channels at 5 input columns that serve
// the 6 (pixel, tap) products at stride 1 or 2: 72 loads for 768
// multiply-adds, where one tap per invocation (16 x 16 channels) loaded 64 for
// 512 and ran about 1.2x slower (bench, paired). Taps past the kernel's edge
// (kernel 1 or 7) read clamped columns and are not stored; strides above 2
// store one tap per invocation (tap_width 1). The invocations of a group
// share their chunk and output channels, so with subgroups lanes 0 to 3 load
// the 16 dy of a pixel and broadcast them (rw_rows); lanes 4 to 7 do the same
// for a second group where a workgroup holds two.
@group(0) @binding(30) var<uniform> rw_params: WeightGrad;
// x and dy through their texture mirrors (as rt_src): the stride-1
// backward-weight took 0.63x the time in ResNet-20.
@group(0) @binding(31) var rw_x: texture_2d<f32>;
@group(0) @binding(32) var rw_dy: texture_2d<f32>;
@group(0) @binding(33) var<storage, read_write> rw_partials: array<f32>;

// Offsets in dy of the invocation's 16 output channels' planes, 4 per vec4;
// with subgroup loads, the 4 that this lane loads for its subgroup (of the
// workgroup's first group in lanes 0 to 3, of its last in lanes 4 to 7), and
// whether the invocation is in the last group and that differs from the first.
struct DyChannels {
    d0: vec4<u32>,
    d1: vec4<u32>,
    d2: vec4<u32>,
    d3: vec4<u32>,
    lane: vec4<u32>,
    last: bool,
    // Whether this lane's loads are broadcast: lanes 0 to 3 always, 4 to 7
    // where the workgroup holds two groups.
    loads: bool,
}

// x at `base` for 8 input channels at offsets lo, hi, times mask (0 in the padding).
fn rw_window(base: u32, lo: vec4<u32>, hi: vec4<u32>, mask: f32) -> Window {
    return Window(
        vec4<f32>(mirrored(rw_x, base + lo.x), mirrored(rw_x, base + lo.y), mirrored(rw_x, base + lo.z), mirrored(rw_x, base + lo.w)) * mask,
        vec4<f32>(mirrored(rw_x, base + hi.x), mirrored(rw_x, base + hi.y), mirrored(rw_x, base + hi.z), mirrored(rw_x, base + hi.w)) * mask,
    );
}

fn rw_store4(p: WeightGrad, base: u32, co: u32, ci: vec4<u32>, v: vec4<f32>) {
    if co >= p.out_channels {
        return;
    }
    let taps = p.kernel * p.kernel;
    let row = base + co * p.in_channels * taps;
    let live = ci < vec4<u32>(p.in_channels);
    if live.x { rw_partials[row + ci.x * taps] = v.x; }
    if live.y { rw_partials[row + ci.y * taps] = v.y; }
    if live.z { rw_partials[row + ci.z * taps] = v.z; }
    if live.w { rw_partials[row + ci.w * taps] = v.w; }
}

// Stores 16 output channels from co0 x 8 input channels ci_lo, ci_hi.
fn rw_store(p: WeightGrad, base: u32, co0: u32, ci_lo: vec4<u32>, ci_hi: vec4<u32>, acc: ptr<function, array<vec4<f32>, 32>>) {
    rw_store4(p, base, co0 + 0u, ci_lo, (*acc)[0]);
    rw_store4(p, base, co0 + 0u, ci_hi, (*acc)[1]);
    rw_store4(p, base, co0 + 1u, ci_lo, (*acc)[2]);
    rw_store4(p, base, co0 + 1u, ci_hi, (*acc)[3]);
    rw_store4(p, base, co0 + 2u, ci_lo, (*acc)[4]);
    rw_store4(p, base, co0 + 2u, ci_hi, (*acc)[5]);
    rw_store4(p, base, co0 + 3u, ci_lo, (*acc)[6]);
    rw_store4(p, base, co0 + 3u, ci_hi, (*acc)[7]);
    rw_store4(p, base, co0 + 4u, ci_lo, (*acc)[8]);
    rw_store4(p, base, co0 + 4u, ci_hi, (*acc)[9]);
    rw_store4(p, base, co0 + 5u, ci_lo, (*acc)[10]);
    rw_store4(p, base, co0 + 5u, ci_hi, (*acc)[11]);
    rw_store4(p, base, co0 + 6u, ci_lo, (*acc)[12]);
    rw_store4(p, base, co0 + 6u, ci_hi, (*acc)[13]);
    rw_store4(p, base, co0 + 7u, ci_lo, (*acc)[14]);
    rw_store4(p, base, co0 + 7u, ci_hi, (*acc)[15]);
    rw_store4(p, base, co0 + 8u, ci_lo, (*acc)[16]);
    rw_store4(p, base, co0 + 8u, ci_hi, (*acc)[17]);
    rw_store4(p, base, co0 + 9u, ci_lo, (*acc)[18]);
    rw_store4(p, base, co0 + 9u, ci_hi, (*acc)[19]);
    rw_store4(p, base, co0 + 10u, ci_lo, (*acc)[20]);
    rw_store4(p, base, co0 + 10u, ci_hi, (*acc)[21]);
    rw_store4(p, base, co0 + 11u, ci_lo, (*acc)[22]);
    rw_store4(p, base, co0 + 11u, ci_hi, (*acc)[23]);
    rw_store4(p, base, co0 + 12u, ci_lo, (*acc)[24]);
    rw_store4(p, base, co0 + 12u, ci_hi, (*acc)[25]);
    rw_store4(p, base, co0 + 13u, ci_lo, (*acc)[26]);
    rw_store4(p, base, co0 + 13u, ci_hi, (*acc)[27]);
    rw_store4(p, base, co0 + 14u, ci_lo, (*acc)[28]);
    rw_store4(p, base, co0 + 14u, ci_hi, (*acc)[29]);
    rw_store4(p, base, co0 + 15u, ci_lo, (*acc)[30]);
    rw_store4(p, base, co0 + 15u, ci_hi, (*acc)[31]);
}

// What invocation `ids` of the register-tile backward-weight sums (its slice
// and whether it stores it) and where it reads: dy of 16 output channels
// (shared through subgroups, see rw_rows) and x of 8 input channels.
struct RwTile {
    slice: WeightGradSlice,
    live: bool,
    loader: WeightGradGroup,
    dy_channels: DyChannels,
    x_lo: vec4<u32>,
    x_hi: vec4<u32>,
}

fn rw_tile(p: WeightGrad, ids: Ids) -> RwTile {
    let index = ids.global.x + ids.global.y * ids.groups.x * 8u;
    let last = p.invocations - 1u;
    let slice = weight_grad_slice(p, min(index, last));
    let in_plane = p.in_h * p.in_w;
    let out_plane = p.out_h * p.out_w;
    let iota = vec4<u32>(0u, 1u, 2u, 3u);
    let co0 = slice.co_block * 16u;
    let ci0 = slice.ci_block * 8u;
    // Channel offsets, clamped to valid channels (their results are not stored).
    let last_co = vec4<u32>(p.out_channels - 1u);
    let last_ci = vec4<u32>(p.in_channels - 1u);
    let d0 = min(co0 + iota, last_co) * out_plane;
    let d1 = min(co0 + 4u + iota, last_co) * out_plane;
    let d2 = min(co0 + 8u + iota, last_co) * out_plane;
    let d3 = min(co0 + 12u + iota, last_co) * out_plane;
    // A workgroup's lanes come from one group or two (see weight_grad_stride
    // in conv2d.rs): `loader` is the group whose dy this lane loads.
    let workgroup_first = (ids.workgroup.x + ids.workgroup.y * ids.groups.x) * 8u;
    let first_group = min(workgroup_first, last) / p.combo_stride;
    let last_group = min(workgroup_first + 7u, last) / p.combo_stride;
    let lane = subgroup_lane(ids);
    let loader = weight_grad_group(p, select(first_group, last_group, lane >= 4u));
    let loader_co = min(loader.co_block * 16u + (lane % 4u) * 4u + iota, last_co) * out_plane;
    let own_group = min(index, last) / p.combo_stride;
    return RwTile(
        slice,
        slice.live & (index < p.invocations),
        loader,
        DyChannels(d0, d1, d2, d3, loader_co, own_group != first_group, lane < 4u || last_group != first_group),
        min(ci0 + iota, last_ci) * in_plane,
        min(ci0 + 4u + iota, last_ci) * in_plane,
    );
}

// Row i of a tile's chunk: where it starts in x (at input row oh * stride +
// kh - pad, `ok` false in the padding) and in dy, its own and its loader's.
// Every invocation runs rows_per_chunk rows, so that a workgroup's lanes
// broadcast together where its groups' chunks differ in length; rows past the
// end of a chunk (the last) repeat its last row with x masked to 0.
struct RwRow {
    x: u32,
    ok: bool,
    dy: u32,
    loader_dy: u32,
}

fn rw_chunk_row(p: WeightGrad, t: RwTile, i: u32) -> RwRow {
    let out_plane = p.out_h * p.out_w;
    let r = min(t.slice.first_row + i, t.slice.end_row - 1u);
    let b = r / p.out_h;
    let oh = r % p.out_h;
    let ih = i32(oh * p.stride + t.slice.kh) - i32(p.pad);
    let ok = (t.slice.first_row + i < t.slice.end_row) & (ih >= 0) & (ih < i32(p.in_h));
    let x = b * p.in_channels * p.in_h * p.in_w + u32(clamp(ih, 0, i32(p.in_h) - 1)) * p.in_w;
    let rl = min(t.loader.first_row + i, t.loader.end_row - 1u);
    let loader_dy = (rl / p.out_h) * p.out_channels * out_plane + (rl % p.out_h) * p.out_w;
    return RwRow(x, ok, b * p.out_channels * out_plane + oh * p.out_w, loader_dy);
}

// dy of output pixel `ow` of a row (rw_rows), 0 past the row's end.
fn rw_pixel_rows(p: WeightGrad, row: RwRow, ow: u32, d: DyChannels) -> Rows16 {
    let o = min(ow, p.out_w - 1u);
    let r = rw_rows(row.dy + o, row.loader_dy + o, d);
    let m = select(0.0, 1.0, ow < p.out_w);
    return Rows16(r.a0 * m, r.a1 * m, r.a2 * m, r.a3 * m);
}

// x of the tile's 8 input channels at column `col` of a row (0 outside the image).
fn rw_row_column(p: WeightGrad, t: RwTile, row: RwRow, col: i32) -> Window {
    let ok = row.ok & (col >= 0) & (col < i32(p.in_w));
    return rw_window(row.x + u32(clamp(col, 0, i32(p.in_w) - 1)), t.x_lo, t.x_hi, select(0.0, 1.0, ok));
}

// Stores the tile's partial sums of taps kw, kw + 1 and kw + 2, where they exist.
fn rw_store_tile(p: WeightGrad, t: RwTile, acc0: ptr<function, array<vec4<f32>, 32>>, acc1: ptr<function, array<vec4<f32>, 32>>, acc2: ptr<function, array<vec4<f32>, 32>>) {
    let iota = vec4<u32>(0u, 1u, 2u, 3u);
    let co0 = t.slice.co_block * 16u;
    let ci_lo = t.slice.ci_block * 8u + iota;
    let ci_hi = ci_lo + 4u;
    let kw = t.slice.kw;
    if t.live {
        rw_store(p, t.slice.base, co0, ci_lo, ci_hi, acc0);
    }
    if t.live & (kw + 1u < p.kernel) & (p.tap_width > 1u) {
        rw_store(p, t.slice.base + 1u, co0, ci_lo, ci_hi, acc1);
    }
    if t.live & (kw + 2u < p.kernel) & (p.tap_width > 2u) {
        rw_store(p, t.slice.base + 2u, co0, ci_lo, ci_hi, acc2);
    }
}

// No early return before the loops: with subgroups every invocation of the
// workgroup takes part in the broadcasts (one past the end computes the last
// one's slice and stores nothing).
@compute @workgroup_size(8)
fn conv2d_weight_grad(ids: Ids) {
    let p = rw_params;
    let t = rw_tile(p, ids);
    let s = i32(p.stride);
    // Pixel f's first tap reads column c + s: e's second column at stride 1,
    // its third at stride 2. Larger strides run one tap per invocation
    // (tap_width 1), so e's second column is free to be c + s.
    let e_second = select(s, 1, p.stride <= 2u);
    let f_first_is_e_second = p.stride != 2u;
    var acc0: array<vec4<f32>, 32>;
    var acc1: array<vec4<f32>, 32>;
    var acc2: array<vec4<f32>, 32>;
    for (var i = 0u; i < p.rows_per_chunk; i++) {
        let row = rw_chunk_row(p, t, i);
        // Pixel pairs (e, f = e + 1); an odd row's last f is masked out.
        for (var ow = 0u; ow < p.out_w; ow += 2u) {
            let dy_e = rw_rows(row.dy + ow, row.loader_dy + ow, t.dy_channels);
            let dy_f = rw_pixel_rows(p, row, ow + 1u, t.dy_channels);
            // e reads columns c, c + 1, c + 2; f reads c + s, c + s + 1, c + s + 2.
            let c = i32(ow * p.stride + t.slice.kw) - i32(p.pad);
            let x0 = rw_row_column(p, t, row, c);
            let x1 = rw_row_column(p, t, row, c + e_second);
            let x2 = rw_row_column(p, t, row, c + 2);
            let x3 = rw_row_column(p, t, row, c + s + 1);
            let x4 = rw_row_column(p, t, row, c + s + 2);
            let f0 = Window(select(x2.lo, x1.lo, f_first_is_e_second), select(x2.hi, x1.hi, f_first_is_e_second));
            outer_product_16x8x2(&acc0, dy_e, x0, dy_f, f0);
            outer_product_16x8x2(&acc1, dy_e, x1, dy_f, x3);
            outer_product_16x8x2(&acc2, dy_e, x2, dy_f, x4);
        }
    }
    rw_store_tile(p, t, &acc0, &acc1, &acc2);
}

// conv2d_weight_grad_stride1: the same at stride 1 over pixel quads (e, f, g,
// h), which read 6 input columns where two pairs read 8 (pixel ow + j reads
// columns c + j to c + j + 2): on llvmpipe ResNet-20's 16- and 32-channel
// backward-weight took 0.74-0.87x the time of the pairs', its 64-channel one
// (quads of 8-pixel rows) about the same. Its own entry point: a branch
// between the two loops in one kernel slowed stride 2 by 1.1x.
@compute @workgroup_size(8)
fn conv2d_weight_grad_stride1(ids: Ids) {
    let p = rw_params;
    let t = rw_tile(p, ids);
    var acc0: array<vec4<f32>, 32>;
    var acc1: array<vec4<f32>, 32>;
    var acc2: array<vec4<f32>, 32>;
    for (var i = 0u; i < p.rows_per_chunk; i++) {
        let row = rw_chunk_row(p, t, i);
        // Pixels past the row's end (f, g, h of its last quad) are masked out.
        for (var ow = 0u; ow < p.out_w; ow += 4u) {
            let dy_e = rw_rows(row.dy + ow, row.loader_dy + ow, t.dy_channels);
            let dy_f = rw_pixel_rows(p, row, ow + 1u, t.dy_channels);
            let dy_g = rw_pixel_rows(p, row, ow + 2u, t.dy_channels);
            let dy_h = rw_pixel_rows(p, row, ow + 3u, t.dy_channels);
            let c = i32(ow + t.slice.kw) - i32(p.pad);
            let x0 = rw_row_column(p, t, row, c);
            let x1 = rw_row_column(p, t, row, c + 1);
            let x2 = rw_row_column(p, t, row, c + 2);
            let x3 = rw_row_column(p, t, row, c + 3);
            let x4 = rw_row_column(p, t, row, c + 4);
            let x5 = rw_row_column(p, t, row, c + 5);
            let dy = Rows16x4(dy_e, dy_f, dy_g, dy_h);
            outer_product_16x8x4(&acc0, dy, Windows4(x0, x1, x2, x3));
            outer_product_16x8x4(&acc1, dy, Windows4(x1, x2, x3, x4));
            outer_product_16x8x4(&acc2, dy, Windows4(x2, x3, x4, x5));
        }
    }
    rw_store_tile(p, t, &acc0, &acc1, &acc2);
}
// END register tile.

// BEGIN workgroup tile
// conv2d_weight_grad_tiled (workgroup tile): rows = output channels, columns =
// (ci, kh, kw) flattened, depth = the chunk's pixels (b, oh, ow) flattened;
// workgroup_id.z is the chunk. Tiles as conv2d_implicit_gemm_tiled's: R x
// 256/R vec4s of rows x columns (R = tile_row_quads), in slices R deep.
@group(0) @binding(40) var<uniform> ww_params: WeightGrad;
@group(0) @binding(41) var<storage, read> ww_x: array<f32>;
@group(0) @binding(42) var<storage, read> ww_dy: array<f32>;
@group(0) @binding(43) var<storage, read_write> ww_partials: array<f32>;

// Depth k of the GEMM: the output pixel's image, its index in the plane, and
// its row and column.
fn ww_pixel(p: WeightGrad, k: u32) -> vec4<u32> {
    let out_plane = p.out_h * p.out_w;
    let pixel = k % out_plane;
    return vec4<u32>(k / out_plane, pixel, pixel / p.out_w, pixel % p.out_w);
}

@compute @workgroup_size(256)
fn conv2d_weight_grad_tiled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let p = ww_params;
    let r = p.tile_row_quads;
    let col_quads = 256u / r;
    let taps = p.kernel * p.kernel;
    let columns = p.in_channels * taps;
    let col0 = wg.x * col_quads * 4u;
    let row0 = wg.y * r * 4u;
    let in_plane = p.in_h * p.in_w;
    let out_plane = p.out_h * p.out_w;
    let first = wg.z * p.rows_per_chunk * p.out_w;
    let end = min((wg.z + 1u) * p.rows_per_chunk, p.batch * p.out_h) * p.out_w;
    let iota = vec4<u32>(0u, 1u, 2u, 3u);
    // The 4 output channels (the first R x R invocations) and the 4 (ci, kh,
    // kw) columns this invocation stages.
    let stages_a = lid < r * r;
    let stage_co = row0 + (lid % r) * 4u + iota;
    let co_live = stage_co < vec4<u32>(p.out_channels);
    let dy_channel = min(stage_co, vec4<u32>(p.out_channels - 1u)) * out_plane;
    let stage_col = col0 + (lid % col_quads) * 4u + iota;
    let col_live = stage_col < vec4<u32>(columns);
    let col = min(stage_col, vec4<u32>(columns - 1u));
    let ci = col / taps;
    let kh = vec4<i32>((col % taps) / p.kernel);
    let kw = vec4<i32>(col % p.kernel);
    let x_channel = ci * in_plane;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = first; k0 < end; k0 += r) {
        let ka = k0 + lid / r;
        if stages_a {
            var a = vec4<f32>(0.0);
            if ka < end {
                let px = ww_pixel(p, ka);
                let dyo = px.x * p.out_channels * out_plane + px.y;
                a = select(vec4<f32>(0.0), vec4<f32>(ww_dy[dyo + dy_channel.x], ww_dy[dyo + dy_channel.y], ww_dy[dyo + dy_channel.z], ww_dy[dyo + dy_channel.w]), co_live);
            }
            tile_a[lid] = a;
        }
        let kb = k0 + lid / col_quads;
        var b = vec4<f32>(0.0);
        if kb < end {
            let px = ww_pixel(p, kb);
            let ih = vec4<i32>(i32(px.z * p.stride) - i32(p.pad)) + kh;
            let iw = vec4<i32>(i32(px.w * p.stride) - i32(p.pad)) + kw;
            let h = i32(p.in_h);
            let w = i32(p.in_w);
            let ok = col_live & (ih >= vec4<i32>(0)) & (ih < vec4<i32>(h)) & (iw >= vec4<i32>(0)) & (iw < vec4<i32>(w));
            let xo = px.x * p.in_channels * in_plane + x_channel
                + vec4<u32>(clamp(ih, vec4<i32>(0), vec4<i32>(h - 1))) * p.in_w
                + vec4<u32>(clamp(iw, vec4<i32>(0), vec4<i32>(w - 1)));
            b = select(vec4<f32>(0.0), vec4<f32>(ww_x[xo.x], ww_x[xo.y], ww_x[xo.z], ww_x[xo.w]), ok);
        }
        tile_b[lid] = b;
        workgroupBarrier();
        accumulate_tiles(&acc, lid % col_quads, lid / col_quads, r, r, col_quads);
        workgroupBarrier();
    }
    let out_col = col0 + (lid % col_quads) * 4u + iota;
    let out_live = out_col < vec4<u32>(columns);
    let base = wg.z * p.weight_len;
    for (var i = 0u; i < 4u; i++) {
        let co = row0 + (lid / col_quads) * 4u + i;
        if co < p.out_channels {
            let row = base + co * columns;
            let v = acc[i];
            if out_live.x { ww_partials[row + out_col.x] = v.x; }
            if out_live.y { ww_partials[row + out_col.y] = v.y; }
            if out_live.z { ww_partials[row + out_col.z] = v.z; }
            if out_live.w { ww_partials[row + out_col.w] = v.w; }
        }
    }
}
// END workgroup tile.

// BEGIN compact tile
// conv2d_weight_grad_compact (compact tile, for the reasons of the compact
// GEMM): one invocation per (chunk, tap, 8 output channels, 8 input
// channels); per output pixel it loads 8 dy and 8 x values (the padding as a
// 0/1 mask) into the outer product of the compact GEMM.
@group(0) @binding(70) var<uniform> cw_params: WeightGrad;
@group(0) @binding(71) var<storage, read> cw_x: array<f32>;
@group(0) @binding(72) var<storage, read> cw_dy: array<f32>;
@group(0) @binding(73) var<storage, read_write> cw_partials: array<f32>;

fn cw_store4(p: WeightGrad, row: u32, ci: vec4<u32>, v: vec4<f32>) {
    let taps = p.kernel * p.kernel;
    let live = ci < vec4<u32>(p.in_channels);
    if live.x { cw_partials[row + ci.x * taps] = v.x; }
    if live.y { cw_partials[row + ci.y * taps] = v.y; }
    if live.z { cw_partials[row + ci.z * taps] = v.z; }
    if live.w { cw_partials[row + ci.w * taps] = v.w; }
}

// Output channel co (if it exists) for input channels ci_lo and ci_hi.
fn cw_store_row(p: WeightGrad, base: u32, co: u32, ci_lo: vec4<u32>, ci_hi: vec4<u32>, lo: vec4<f32>, hi: vec4<f32>) {
    if co < p.out_channels {
        let row = base + co * p.in_channels * p.kernel * p.kernel;
        cw_store4(p, row, ci_lo, lo);
        cw_store4(p, row, ci_hi, hi);
    }
}

@compute @workgroup_size(8)
fn conv2d_weight_grad_compact(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let p = cw_params;
    // No early return (a branch SwiftShader would wrap the loops in): an
    // invocation past the end computes the last one's sums and stores nothing.
    let index = gid.x + gid.y * groups.x * 8u;
    let g = min(index, p.invocations - 1u);
    let slice = weight_grad_slice(p, g);
    let kh = slice.kh;
    let kw = slice.kw;
    let in_plane = p.in_h * p.in_w;
    let out_plane = p.out_h * p.out_w;
    let iota = vec4<u32>(0u, 1u, 2u, 3u);
    let co0 = slice.co_block * 8u;
    let ci0 = slice.ci_block * 8u;
    // Channel offsets, clamped to valid channels (their results are not stored).
    let last_co = vec4<u32>(p.out_channels - 1u);
    let last_ci = vec4<u32>(p.in_channels - 1u);
    let d_lo = min(co0 + iota, last_co) * out_plane;
    let d_hi = min(co0 + 4u + iota, last_co) * out_plane;
    let x_lo = min(ci0 + iota, last_ci) * in_plane;
    let x_hi = min(ci0 + 4u + iota, last_ci) * in_plane;
    var acc: array<vec4<f32>, 16>;
    for (var r = slice.first_row; r < slice.end_row; r++) {
        let b = r / p.out_h;
        let oh = r % p.out_h;
        let ih = i32(oh * p.stride + kh) - i32(p.pad);
        let row_ok = (ih >= 0) & (ih < i32(p.in_h));
        let x_row = b * p.in_channels * in_plane + u32(clamp(ih, 0, i32(p.in_h) - 1)) * p.in_w;
        let dy_row = b * p.out_channels * out_plane + oh * p.out_w;
        for (var ow = 0u; ow < p.out_w; ow++) {
            let iw = i32(ow * p.stride + kw) - i32(p.pad);
            let mask = select(0.0, 1.0, row_ok & (iw >= 0) & (iw < i32(p.in_w)));
            let xo = x_row + u32(clamp(iw, 0, i32(p.in_w) - 1));
            let d = dy_row + ow;
            let dy = Rows8(
                vec4<f32>(cw_dy[d + d_lo.x], cw_dy[d + d_lo.y], cw_dy[d + d_lo.z], cw_dy[d + d_lo.w]),
                vec4<f32>(cw_dy[d + d_hi.x], cw_dy[d + d_hi.y], cw_dy[d + d_hi.z], cw_dy[d + d_hi.w]),
            );
            let x = Window(
                vec4<f32>(cw_x[xo + x_lo.x], cw_x[xo + x_lo.y], cw_x[xo + x_lo.z], cw_x[xo + x_lo.w]) * mask,
                vec4<f32>(cw_x[xo + x_hi.x], cw_x[xo + x_hi.y], cw_x[xo + x_hi.z], cw_x[xo + x_hi.w]) * mask,
            );
            ct_outer_product(&acc, dy, x);
        }
    }
    let base = slice.base;
    // Output channels from co0 (none past the last invocation), and the
    // accumulators by constant index, so that they stay registers.
    let co = select(p.out_channels, co0, index < p.invocations);
    let ci_lo = ci0 + iota;
    let ci_hi = ci0 + 4u + iota;
    cw_store_row(p, base, co, ci_lo, ci_hi, acc[0], acc[1]);
    cw_store_row(p, base, co + 1u, ci_lo, ci_hi, acc[2], acc[3]);
    cw_store_row(p, base, co + 2u, ci_lo, ci_hi, acc[4], acc[5]);
    cw_store_row(p, base, co + 3u, ci_lo, ci_hi, acc[6], acc[7]);
    cw_store_row(p, base, co + 4u, ci_lo, ci_hi, acc[8], acc[9]);
    cw_store_row(p, base, co + 5u, ci_lo, ci_hi, acc[10], acc[11]);
    cw_store_row(p, base, co + 6u, ci_lo, ci_hi, acc[12], acc[13]);
    cw_store_row(p, base, co + 7u, ci_lo, ci_hi, acc[14], acc[15]);
}
// END compact tile.

// conv2d_reduce_partials: dw[i] = sum over chunks of partials[chunk][i], in
// chunk order.
struct Reduce {
    len: u32,
    chunks: u32,
}

@group(0) @binding(50) var<uniform> reduce_params: Reduce;
@group(0) @binding(51) var<storage, read> reduce_partials: array<f32>;
@group(0) @binding(52) var<storage, read_write> reduce_dw: array<f32>;

@compute @workgroup_size(256)
fn conv2d_reduce_partials(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let p = reduce_params;
    let i = gid.x + gid.y * groups.x * 256u;
    if i >= p.len {
        return;
    }
    var sum = 0.0;
    for (var c = 0u; c < p.chunks; c++) {
        sum += reduce_partials[c * p.len + i];
    }
    reduce_dw[i] = sum;
}

// BEGIN compact tile
// Winograd F(4x4, 3x3): the inference forward of 3x3 stride-1 convolutions
// with the compact tile (SwiftShader), in three passes over scratch buffers.
// Each 4x4 tile of output pixels is computed from the 6x6 input patch d at
// (4 * tile - pad) as A^T [(G g G^T) . (B^T d B)] A (Lavin and Gray, 2015):
// 36 multiplies per tile, channel and output channel instead of 144.
// SwiftShader's cost is its gathers, and the GEMM of the Winograd domain
// has no taps to share a pixel's load between (the direct kernel's window
// serves 3), so it costs about 2.3x as much per multiply-add: F(2x2, 3x3),
// 2.25x fewer of them, ran slower than the direct kernel; F(4x4, 3x3) saves 4x.
// - conv2d_winograd_input: v[xi][c][tile] = (B^T d B)[xi] per channel;
// - conv2d_winograd_gemm: m[xi] = u[xi] v[xi] for the 36 points xi, over the
//   weights u[xi][c][row] = (G g G^T)[xi] (conv2d_winograd_weights, at
//   load; output channels padded to a multiple of 8, or 16), as the compact
//   tile's GEMM: 8 x 8 per invocation, the operand shared by the workgroup
//   through ct_rows. That operand is u (m[xi][channel][tile]) or, where
//   there are fewer tiles than a workgroup has invocations (ResNet-18's
//   14x14 map at batch 1), v (m[xi][tile][channel]), so that the workgroups
//   run over output channels instead of mostly padding tiles; at most 4
//   tiles (its 7x7 map) take conv2d_winograd_gemm_4_rows, 4 x 16;
// - conv2d_winograd_output: y = relu?(A^T m A + bias + residual?).
// Tiles (batch x tiles_h x tiles_w) are padded to a multiple of 8 in v; the
// padding stays zero there, and its products are computed and never read.
struct Winograd {
    batch: u32,
    channels: u32,
    // Input (src_h x src_w) or output (dst_h x dst_w) of the convolution.
    src_h: u32,
    src_w: u32,
    dst_h: u32,
    dst_w: u32,
    pad: u32,
    tiles_h: u32,
    tiles_w: u32,
    tiles_padded: u32,
    // EPILOGUE_RESIDUAL and EPILOGUE_RELU (conv2d_winograd_output).
    epilogue: u32,
    // Strides in m of a point xi, an output channel and a tile
    // (conv2d_winograd_output).
    m_point: u32,
    m_channel: u32,
    m_tile: u32,
    _pad: u32,
}

// Invocations per workgroup of the input and output transforms (keep equal
// to TRANSFORM_WORKGROUP in winograd.rs).
const TRANSFORM_WORKGROUP: u32 = 64u;

// The invocation's (image, channel, tile), invocations in that order; past
// the last, image is batch.
fn wi_tile(p: Winograd, gid: vec3<u32>, groups: vec3<u32>) -> vec3<u32> {
    let tiles = p.tiles_h * p.tiles_w;
    let g = gid.x + gid.y * groups.x * TRANSFORM_WORKGROUP;
    return vec3<u32>(g / (tiles * p.channels), (g / tiles) % p.channels, g % tiles);
}

// conv2d_winograd_weights: u[xi][ci][row] = (G g G^T)[xi] for each 3x3
// kernel g = w[co][ci] (OIHW), rows (output channels) padded with zeros to
// rows_padded. Run once at load: the raw weights upload, and the 4x larger u
// never leaves the device.
struct WinogradWeights {
    in_channels: u32,
    out_channels: u32,
    rows_padded: u32,
    _pad: u32,
}

@group(0) @binding(95) var<uniform> wu_params: WinogradWeights;
@group(0) @binding(96) var<storage, read> wu_w: array<f32>;
@group(0) @binding(97) var<storage, read_write> wu_u: array<f32>;

// G r for a column r of a kernel (G's rows: 1/4 0 0, -1/6 -1/6 -1/6,
// -1/6 1/6 -1/6, 1/24 1/12 1/6, 1/24 -1/12 1/6, 0 0 1).
fn wu_g(r: vec3<f32>) -> array<f32, 6> {
    return array<f32, 6>(
        r.x / 4.0,
        -(r.x + r.y + r.z) / 6.0,
        -(r.x - r.y + r.z) / 6.0,
        r.x / 24.0 + r.y / 12.0 + r.z / 6.0,
        r.x / 24.0 - r.y / 12.0 + r.z / 6.0,
        r.z,
    );
}

// Row i of G g G^T, from row i of G g: its 6 points, `step` apart from `o`.
fn wu_store_row(o: u32, step: u32, i: u32, g_row: vec3<f32>) {
    let u = wu_g(g_row);
    let first = o + 6u * i * step;
    wu_u[first] = u[0];
    wu_u[first + step] = u[1];
    wu_u[first + 2u * step] = u[2];
    wu_u[first + 3u * step] = u[3];
    wu_u[first + 4u * step] = u[4];
    wu_u[first + 5u * step] = u[5];
}

// One invocation per (ci, row), rows fastest, so that the stores of
// consecutive invocations are consecutive. Unrolled by hand, as
// conv2d_winograd_input.
@compute @workgroup_size(256)
fn conv2d_winograd_weights(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let p = wu_params;
    let g = gid.x + gid.y * groups.x * 256u;
    let row = g % p.rows_padded;
    let ci = g / p.rows_padded;
    if ci >= p.in_channels {
        return;
    }
    // Padding rows read a valid kernel and store zeros.
    let live = select(0.0, 1.0, row < p.out_channels);
    let b = (min(row, p.out_channels - 1u) * p.in_channels + ci) * 9u;
    // G g: its 3 columns, then each of its rows times G^T.
    let c0 = wu_g(live * vec3<f32>(wu_w[b], wu_w[b + 3u], wu_w[b + 6u]));
    let c1 = wu_g(live * vec3<f32>(wu_w[b + 1u], wu_w[b + 4u], wu_w[b + 7u]));
    let c2 = wu_g(live * vec3<f32>(wu_w[b + 2u], wu_w[b + 5u], wu_w[b + 8u]));
    let step = p.in_channels * p.rows_padded;
    wu_store_row(g, step, 0u, vec3<f32>(c0[0], c1[0], c2[0]));
    wu_store_row(g, step, 1u, vec3<f32>(c0[1], c1[1], c2[1]));
    wu_store_row(g, step, 2u, vec3<f32>(c0[2], c1[2], c2[2]));
    wu_store_row(g, step, 3u, vec3<f32>(c0[3], c1[3], c2[3]));
    wu_store_row(g, step, 4u, vec3<f32>(c0[4], c1[4], c2[4]));
    wu_store_row(g, step, 5u, vec3<f32>(c0[5], c1[5], c2[5]));
}

@group(0) @binding(80) var<uniform> wi_params: Winograd;
@group(0) @binding(81) var<storage, read> wi_x: array<f32>;
@group(0) @binding(82) var<storage, read_write> wi_v: array<f32>;

// B^T r for a column r of the patch (B^T's rows: 4 0 -5 0 1 0, 0 -4 -4 1 1 0,
// 0 4 -4 -1 1 0, 0 -2 -1 2 1 0, 0 2 -1 -2 1 0, 0 4 0 -5 0 1).
fn wi_bt(r: array<f32, 6>) -> array<f32, 6> {
    return array<f32, 6>(
        4.0 * r[0] - 5.0 * r[2] + r[4],
        r[3] + r[4] - 4.0 * (r[1] + r[2]),
        4.0 * (r[1] - r[2]) + r[4] - r[3],
        2.0 * (r[3] - r[1]) + r[4] - r[2],
        2.0 * (r[1] - r[3]) + r[4] - r[2],
        4.0 * r[1] - 5.0 * r[3] + r[5],
    );
}

// The 6 positions of a patch along one axis from `start`: offsets clamped
// into 0..size (times `stride`) and 0/1 masks (0 outside), as 3 + 3.
struct WiAxis {
    lo: vec3<u32>,
    hi: vec3<u32>,
    lo_mask: vec3<f32>,
    hi_mask: vec3<f32>,
}

fn wi_axis(start: i32, size: u32, stride: u32) -> WiAxis {
    let lo = vec3<i32>(start) + vec3<i32>(0, 1, 2);
    let hi = lo + vec3<i32>(3);
    let last = vec3<i32>(i32(size) - 1);
    return WiAxis(
        vec3<u32>(clamp(lo, vec3<i32>(0), last)) * stride,
        vec3<u32>(clamp(hi, vec3<i32>(0), last)) * stride,
        select(vec3<f32>(0.0), vec3<f32>(1.0), (lo >= vec3<i32>(0)) & (lo <= last)),
        select(vec3<f32>(0.0), vec3<f32>(1.0), (hi >= vec3<i32>(0)) & (hi <= last)),
    );
}

// B^T times column `col` (offset and mask) of the patch whose rows are `rows`.
fn wi_column(base: u32, rows: WiAxis, col: u32, mask: f32) -> array<f32, 6> {
    let b = base + col;
    return wi_bt(array<f32, 6>(
        wi_x[b + rows.lo.x] * (rows.lo_mask.x * mask),
        wi_x[b + rows.lo.y] * (rows.lo_mask.y * mask),
        wi_x[b + rows.lo.z] * (rows.lo_mask.z * mask),
        wi_x[b + rows.hi.x] * (rows.hi_mask.x * mask),
        wi_x[b + rows.hi.y] * (rows.hi_mask.y * mask),
        wi_x[b + rows.hi.z] * (rows.hi_mask.z * mask),
    ));
}

// Row i of v = (B^T d) B, given row i of B^T d: its 6 points, `step` apart.
fn wi_store_row(o: u32, step: u32, i: u32, bt_d: array<f32, 6>) {
    let v = wi_bt(bt_d);
    let first = o + 6u * i * step;
    wi_v[first] = v[0];
    wi_v[first + step] = v[1];
    wi_v[first + 2u * step] = v[2];
    wi_v[first + 3u * step] = v[3];
    wi_v[first + 4u * step] = v[4];
    wi_v[first + 5u * step] = v[5];
}

// Unrolled by hand, every array index a constant: SwiftShader keeps arrays
// indexed by a loop counter in memory, lane by lane.
@compute @workgroup_size(TRANSFORM_WORKGROUP)
fn conv2d_winograd_input(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let p = wi_params;
    let at = wi_tile(p, gid, groups);
    if at.x >= p.batch {
        return;
    }
    let plane = (at.x * p.channels + at.y) * p.src_h * p.src_w;
    let rows = wi_axis(i32(4u * (at.z / p.tiles_w)) - i32(p.pad), p.src_h, p.src_w);
    let cols = wi_axis(i32(4u * (at.z % p.tiles_w)) - i32(p.pad), p.src_w, 1u);
    // Columns of B^T d, then its rows times B.
    let c0 = wi_column(plane, rows, cols.lo.x, cols.lo_mask.x);
    let c1 = wi_column(plane, rows, cols.lo.y, cols.lo_mask.y);
    let c2 = wi_column(plane, rows, cols.lo.z, cols.lo_mask.z);
    let c3 = wi_column(plane, rows, cols.hi.x, cols.hi_mask.x);
    let c4 = wi_column(plane, rows, cols.hi.y, cols.hi_mask.y);
    let c5 = wi_column(plane, rows, cols.hi.z, cols.hi_mask.z);
    let step = p.channels * p.tiles_padded;
    let o = at.y * p.tiles_padded + at.x * p.tiles_h * p.tiles_w + at.z;
    wi_store_row(o, step, 0u, array<f32, 6>(c0[0], c1[0], c2[0], c3[0], c4[0], c5[0]));
    wi_store_row(o, step, 1u, array<f32, 6>(c0[1], c1[1], c2[1], c3[1], c4[1], c5[1]));
    wi_store_row(o, step, 2u, array<f32, 6>(c0[2], c1[2], c2[2], c3[2], c4[2], c5[2]));
    wi_store_row(o, step, 3u, array<f32, 6>(c0[3], c1[3], c2[3], c3[3], c4[3], c5[3]));
    wi_store_row(o, step, 4u, array<f32, 6>(c0[4], c1[4], c2[4], c3[4], c4[4], c5[4]));
    wi_store_row(o, step, 5u, array<f32, 6>(c0[5], c1[5], c2[5], c3[5], c4[5], c5[5]));
}

// Block index of a GEMM invocation: blocks over x and y, 4 per workgroup
// (GEMM_WORKGROUP in winograd.rs: SwiftShader runs 4 lanes at a time, and an
// invocation past the last block computes as much as any).
fn wg_block_index(ids: Ids) -> u32 {
    return ids.global.x + ids.global.y * ids.groups.x * 4u;
}

// acc += the 8 rows of ct_wt at a times the 8 columns of ct_src at b.
fn wg_product(acc: ptr<function, array<vec4<f32>, 16>>, b: u32, a: u32, lane: u32) {
    let x = vec4<f32>(ct_src[b], ct_src[b + 1u], ct_src[b + 2u], ct_src[b + 3u]);
    let y = vec4<f32>(ct_src[b + 4u], ct_src[b + 5u], ct_src[b + 6u], ct_src[b + 7u]);
    ct_outer_product(acc, ct_rows(a, lane), Window(x, y));
}

// m[xi][row][column] = sum over c of ct_wt[xi][c][row] ct_src[xi][c][column]
// over ct_params: channels = input channels, rows (rows_padded in ct_wt) and
// columns (a multiple of 8) as the caller lays them out (u and v, or v and
// u); the workgroup's point xi and row block in workgroup_id.z, uniform over
// the workgroup (ct_rows).
@compute @workgroup_size(4)
fn conv2d_winograd_gemm(ids: Ids) {
    let p = ct_params;
    let row_blocks = p.rows_padded / 8u;
    let xi = ids.workgroup.z / row_blocks;
    let row_block = ids.workgroup.z % row_blocks;
    let blocks = p.columns / 8u;
    let index = wg_block_index(ids);
    // Past the last block: a clamped one, computed and not stored.
    let column0 = min(index, blocks - 1u) * 8u;
    let lane = subgroup_lane(ids);
    var acc: array<vec4<f32>, 16>;
    var b = xi * p.channels * p.columns + column0;
    let a_step = p.rows_padded / 4u;
    var a = xi * p.channels * a_step + row_block * 2u;
    // Two channels per iteration: SwiftShader's loop overhead weighs on one
    // channel's 64 multiply-adds (0.9x the time; four: no better).
    var c = 0u;
    for (; c + 1u < p.channels; c += 2u) {
        wg_product(&acc, b, a, lane);
        wg_product(&acc, b + p.columns, a + a_step, lane);
        b += 2u * p.columns;
        a += 2u * a_step;
    }
    if c < p.channels {
        wg_product(&acc, b, a, lane);
    }
    if index < blocks {
        wg_store(p, xi, row_block * 8u, column0, &acc);
    }
}

// acc += the 4 rows of ct_wt at a times the 16 columns of ct_src at b.
fn wg_product_4_rows(acc: ptr<function, array<vec4<f32>, 16>>, b: u32, a: u32, lane: u32) {
    let r = ct_rows4(a, lane);
    let x0 = vec4<f32>(ct_src[b], ct_src[b + 1u], ct_src[b + 2u], ct_src[b + 3u]);
    let x1 = vec4<f32>(ct_src[b + 4u], ct_src[b + 5u], ct_src[b + 6u], ct_src[b + 7u]);
    let x2 = vec4<f32>(ct_src[b + 8u], ct_src[b + 9u], ct_src[b + 10u], ct_src[b + 11u]);
    let x3 = vec4<f32>(ct_src[b + 12u], ct_src[b + 13u], ct_src[b + 14u], ct_src[b + 15u]);
    (*acc)[0] += r.x * x0;
    (*acc)[1] += r.x * x1;
    (*acc)[2] += r.x * x2;
    (*acc)[3] += r.x * x3;
    (*acc)[4] += r.y * x0;
    (*acc)[5] += r.y * x1;
    (*acc)[6] += r.y * x2;
    (*acc)[7] += r.y * x3;
    (*acc)[8] += r.z * x0;
    (*acc)[9] += r.z * x1;
    (*acc)[10] += r.z * x2;
    (*acc)[11] += r.z * x3;
    (*acc)[12] += r.w * x0;
    (*acc)[13] += r.w * x1;
    (*acc)[14] += r.w * x2;
    (*acc)[15] += r.w * x3;
}

// conv2d_winograd_gemm_4_rows: the GEMM where there are at most 4 rows
// (tiles: ResNet-18's 7x7 map at batch 1 has 4), 4 rows x 16 columns per
// invocation, so that no invocation multiplies padding rows. Columns are a
// multiple of 16; the workgroup's point xi in workgroup_id.z.
@compute @workgroup_size(4)
fn conv2d_winograd_gemm_4_rows(ids: Ids) {
    let p = ct_params;
    let xi = ids.workgroup.z;
    let blocks = p.columns / 16u;
    let index = wg_block_index(ids);
    let column0 = min(index, blocks - 1u) * 16u;
    let lane = subgroup_lane(ids);
    var acc: array<vec4<f32>, 16>;
    var b = xi * p.channels * p.columns + column0;
    let a_step = p.rows_padded / 4u;
    var a = xi * p.channels * a_step;
    // Two channels per iteration, as in conv2d_winograd_gemm.
    var c = 0u;
    for (; c + 1u < p.channels; c += 2u) {
        wg_product_4_rows(&acc, b, a, lane);
        wg_product_4_rows(&acc, b + p.columns, a + a_step, lane);
        b += 2u * p.columns;
        a += 2u * a_step;
    }
    if c < p.channels {
        wg_product_4_rows(&acc, b, a, lane);
    }
    if index < blocks {
        var rows = acc;
        for (var i = 0u; i < 4u; i++) {
            if i < p.rows {
                let o = (xi * p.rows + i) * p.columns + column0;
                for (var j = 0u; j < 4u; j++) {
                    let v = rows[4u * i + j];
                    ct_dst[o + 4u * j] = v.x;
                    ct_dst[o + 4u * j + 1u] = v.y;
                    ct_dst[o + 4u * j + 2u] = v.z;
                    ct_dst[o + 4u * j + 3u] = v.w;
                }
            }
        }
    }
}

// Stores the 8 x 8 tile of acc: rows from row0 of m[xi], columns from column0.
fn wg_store(p: ImplicitGemm, xi: u32, row0: u32, column0: u32, acc: ptr<function, array<vec4<f32>, 16>>) {
    // A loop over a copy, as in ct_epilogue, so that acc keeps constant indices.
    var rows = *acc;
    for (var i = 0u; i < 8u; i++) {
        let row = row0 + i;
        if row < p.rows {
            let o = (xi * p.rows + row) * p.columns + column0;
            let lo = rows[2u * i];
            let hi = rows[2u * i + 1u];
            ct_dst[o] = lo.x;
            ct_dst[o + 1u] = lo.y;
            ct_dst[o + 2u] = lo.z;
            ct_dst[o + 3u] = lo.w;
            ct_dst[o + 4u] = hi.x;
            ct_dst[o + 5u] = hi.y;
            ct_dst[o + 6u] = hi.z;
            ct_dst[o + 7u] = hi.w;
        }
    }
}

@group(0) @binding(90) var<uniform> wo_params: Winograd;
@group(0) @binding(91) var<storage, read> wo_m: array<f32>;
@group(0) @binding(92) var<storage, read> wo_bias: array<f32>;
@group(0) @binding(93) var<storage, read> wo_residual: array<f32>;
@group(0) @binding(94) var<storage, read_write> wo_y: array<f32>;

// A^T r for a column r (A^T's rows: 1 1 1 1 1 0, 0 1 -1 2 -2 0,
// 0 1 1 4 4 0, 0 1 -1 8 -8 1).
fn wo_at(r: array<f32, 6>) -> vec4<f32> {
    let sum = r[1] + r[2];
    let difference = r[1] - r[2];
    let sum2 = r[3] + r[4];
    let difference2 = r[3] - r[4];
    return vec4<f32>(r[0] + sum + sum2, difference + 2.0 * difference2, sum + 4.0 * sum2, difference + 8.0 * difference2 + r[5]);
}

// A^T times column j of the tile's m: its 6 points, `point` apart.
fn wo_column(o: u32, point: u32, j: u32) -> vec4<f32> {
    let first = o + j * point;
    return wo_at(array<f32, 6>(
        wo_m[first],
        wo_m[first + 6u * point],
        wo_m[first + 12u * point],
        wo_m[first + 18u * point],
        wo_m[first + 24u * point],
        wo_m[first + 30u * point],
    ));
}

// Row i of the output tile, (A^T m A)[i] from row i of A^T m, with the
// epilogue, stored. Pixels past the output's edge read and write its last
// row or column: the caller goes last row to first and this last column to
// first, so that the pixel's own value lands last.
fn wo_store_row(p: Winograd, plane: u32, h: u32, columns: vec4<u32>, bias: f32, at_m: array<f32, 6>) {
    var y = wo_at(at_m) + bias;
    let index = plane + min(h, p.dst_h - 1u) * p.dst_w + columns;
    if (p.epilogue & EPILOGUE_RESIDUAL) != 0u {
        y += vec4<f32>(wo_residual[index.x], wo_residual[index.y], wo_residual[index.z], wo_residual[index.w]);
    }
    if (p.epilogue & EPILOGUE_RELU) != 0u {
        y = max(y, vec4<f32>(0.0));
    }
    wo_y[index.w] = y.w;
    wo_y[index.z] = y.z;
    wo_y[index.y] = y.y;
    wo_y[index.x] = y.x;
}

// One invocation per output channel and tile of an image (as wi_tile, with
// `channels` the output channels). Unrolled by hand, as conv2d_winograd_input.
@compute @workgroup_size(TRANSFORM_WORKGROUP)
fn conv2d_winograd_output(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let p = wo_params;
    let at = wi_tile(p, gid, groups);
    if at.x >= p.batch {
        return;
    }
    let o = at.y * p.m_channel + (at.x * p.tiles_h * p.tiles_w + at.z) * p.m_tile;
    // Columns of A^T m (4 values each), then its rows times A.
    let c0 = wo_column(o, p.m_point, 0u);
    let c1 = wo_column(o, p.m_point, 1u);
    let c2 = wo_column(o, p.m_point, 2u);
    let c3 = wo_column(o, p.m_point, 3u);
    let c4 = wo_column(o, p.m_point, 4u);
    let c5 = wo_column(o, p.m_point, 5u);
    let bias = wo_bias[at.y];
    let h = 4u * (at.z / p.tiles_w);
    let w = 4u * (at.z % p.tiles_w);
    let plane = (at.x * p.channels + at.y) * p.dst_h * p.dst_w;
    let columns = min(vec4<u32>(w) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(p.dst_w - 1u));
    wo_store_row(p, plane, h + 3u, columns, bias, array<f32, 6>(c0.w, c1.w, c2.w, c3.w, c4.w, c5.w));
    wo_store_row(p, plane, h + 2u, columns, bias, array<f32, 6>(c0.z, c1.z, c2.z, c3.z, c4.z, c5.z));
    wo_store_row(p, plane, h + 1u, columns, bias, array<f32, 6>(c0.y, c1.y, c2.y, c3.y, c4.y, c5.y));
    wo_store_row(p, plane, h, columns, bias, array<f32, 6>(c0.x, c1.x, c2.x, c3.x, c4.x, c5.x));
}
// END compact tile.
