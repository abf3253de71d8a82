// Batch normalisation of NCHW f32 tensors, per channel c over its N*H*W values:
//   y = (x - mean) * inv_std * gamma + beta,   inv_std = 1 / sqrt(var + eps).
//
// Per-channel reductions (batch statistics, backward sums) run one workgroup of
// REDUCE_WORKGROUP invocations per channel. Each invocation sums one contiguous
// share of the channel serially (a plane of H*W is contiguous in NCHW, so a share
// is at most a few contiguous segments); the workgroup then combines the partials
// with two barriers, because CPU adapters make every barrier expensive.
//
// Element-wise passes give each invocation a run of consecutive values of one
// plane (its length a uniform, chosen per adapter in batch_norm.rs), so the
// channel and its constants cost one lookup per run instead of per value, and
// CPU adapters, which pay a fixed cost per workgroup, get fewer workgroups
// (measured on lavapipe at 128x64x8x8: runs of 16 took 4.6 ms where runs of 1
// took 8.6 ms).
//
// Every kernel has a `_vec4` twin for planes of a multiple of 4 values (every
// ResNet map but 7x7), which loads and stores the activations as vec4: the
// same buffers bound as `array<vec4<f32>>` at the same bindings. llvmpipe
// gathers storage loads lane by lane, so a vec4 load moves four values for
// the price of one (ResNet-20's backward-data pass: 1.8x faster).
// Linear invocation index from a 2-D grid: gid.x + gid.y * num_workgroups.x * 256.

const REDUCE_WORKGROUP: u32 = 256u;

var<workgroup> partials: array<vec2<f32>, REDUCE_WORKGROUP>;
var<workgroup> workgroup_total: vec2<f32>;

// Sum of `value` over the workgroup, returned to every invocation. One
// invocation adds the partials serially: on CPU adapters a tree would cost a
// barrier per level, and every invocation adding them all would cost 256 times
// the work. Call in uniform control flow.
fn workgroup_sum(thread: u32, value: vec2<f32>) -> vec2<f32> {
    partials[thread] = value;
    workgroupBarrier();
    if thread == 0u {
        var total = vec2<f32>(0.0);
        for (var i = 0u; i < REDUCE_WORKGROUP; i++) {
            total += partials[i];
        }
        workgroup_total = total;
    }
    // Also orders this call's reads of `partials` before a later call's writes;
    // that call's first barrier orders the reads of `workgroup_total` before its
    // next write.
    workgroupBarrier();
    return workgroup_total;
}

// The values of one channel are numbered image-major: value `flat` is pixel
// flat % spatial of image flat / spatial. Invocation `thread` owns [first, end),
// whose bounds are multiples of `granule` where count is.
fn share_of(thread: u32, count: u32, granule: u32) -> vec2<u32> {
    let size = (count + REDUCE_WORKGROUP * granule - 1u) / (REDUCE_WORKGROUP * granule) * granule;
    let first = min(thread * size, count);
    return vec2<u32>(first, min(first + size, count));
}

// The contiguous segment that starts at value `flat` of `channel` and ends at
// `end` or at the end of its plane, whichever is first: (tensor index, length).
fn segment(flat: u32, end: u32, channel: u32, channels: u32, spatial: u32) -> vec2<u32> {
    let image = flat / spatial;
    let pixel = flat - image * spatial;
    return vec2<u32>((image * channels + channel) * spatial + pixel, min(end - flat, spatial - pixel));
}

// Element-wise passes: invocation `index` owns the tensor indices [x, y) in one
// plane, whose channel is z, a run of `run` values or the rest of the plane;
// an empty range past the last plane.
fn plane_run(index: u32, channels: u32, spatial: u32, runs_per_plane: u32, planes: u32, run: u32) -> vec3<u32> {
    let plane = index / runs_per_plane;
    if plane >= planes {
        return vec3<u32>(0u, 0u, 0u);
    }
    let start = plane * spatial + (index - plane * runs_per_plane) * run;
    return vec3<u32>(start, min(start + run, (plane + 1u) * spatial), plane % channels);
}

