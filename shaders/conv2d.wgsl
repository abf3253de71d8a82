// 2-D convolution (NCHW activations, OIHW weights, zero padding, no bias) as
// implicit GEMMs, forward and backward.
//
// Forward and backward-data are one kernel, `conv2d_implicit_gemm`:
//   dst[b][row][pixel] = sum over taps t, channels c of
//                        wt[t][c][row] * src[b][c][source pixel of (pixel, t)]
// over transposed weights `wt` ([tap][channel][row], rows padded to a multiple
// of 8 with zeros, written by `conv2d_transpose_weights`).
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
// Two tilings of each GEMM:
// - register tile (CPU adapters): 8 rows x 8 columns per invocation, no
//   barriers, no bounds checks in the inner loop (columns past the end are
//   clamped to a valid address and masked, rows are zero padding);
// - workgroup tile (GPUs): 64x64 outputs per 16x16 workgroup, staged through
//   workgroup memory 16 deep, 4x4 outputs per invocation.

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
}

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

// Index of tap (th, tw) of a phase in the weights' K x K taps.
fn weight_tap(p: ImplicitGemm, th: u32, tw: u32) -> u32 {
    return (p.kernel_first_h + th * p.kernel_step) * p.kernel + p.kernel_first_w + tw * p.kernel_step;
}

// acc[2i + h] += a[i] * b[h] for the 8 rows a = (a_lo, a_hi) and 8 columns b = (b_lo, b_hi).
fn outer_product_8x8(acc: ptr<function, array<vec4<f32>, 16>>, a_lo: vec4<f32>, a_hi: vec4<f32>, b_lo: vec4<f32>, b_hi: vec4<f32>) {
    (*acc)[0] += a_lo.x * b_lo;
    (*acc)[1] += a_lo.x * b_hi;
    (*acc)[2] += a_lo.y * b_lo;
    (*acc)[3] += a_lo.y * b_hi;
    (*acc)[4] += a_lo.z * b_lo;
    (*acc)[5] += a_lo.z * b_hi;
    (*acc)[6] += a_lo.w * b_lo;
    (*acc)[7] += a_lo.w * b_hi;
    (*acc)[8] += a_hi.x * b_lo;
    (*acc)[9] += a_hi.x * b_hi;
    (*acc)[10] += a_hi.y * b_lo;
    (*acc)[11] += a_hi.y * b_hi;
    (*acc)[12] += a_hi.z * b_lo;
    (*acc)[13] += a_hi.z * b_hi;
    (*acc)[14] += a_hi.w * b_lo;
    (*acc)[15] += a_hi.w * b_hi;
}