struct StatisticsParams {
    batch: u32,
    channels: u32,
    spatial: u32,
    eps: f32,
    momentum: f32,
    // n / (n - 1) turns the biased batch variance into the unbiased one that
    // the running variance tracks (1 when n = 1, where it is undefined).
    unbiased_factor: f32,
    // batch_norm_statistics_partials: partial sums per channel.
    partials: u32,
}

// batch_norm_statistics: batch mean and inverse standard deviation of each
// channel (workgroup), and the running statistics' momentum update, in one
// pass over the data (on llvmpipe these passes are memory-bound: two passes,
// mean and then squared deviations from it, took 1.6x as long). Each
// invocation sums deviations from the first value of its share, d = x - p,
// and d^2: its mean and sum of squared deviations M2 = sum d^2 - (sum d)^2 / n
// lose digits only as far as p lies from its share's mean (in standard
// deviations), not catastrophically when |mean| >> std as sums of x and x^2
// would in f32. The shares' M2 combine exactly (Chan et al.): the total is
// sum M2 + sum n (share mean - mean)^2; means go through offsets from the
// channel's first value, so that their rounding is relative to the spread.
@group(0) @binding(0) var<uniform> statistics_params: StatisticsParams;
@group(0) @binding(1) var<storage, read> statistics_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> statistics_running_mean: array<f32>;
@group(0) @binding(3) var<storage, read_write> statistics_running_var: array<f32>;
@group(0) @binding(4) var<storage, read_write> statistics_saved_mean: array<f32>;
@group(0) @binding(5) var<storage, read_write> statistics_saved_inv_std: array<f32>;
@group(0) @binding(1) var<storage, read> statistics_x4: array<vec4<f32>>;

// The statistics saved and the running ones updated.
fn store_statistics(channel: u32, mean: f32, variance: f32) {
    let p = statistics_params;
    statistics_saved_mean[channel] = mean;
    statistics_saved_inv_std[channel] = inverseSqrt(variance + p.eps);
    // PyTorch's convention: r = (1 - momentum) r + momentum * statistic.
    statistics_running_mean[channel] = mix(statistics_running_mean[channel], mean, p.momentum);
    statistics_running_var[channel] = mix(statistics_running_var[channel], variance * p.unbiased_factor, p.momentum);
}

// The channel's mean and variance from this invocation's share of `count`
// values: `n` values whose deviations from its first, `first`, sum to
// `sum` and whose squares sum to `squares`; `pivot` is the channel's first
// value. Call in uniform control flow.
fn combine_statistics(thread: u32, count: u32, n: f32, first: f32, sum: f32, squares: f32, pivot: f32) -> vec2<f32> {
    let share_mean = first - pivot + sum / max(n, 1.0);
    let m2 = squares - sum * sum / max(n, 1.0);
    let totals = workgroup_sum(thread, vec2<f32>(n * share_mean, m2)) / f32(count);
    let spread = share_mean - totals.x;
    let between = workgroup_sum(thread, vec2<f32>(n * spread * spread, 0.0)).x / f32(count);
    return vec2<f32>(pivot + totals.x, max(totals.y + between, 0.0));
}

@compute @workgroup_size(256)
fn batch_norm_statistics(@builtin(workgroup_id) group: vec3<u32>, @builtin(local_invocation_index) thread: u32) {
    let p = statistics_params;
    let channel = group.x;
    let count = p.batch * p.spatial;
    let share = share_of(thread, count, 1u);

    let pivot = statistics_x[channel * p.spatial];
    let first = statistics_x[segment(min(share.x, count - 1u), count, channel, p.channels, p.spatial).x];
    var sums = vec2<f32>(0.0);
    var flat = share.x;
    while flat < share.y {
        let s = segment(flat, share.y, channel, p.channels, p.spatial);
        for (var i = s.x; i < s.x + s.y; i++) {
            let d = statistics_x[i] - first;
            sums += vec2<f32>(d, d * d);
        }
        flat += s.y;
    }
    let statistics = combine_statistics(thread, count, f32(share.y - share.x), first, sums.x, sums.y, pivot);
    if thread == 0u {
        store_statistics(channel, statistics.x, statistics.y);
    }
}

@compute @workgroup_size(256)
fn batch_norm_statistics_vec4(@builtin(workgroup_id) group: vec3<u32>, @builtin(local_invocation_index) thread: u32) {
    let p = statistics_params;
    let channel = group.x;
    let count = p.batch * p.spatial;
    let share = share_of(thread, count, 4u);

    let pivot = statistics_x4[channel * p.spatial / 4u].x;
    let first = statistics_x4[segment(min(share.x, count - 1u), count, channel, p.channels, p.spatial).x / 4u].x;
    var sum = vec4<f32>(0.0);
    var squares = vec4<f32>(0.0);
    var flat = share.x;
    while flat < share.y {
        let s = segment(flat, share.y, channel, p.channels, p.spatial) / 4u;
        for (var i = s.x; i < s.x + s.y; i++) {
            let d = statistics_x4[i] - first;
            sum += d;
            squares += d * d;
        }
        flat += s.y * 4u;
    }
    let ones = vec4<f32>(1.0);
    let statistics = combine_statistics(thread, count, f32(share.y - share.x), first, dot(sum, ones), dot(squares, ones), pivot);
    if thread == 0u {
        store_statistics(channel, statistics.x, statistics.y);
    }
}

// batch_norm_statistics_partials: the same statistics from the partial sums
// that the convolution before the batch norm left of its output
// (conv2d_implicit_gemm_aligned_statistics): `partials` per channel, each
// (values, pivot, sum of deviations from the pivot, sum of their squares),
// none of the channel's values counted twice; a slot of 0 values adds
// nothing. One invocation per channel merges them in order, pairwise (Chan
// et al.), its mean kept as an offset from the channel's first value, the
// pivot of its first partial, as in batch_norm_statistics. No workgroup
// sums: on llvmpipe, with a workgroup of 256 per channel this pass took
// 1.8-2.5 ms per ResNet-20 layer however few the partials, and with one
// invocation per channel 0.7-2.2 ms. Workgroups of 8, one SIMD vector of
// llvmpipe: with 64, the 16-channel layers ran on one thread, 3.8 ms each.
// Only CPU adapters run it (the register tile leaves the partials).
@group(0) @binding(1) var<storage, read> statistics_partials: array<vec4<f32>>;

@compute @workgroup_size(8)
fn batch_norm_statistics_partials(@builtin(global_invocation_id) gid: vec3<u32>) {
    let p = statistics_params;
    let channel = gid.x;
    if channel >= p.channels {
        return;
    }
    let pivot = statistics_partials[channel].y;
    var n = 0.0;
    var mean = 0.0;
    var m2 = 0.0;
    for (var i = channel; i < p.partials * p.channels; i += p.channels) {
        let t = statistics_partials[i];
        if t.x > 0.0 {
            let t_mean = t.y - pivot + t.z / t.x;
            let total = n + t.x;
            let delta = t_mean - mean;
            mean += delta * t.x / total;
            m2 += t.w - t.z * t.z / t.x + delta * delta * n * t.x / total;
            n = total;
        }
    }
    store_statistics(channel, pivot + mean, max(m2 / max(n, 1.0), 0.0));
}

struct NormalizeParams {
    channels: u32,
    spatial: u32,
    runs_per_plane: u32,
    planes: u32,
    eps: f32,
    // 1: `spread` holds variances (eval: running statistics);
    // 0: it holds inverse standard deviations (training: batch statistics).
    spread_is_variance: u32,
    // EPILOGUE_* flags.
    epilogue: u32,
    // Values per invocation (see plane_run).
    run: u32,
}

// What follows the normalisation in a residual block, fused into its pass so
// that the intermediate tensors are neither written nor read again.
const EPILOGUE_RESIDUAL: u32 = 1u;
const EPILOGUE_RELU: u32 = 2u;