// conv2d_transpose_weights: w (OIHW) -> wt[tap][channel][row], rows padded with
// zeros to rows_padded. Forward: row = co, channel = ci; backward-data: row = ci,
// channel = co; the strides say which.
struct Transpose {
    rows: u32,
    channels: u32,
    taps: u32,
    rows_padded: u32,
    row_stride: u32,
    channel_stride: u32,
    len: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> transpose_params: Transpose;
@group(0) @binding(1) var<storage, read> transpose_w: array<f32>;
@group(0) @binding(2) var<storage, read_write> transpose_wt: array<f32>;

@compute @workgroup_size(256)
fn conv2d_transpose_weights(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let p = transpose_params;
    let i = gid.x + gid.y * groups.x * 256u;
    if i >= p.len {
        return;
    }
    let row = i % p.rows_padded;
    let rest = i / p.rows_padded;
    let channel = rest % p.channels;
    let tap = rest / p.channels;
    var value = 0.0;
    if row < p.rows {
        value = transpose_w[row * p.row_stride + channel * p.channel_stride + tap];
    }
    transpose_wt[i] = value;
}

// conv2d_implicit_gemm (register tile): 8 rows x 8 consecutive columns per
// invocation, 64 invocations per workgroup along the columns; the workgroup's
// row block comes from workgroup_id.z, its column tile from x and y.
@group(0) @binding(10) var<uniform> rt_params: ImplicitGemm;
@group(0) @binding(11) var<storage, read> rt_wt: array<vec4<f32>>;
@group(0) @binding(12) var<storage, read> rt_src: array<f32>;
@group(0) @binding(13) var<storage, read_write> rt_dst: array<f32>;

fn rt_store_row(p: ImplicitGemm, lo: Columns4, hi: Columns4, row: u32, v_lo: vec4<f32>, v_hi: vec4<f32>) {
    if row >= p.rows {
        return;
    }
    let offset = row * p.dst_h * p.dst_w;
    if lo.live.x { rt_dst[lo.dst.x + offset] = v_lo.x; }
    if lo.live.y { rt_dst[lo.dst.y + offset] = v_lo.y; }
    if lo.live.z { rt_dst[lo.dst.z + offset] = v_lo.z; }
    if lo.live.w { rt_dst[lo.dst.w + offset] = v_lo.w; }
    if hi.live.x { rt_dst[hi.dst.x + offset] = v_hi.x; }
    if hi.live.y { rt_dst[hi.dst.y + offset] = v_hi.y; }
    if hi.live.z { rt_dst[hi.dst.z + offset] = v_hi.z; }
    if hi.live.w { rt_dst[hi.dst.w + offset] = v_hi.w; }
}

@compute @workgroup_size(64)
fn conv2d_implicit_gemm(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let p = rt_params;
    let first = ((wg.x + wg.y * groups.x) * 64u + lid) * 8u;
    if first >= p.columns {
        return;
    }
    let lo = columns4(p, first);
    let hi = columns4(p, first + 4u);
    let plane = p.src_h * p.src_w;
    // wt in vec4s: one channel step is rows_padded / 4, the row block is 2 vec4s.
    let a_step = p.rows_padded / 4u;
    var acc: array<vec4<f32>, 16>;
    for (var th = 0u; th < p.taps_h; th++) {
        for (var tw = 0u; tw < p.taps_w; tw++) {
            let t_lo = tap4(p, lo, th, tw);
            let t_hi = tap4(p, hi, th, tw);
            var a = weight_tap(p, th, tw) * p.channels * a_step + wg.z * 2u;
            var s = 0u;
            for (var c = 0u; c < p.channels; c++) {
                let b_lo = vec4<f32>(rt_src[t_lo.offset.x + s], rt_src[t_lo.offset.y + s], rt_src[t_lo.offset.z + s], rt_src[t_lo.offset.w + s]) * t_lo.mask;
                let b_hi = vec4<f32>(rt_src[t_hi.offset.x + s], rt_src[t_hi.offset.y + s], rt_src[t_hi.offset.z + s], rt_src[t_hi.offset.w + s]) * t_hi.mask;
                outer_product_8x8(&acc, rt_wt[a], rt_wt[a + 1u], b_lo, b_hi);
                a += a_step;
                s += plane;
            }
        }
    }
    let row = wg.z * 8u;
    rt_store_row(p, lo, hi, row, acc[0], acc[1]);
    rt_store_row(p, lo, hi, row + 1u, acc[2], acc[3]);
    rt_store_row(p, lo, hi, row + 2u, acc[4], acc[5]);
    rt_store_row(p, lo, hi, row + 3u, acc[6], acc[7]);
    rt_store_row(p, lo, hi, row + 4u, acc[8], acc[9]);
    rt_store_row(p, lo, hi, row + 5u, acc[10], acc[11]);
    rt_store_row(p, lo, hi, row + 6u, acc[12], acc[13]);
    rt_store_row(p, lo, hi, row + 7u, acc[14], acc[15]);
}

// Workgroup-memory tiles shared by the two tiled kernels: 16 deep x 64 wide,
// as vec4s of 4 consecutive rows (a) or columns (b).
var<workgroup> tile_a: array<vec4<f32>, 256>;
var<workgroup> tile_b: array<vec4<f32>, 256>;

// Multiplies the staged tiles into this invocation's 4x4 outputs: rows 4 ty.., columns 4 tx...
fn accumulate_tiles(acc: ptr<function, array<vec4<f32>, 4>>, tx: u32, ty: u32) {
    for (var k = 0u; k < 16u; k++) {
        let a = tile_a[k * 16u + ty];
        let b = tile_b[k * 16u + tx];
        (*acc)[0] += a.x * b;
        (*acc)[1] += a.y * b;
        (*acc)[2] += a.z * b;
        (*acc)[3] += a.w * b;
    }
}

// conv2d_implicit_gemm_tiled (workgroup tile): each invocation stages 4 rows
// and 4 columns at depth lid / 16 of every 16-deep slice.
@group(0) @binding(20) var<uniform> wt_params: ImplicitGemm;
@group(0) @binding(21) var<storage, read> wt_wt: array<vec4<f32>>;
@group(0) @binding(22) var<storage, read> wt_src: array<f32>;
@group(0) @binding(23) var<storage, read_write> wt_dst: array<f32>;

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

@compute @workgroup_size(16, 16)
fn conv2d_implicit_gemm_tiled(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let p = wt_params;
    let col0 = (wg.x + wg.y * groups.x) * 64u;
    // Uniform per workgroup, so the barriers below stay in uniform control flow.
    if col0 >= p.columns {
        return;
    }
    let row0 = wg.z * 64u;
    let depth = p.taps_h * p.taps_w * p.channels;
    let plane = p.src_h * p.src_w;
    let stage_k = lid / 16u;
    let stage_row = row0 + (lid % 16u) * 4u;
    let stage_cols = columns4(p, col0 + (lid % 16u) * 4u);
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < depth; k0 += 16u) {
        let k = k0 + stage_k;
        var a = vec4<f32>(0.0);
        var b = vec4<f32>(0.0);
        if k < depth {
            let t = k / p.channels;
            let c = k % p.channels;
            let th = t / p.taps_w;
            let tw = t % p.taps_w;
            if stage_row < p.rows_padded {
                a = wt_wt[((weight_tap(p, th, tw) * p.channels + c) * p.rows_padded + stage_row) / 4u];
            }
            let tap = tap4(p, stage_cols, th, tw);
            let s = c * plane;
            b = vec4<f32>(wt_src[tap.offset.x + s], wt_src[tap.offset.y + s], wt_src[tap.offset.z + s], wt_src[tap.offset.w + s]) * tap.mask;
        }
        tile_a[lid] = a;
        tile_b[lid] = b;
        workgroupBarrier();
        accumulate_tiles(&acc, local.x, local.y);
        workgroupBarrier();
    }
    let cols = columns4(p, col0 + local.x * 4u);
    let row = row0 + local.y * 4u;
    wt_store_row(p, cols, row, acc[0]);
    wt_store_row(p, cols, row + 1u, acc[1]);
    wt_store_row(p, cols, row + 2u, acc[2]);
    wt_store_row(p, cols, row + 3u, acc[3]);
}

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
    // Register tile: blocks of 8 output channels and of 8 input channels.
    co_blocks: u32,
    ci_blocks: u32,
    invocations: u32,
    weight_len: u32,
}