// batch_norm_normalize: y = (x - mean) * inv_std * gamma + beta, with the
// statistics of either mode, then + residual and max(., 0) as the epilogue says.
@group(0) @binding(10) var<uniform> normalize_params: NormalizeParams;
@group(0) @binding(11) var<storage, read> normalize_x: array<f32>;
@group(0) @binding(12) var<storage, read> normalize_mean: array<f32>;
@group(0) @binding(13) var<storage, read> normalize_spread: array<f32>;
@group(0) @binding(14) var<storage, read> normalize_gamma: array<f32>;
@group(0) @binding(15) var<storage, read> normalize_beta: array<f32>;
@group(0) @binding(16) var<storage, read> normalize_residual: array<f32>;
@group(0) @binding(17) var<storage, read_write> normalize_y: array<f32>;
@group(0) @binding(17) var<storage, read_write> normalize_y4: array<vec4<f32>>;

// BEGIN vec4 inputs. For the register-tile variant the engine swaps this
// block for `MIRRORED_VEC4_INPUTS` (batch_norm.rs), which reads the same
// inputs through texture mirrors, as that variant's convolutions read theirs
// (see conv2d.wgsl's rt_src).
@group(0) @binding(11) var<storage, read> normalize_x4: array<vec4<f32>>;
@group(0) @binding(16) var<storage, read> normalize_residual4: array<vec4<f32>>;
@group(0) @binding(31) var<storage, read> data_x4: array<vec4<f32>>;
@group(0) @binding(32) var<storage, read> data_dy4: array<vec4<f32>>;

// vec4 i of normalize's x and residual, and of backward-data's x and dy.
fn normalize_x_at(i: u32) -> vec4<f32> {
    return normalize_x4[i];
}

fn normalize_residual_at(i: u32) -> vec4<f32> {
    return normalize_residual4[i];
}

fn data_x_at(i: u32) -> vec4<f32> {
    return data_x4[i];
}

fn data_dy_at(i: u32) -> vec4<f32> {
    return data_dy4[i];
}
// END vec4 inputs.

// Channel c's normalisation: x -> (x - mean) * scale + shift.
struct Affine {
    mean: f32,
    scale: f32,
    shift: f32,
}

fn normalize_affine(c: u32) -> Affine {
    let p = normalize_params;
    var inv_std = normalize_spread[c];
    if p.spread_is_variance == 1u {
        inv_std = inverseSqrt(inv_std + p.eps);
    }
    return Affine(normalize_mean[c], inv_std * normalize_gamma[c], normalize_beta[c]);
}

@compute @workgroup_size(256)
fn batch_norm_normalize(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let p = normalize_params;
    let run = plane_run(gid.x + gid.y * groups.x * 256u, p.channels, p.spatial, p.runs_per_plane, p.planes, p.run);
    if run.x == run.y {
        return;
    }
    let a = normalize_affine(run.z);
    let residual = (p.epilogue & EPILOGUE_RESIDUAL) != 0u;
    let relu = (p.epilogue & EPILOGUE_RELU) != 0u;
    for (var i = run.x; i < run.y; i++) {
        var v = (normalize_x[i] - a.mean) * a.scale + a.shift;
        if residual {
            v += normalize_residual[i];
        }
        if relu {
            v = max(v, 0.0);
        }
        normalize_y[i] = v;
    }
}

@compute @workgroup_size(256)
fn batch_norm_normalize_vec4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let p = normalize_params;
    let run = plane_run(gid.x + gid.y * groups.x * 256u, p.channels, p.spatial, p.runs_per_plane, p.planes, p.run) / vec3<u32>(4u, 4u, 1u);
    if run.x == run.y {
        return;
    }
    let a = normalize_affine(run.z);
    let residual = (p.epilogue & EPILOGUE_RESIDUAL) != 0u;
    let relu = (p.epilogue & EPILOGUE_RELU) != 0u;
    for (var i = run.x; i < run.y; i++) {
        var v = (normalize_x_at(i) - a.mean) * a.scale + a.shift;
        if residual {
            v += normalize_residual_at(i);
        }
        if relu {
            v = max(v, vec4<f32>(0.0));
        }
        normalize_y4[i] = v;
    }
}

struct BackwardReduceParams {
    batch: u32,
    channels: u32,
    spatial: u32,
}

// batch_norm_backward_reduce: dbeta = sum(dy), dgamma = sum(dy * xhat) per
// channel (workgroup), with xhat from the statistics saved by the forward pass.
@group(0) @binding(20) var<uniform> reduce_params: BackwardReduceParams;
@group(0) @binding(21) var<storage, read> reduce_x: array<f32>;
@group(0) @binding(22) var<storage, read> reduce_dy: array<f32>;
@group(0) @binding(23) var<storage, read> reduce_saved_mean: array<f32>;
@group(0) @binding(24) var<storage, read> reduce_saved_inv_std: array<f32>;
@group(0) @binding(25) var<storage, read_write> reduce_dgamma: array<f32>;
@group(0) @binding(26) var<storage, read_write> reduce_dbeta: array<f32>;
@group(0) @binding(21) var<storage, read> reduce_x4: array<vec4<f32>>;
@group(0) @binding(22) var<storage, read> reduce_dy4: array<vec4<f32>>;

// The channel's (sum of dy, sum of dy * (x - mean)) over the workgroup, stored.
fn store_backward_sums(thread: u32, channel: u32, sums: vec2<f32>) {
    let total = workgroup_sum(thread, sums);
    if thread == 0u {
        reduce_dbeta[channel] = total.x;
        reduce_dgamma[channel] = total.y * reduce_saved_inv_std[channel];
    }
}

@compute @workgroup_size(256)
fn batch_norm_backward_reduce(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_index) thread: u32,
) {
    let p = reduce_params;
    let channel = group.x;
    let mean = reduce_saved_mean[channel];
    let share = share_of(thread, p.batch * p.spatial, 1u);

    // (sum of dy, sum of dy * (x - mean)); inv_std is applied once at the end.
    var sums = vec2<f32>(0.0);
    var flat = share.x;
    while flat < share.y {
        let s = segment(flat, share.y, channel, p.channels, p.spatial);
        for (var i = s.x; i < s.x + s.y; i++) {
            let dy = reduce_dy[i];
            sums += vec2<f32>(dy, dy * (reduce_x[i] - mean));
        }
        flat += s.y;
    }
    store_backward_sums(thread, channel, sums);
}

@compute @workgroup_size(256)
fn batch_norm_backward_reduce_vec4(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_index) thread: u32,
) {
    let p = reduce_params;
    let channel = group.x;
    let mean = reduce_saved_mean[channel];
    let share = share_of(thread, p.batch * p.spatial, 4u);

    var dy_sum = vec4<f32>(0.0);
    var dy_x_sum = vec4<f32>(0.0);
    var flat = share.x;
    while flat < share.y {
        let s = segment(flat, share.y, channel, p.channels, p.spatial) / 4u;
        for (var i = s.x; i < s.x + s.y; i++) {
            let dy = reduce_dy4[i];
            dy_sum += dy;
            dy_x_sum += dy * (reduce_x4[i] - mean);
        }
        flat += s.y * 4u;
    }
    store_backward_sums(thread, channel, vec2<f32>(dot(dy_sum, vec4<f32>(1.0)), dot(dy_x_sum, vec4<f32>(1.0))));
}

struct ReducePartialsParams {
    channels: u32,
    partials: u32,
}

// batch_norm_backward_reduce_partials: the same sums from the partial sums
// that the backward-data convolution which wrote dy left
// (conv2d_implicit_gemm_aligned_fused_sums): `partials` per channel, each
// (sum of dy, sum of dy * (x - pivot), pivot, 0); one invocation per
// channel, as batch_norm_statistics_partials.
@group(0) @binding(40) var<uniform> partials_params: ReducePartialsParams;
@group(0) @binding(41) var<storage, read> partials_sums: array<vec4<f32>>;
@group(0) @binding(42) var<storage, read> partials_saved_mean: array<f32>;
@group(0) @binding(43) var<storage, read> partials_saved_inv_std: array<f32>;
@group(0) @binding(44) var<storage, read_write> partials_dgamma: array<f32>;
@group(0) @binding(45) var<storage, read_write> partials_dbeta: array<f32>;