// conv2d_weight_grad (register tile): one invocation per (chunk, tap, 8 output
// channels, 8 input channels); the padding test is once per pixel for all 64
// products, since every product of an invocation shares the tap.
@group(0) @binding(30) var<uniform> rw_params: WeightGrad;
@group(0) @binding(31) var<storage, read> rw_x: array<f32>;
@group(0) @binding(32) var<storage, read> rw_dy: array<f32>;
@group(0) @binding(33) var<storage, read_write> rw_partials: array<f32>;

fn rw_store_row(p: WeightGrad, base: u32, co: u32, ci: vec4<u32>, v: vec4<f32>) {
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

@compute @workgroup_size(64)
fn conv2d_weight_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let p = rw_params;
    let g = gid.x + gid.y * groups.x * 64u;
    if g >= p.invocations {
        return;
    }
    let taps = p.kernel * p.kernel;
    let ci_block = g % p.ci_blocks;
    var rest = g / p.ci_blocks;
    let co_block = rest % p.co_blocks;
    rest /= p.co_blocks;
    let tap = rest % taps;
    let chunk = rest / taps;
    let kh = tap / p.kernel;
    let kw = tap % p.kernel;
    let in_plane = p.in_h * p.in_w;
    let out_plane = p.out_h * p.out_w;
    let iota = vec4<u32>(0u, 1u, 2u, 3u);
    let co_lo = co_block * 8u + iota;
    let co_hi = co_lo + 4u;
    let ci_lo = ci_block * 8u + iota;
    let ci_hi = ci_lo + 4u;
    // Channel offsets, clamped to valid channels (their results are not stored).
    let dy_lo = min(co_lo, vec4<u32>(p.out_channels - 1u)) * out_plane;
    let dy_hi = min(co_hi, vec4<u32>(p.out_channels - 1u)) * out_plane;
    let x_lo = min(ci_lo, vec4<u32>(p.in_channels - 1u)) * in_plane;
    let x_hi = min(ci_hi, vec4<u32>(p.in_channels - 1u)) * in_plane;
    let first_row = chunk * p.rows_per_chunk;
    let end_row = min(first_row + p.rows_per_chunk, p.batch * p.out_h);
    var acc: array<vec4<f32>, 16>;
    for (var r = first_row; r < end_row; r++) {
        let b = r / p.out_h;
        let oh = r % p.out_h;
        let ih = i32(oh * p.stride + kh) - i32(p.pad);
        let row_ok = ih >= 0 && ih < i32(p.in_h);
        let x_row = b * p.in_channels * in_plane + u32(clamp(ih, 0, i32(p.in_h) - 1)) * p.in_w;
        let dy_row = b * p.out_channels * out_plane + oh * p.out_w;
        for (var ow = 0u; ow < p.out_w; ow++) {
            let iw = i32(ow * p.stride + kw) - i32(p.pad);
            let mask = select(0.0, 1.0, row_ok && iw >= 0 && iw < i32(p.in_w));
            let xo = x_row + u32(clamp(iw, 0, i32(p.in_w) - 1));
            let dyo = dy_row + ow;
            let a_lo = vec4<f32>(rw_dy[dyo + dy_lo.x], rw_dy[dyo + dy_lo.y], rw_dy[dyo + dy_lo.z], rw_dy[dyo + dy_lo.w]);
            let a_hi = vec4<f32>(rw_dy[dyo + dy_hi.x], rw_dy[dyo + dy_hi.y], rw_dy[dyo + dy_hi.z], rw_dy[dyo + dy_hi.w]);
            let b_lo = vec4<f32>(rw_x[xo + x_lo.x], rw_x[xo + x_lo.y], rw_x[xo + x_lo.z], rw_x[xo + x_lo.w]) * mask;
            let b_hi = vec4<f32>(rw_x[xo + x_hi.x], rw_x[xo + x_hi.y], rw_x[xo + x_hi.z], rw_x[xo + x_hi.w]) * mask;
            outer_product_8x8(&acc, a_lo, a_hi, b_lo, b_hi);
        }
    }
    let base = chunk * p.weight_len + tap;
    let co = co_block * 8u;
    rw_store_row(p, base, co, ci_lo, acc[0]);
    rw_store_row(p, base, co, ci_hi, acc[1]);
    rw_store_row(p, base, co + 1u, ci_lo, acc[2]);
    rw_store_row(p, base, co + 1u, ci_hi, acc[3]);
    rw_store_row(p, base, co + 2u, ci_lo, acc[4]);
    rw_store_row(p, base, co + 2u, ci_hi, acc[5]);
    rw_store_row(p, base, co + 3u, ci_lo, acc[6]);
    rw_store_row(p, base, co + 3u, ci_hi, acc[7]);
    rw_store_row(p, base, co + 4u, ci_lo, acc[8]);
    rw_store_row(p, base, co + 4u, ci_hi, acc[9]);
    rw_store_row(p, base, co + 5u, ci_lo, acc[10]);
    rw_store_row(p, base, co + 5u, ci_hi, acc[11]);
    rw_store_row(p, base, co + 6u, ci_lo, acc[12]);
    rw_store_row(p, base, co + 6u, ci_hi, acc[13]);
    rw_store_row(p, base, co + 7u, ci_lo, acc[14]);
    rw_store_row(p, base, co + 7u, ci_hi, acc[15]);
}