@compute @workgroup_size(8)
fn batch_norm_backward_reduce_partials(@builtin(global_invocation_id) gid: vec3<u32>) {
    let p = partials_params;
    let channel = gid.x;
    if channel >= p.channels {
        return;
    }
    let mean = partials_saved_mean[channel];
    var sums = vec2<f32>(0.0);
    for (var i = channel; i < p.partials * p.channels; i += p.channels) {
        let t = partials_sums[i];
        sums += vec2<f32>(t.x, t.y + (t.z - mean) * t.x);
    }
    partials_dbeta[channel] = sums.x;
    partials_dgamma[channel] = sums.y * partials_saved_inv_std[channel];
}

struct BackwardDataParams {
    channels: u32,
    spatial: u32,
    runs_per_plane: u32,
    planes: u32,
    // 1 / (N*H*W)
    inv_count: f32,
    // Values per invocation (see plane_run).
    run: u32,
}

// batch_norm_backward_data:
//   dx = gamma * inv_std * (dy - dbeta / n - xhat * dgamma / n),
// the gradient through the batch statistics included.
@group(0) @binding(30) var<uniform> data_params: BackwardDataParams;
@group(0) @binding(31) var<storage, read> data_x: array<f32>;
@group(0) @binding(32) var<storage, read> data_dy: array<f32>;
@group(0) @binding(33) var<storage, read> data_gamma: array<f32>;
@group(0) @binding(34) var<storage, read> data_saved_mean: array<f32>;
@group(0) @binding(35) var<storage, read> data_saved_inv_std: array<f32>;
@group(0) @binding(36) var<storage, read> data_dgamma: array<f32>;
@group(0) @binding(37) var<storage, read> data_dbeta: array<f32>;
@group(0) @binding(38) var<storage, read_write> data_dx: array<f32>;
@group(0) @binding(38) var<storage, read_write> data_dx4: array<vec4<f32>>;

// Channel c's constants: dx = scale * (dy - mean_dy - (x - mean) * inv_std * mean_dy_xhat).
struct DataChannel {
    mean: f32,
    inv_std: f32,
    scale: f32,
    mean_dy: f32,
    mean_dy_xhat: f32,
}

fn data_channel(c: u32) -> DataChannel {
    let p = data_params;
    let inv_std = data_saved_inv_std[c];
    return DataChannel(
        data_saved_mean[c],
        inv_std,
        data_gamma[c] * inv_std,
        data_dbeta[c] * p.inv_count,
        data_dgamma[c] * p.inv_count,
    );
}

@compute @workgroup_size(256)
fn batch_norm_backward_data(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let p = data_params;
    let run = plane_run(gid.x + gid.y * groups.x * 256u, p.channels, p.spatial, p.runs_per_plane, p.planes, p.run);
    if run.x == run.y {
        return;
    }
    let k = data_channel(run.z);
    for (var i = run.x; i < run.y; i++) {
        let xhat = (data_x[i] - k.mean) * k.inv_std;
        data_dx[i] = k.scale * (data_dy[i] - k.mean_dy - xhat * k.mean_dy_xhat);
    }
}

@compute @workgroup_size(256)
fn batch_norm_backward_data_vec4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let p = data_params;
    let run = plane_run(gid.x + gid.y * groups.x * 256u, p.channels, p.spatial, p.runs_per_plane, p.planes, p.run) / vec3<u32>(4u, 4u, 1u);
    if run.x == run.y {
        return;
    }
    let k = data_channel(run.z);
    for (var i = run.x; i < run.y; i++) {
        let xhat = (data_x_at(i) - k.mean) * k.inv_std;
        data_dx4[i] = k.scale * (data_dy_at(i) - k.mean_dy - xhat * k.mean_dy_xhat);
    }
}