// conv2d_weight_grad_tiled (workgroup tile): rows = output channels, columns =
// (ci, kh, kw) flattened, depth = the chunk's pixels (b, oh, ow) flattened;
// workgroup_id.z is the chunk.
@group(0) @binding(40) var<uniform> ww_params: WeightGrad;
@group(0) @binding(41) var<storage, read> ww_x: array<f32>;
@group(0) @binding(42) var<storage, read> ww_dy: array<f32>;
@group(0) @binding(43) var<storage, read_write> ww_partials: array<f32>;

@compute @workgroup_size(16, 16)
fn conv2d_weight_grad_tiled(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let p = ww_params;
    let taps = p.kernel * p.kernel;
    let columns = p.in_channels * taps;
    let col0 = wg.x * 64u;
    let row0 = wg.y * 64u;
    let in_plane = p.in_h * p.in_w;
    let out_plane = p.out_h * p.out_w;
    let first = wg.z * p.rows_per_chunk * p.out_w;
    let end = min((wg.z + 1u) * p.rows_per_chunk, p.batch * p.out_h) * p.out_w;
    let iota = vec4<u32>(0u, 1u, 2u, 3u);
    let stage_k = lid / 16u;
    // The 4 output channels and the 4 (ci, kh, kw) columns this invocation stages.
    let stage_co = row0 + (lid % 16u) * 4u + iota;
    let co_live = stage_co < vec4<u32>(p.out_channels);
    let dy_channel = min(stage_co, vec4<u32>(p.out_channels - 1u)) * out_plane;
    let stage_col = col0 + (lid % 16u) * 4u + iota;
    let col_live = stage_col < vec4<u32>(columns);
    let col = min(stage_col, vec4<u32>(columns - 1u));
    let ci = col / taps;
    let kh = vec4<i32>((col % taps) / p.kernel);
    let kw = vec4<i32>(col % p.kernel);
    let x_channel = ci * in_plane;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = first; k0 < end; k0 += 16u) {
        let k = k0 + stage_k;
        var a = vec4<f32>(0.0);
        var b = vec4<f32>(0.0);
        if k < end {
            let bi = k / out_plane;
            let pixel = k % out_plane;
            let oh = pixel / p.out_w;
            let ow = pixel % p.out_w;
            let dyo = bi * p.out_channels * out_plane + pixel;
            a = select(vec4<f32>(0.0), vec4<f32>(ww_dy[dyo + dy_channel.x], ww_dy[dyo + dy_channel.y], ww_dy[dyo + dy_channel.z], ww_dy[dyo + dy_channel.w]), co_live);
            let ih = vec4<i32>(i32(oh * p.stride) - i32(p.pad)) + kh;
            let iw = vec4<i32>(i32(ow * p.stride) - i32(p.pad)) + kw;
            let h = i32(p.in_h);
            let w = i32(p.in_w);
            let ok = col_live & (ih >= vec4<i32>(0)) & (ih < vec4<i32>(h)) & (iw >= vec4<i32>(0)) & (iw < vec4<i32>(w));
            let xo = bi * p.in_channels * in_plane + x_channel
                + vec4<u32>(clamp(ih, vec4<i32>(0), vec4<i32>(h - 1))) * p.in_w
                + vec4<u32>(clamp(iw, vec4<i32>(0), vec4<i32>(w - 1)));
            b = select(vec4<f32>(0.0), vec4<f32>(ww_x[xo.x], ww_x[xo.y], ww_x[xo.z], ww_x[xo.w]), ok);
        }
        tile_a[lid] = a;
        tile_b[lid] = b;
        workgroupBarrier();
        accumulate_tiles(&acc, local.x, local.y);
        workgroupBarrier();
    }
    let out_col = col0 + local.x * 4u + iota;
    let out_live = out_col < vec4<u32>(columns);
    let base = wg.z * p.weight_len;
    for (var i = 0u; i < 4u; i++) {
        let co = row0 + local.y * 4u + i;
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
