// Max pooling (padding counts as -inf, PyTorch's floor output size) and global
// average pooling, forward and backward, over NCHW planes.
// Linear index from a 2-D grid: gid.x + gid.y * num_workgroups.x * 256.

struct MaxPoolParams {
    planes: u32, // batch * channels
    in_h: u32,
    in_w: u32,
    out_h: u32,
    out_w: u32,
    kernel: u32,
    stride: u32,
    pad: u32,
}

// max_pool_forward: one invocation per output element; y = the largest input in
// its window, padding excluded (PyTorch's rule pad <= kernel / 2 guarantees every
// window holds an input).
@group(0) @binding(0) var<uniform> forward_params: MaxPoolParams;
@group(0) @binding(1) var<storage, read> forward_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> forward_y: array<f32>;

// The output element of an invocation (`live` false past the last) and its
// window: its plane's first input, and its rows and columns [begin, end)
// inside the input.
struct MaxPoolWindow {
    index: u32,
    live: bool,
    base: u32,
    begin: vec2<i32>,
    end: vec2<i32>,
}

fn max_pool_window(p: MaxPoolParams, gid: vec3<u32>, groups: vec3<u32>) -> MaxPoolWindow {
    let i = gid.x + gid.y * groups.x * 256u;
    let out_plane = p.out_h * p.out_w;
    let plane = i / out_plane;
    let o = vec2<u32>((i % out_plane) / p.out_w, i % p.out_w);
    let first = vec2<i32>(o * p.stride) - vec2<i32>(i32(p.pad));
    let begin = max(first, vec2<i32>(0));
    let end = min(first + vec2<i32>(i32(p.kernel)), vec2<i32>(i32(p.in_h), i32(p.in_w)));
    return MaxPoolWindow(i, plane < p.planes, plane * p.in_h * p.in_w, begin, end);
}

@compute @workgroup_size(256)
fn max_pool_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let p = forward_params;
    let win = max_pool_window(p, gid, groups);
    if !win.live {
        return;
    }
    // Starting from the window's first input (not a -inf literal, which WGSL lacks)
    // keeps -inf inputs exact.
    var best = forward_x[win.base + u32(win.begin.x) * p.in_w + u32(win.begin.y)];
    for (var ih = win.begin.x; ih < win.end.x; ih++) {
        for (var iw = win.begin.y; iw < win.end.y; iw++) {
            best = max(best, forward_x[win.base + u32(ih) * p.in_w + u32(iw)]);
        }
    }
    forward_y[win.index] = best;
}

// max_pool_forward_3x3: the same for 3x3 windows (the ImageNet stem's pool),
// unrolled: SwiftShader runs a loop whose trip count differs between lanes
// slowly. Taps outside the input read the nearest input of the window
// instead, which cannot change its maximum.
@compute @workgroup_size(256)
fn max_pool_forward_3x3(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let p = forward_params;
    let win = max_pool_window(p, gid, groups);
    if !win.live {
        return;
    }
    // Three taps ending at the window's last input, clamped into the window.
    let first = win.end - vec2<i32>(3);
    let rows = vec3<u32>(clamp(vec3<i32>(first.x) + vec3<i32>(0, 1, 2), vec3<i32>(win.begin.x), vec3<i32>(win.end.x - 1))) * p.in_w + vec3<u32>(win.base);
    let cols = vec3<u32>(clamp(vec3<i32>(first.y) + vec3<i32>(0, 1, 2), vec3<i32>(win.begin.y), vec3<i32>(win.end.y - 1)));
    let r0 = max(max(forward_x[rows.x + cols.x], forward_x[rows.x + cols.y]), forward_x[rows.x + cols.z]);
    let r1 = max(max(forward_x[rows.y + cols.x], forward_x[rows.y + cols.y]), forward_x[rows.y + cols.z]);
    let r2 = max(max(forward_x[rows.z + cols.x], forward_x[rows.z + cols.y]), forward_x[rows.z + cols.z]);
    forward_y[win.index] = max(max(r0, r1), r2);
}

// max_pool_backward: gather form, no atomics. One invocation owns a stride x
// stride cell of inputs: it recomputes the argmax of every window that overlaps
// the cell (the first maximum in row-major window order, as PyTorch) and adds
// that window's dy to the cell input it picked, in registers. Each cell's
// windows are then scanned once for all its inputs (a 3x3/s2 pool: 4 windows,
// 36 reads for 4 inputs), instead of once per input; and recomputing argmaxes
// spares the forward pass from storing indices.
@group(0) @binding(10) var<uniform> backward_params: MaxPoolParams;
@group(0) @binding(11) var<storage, read> backward_x: array<f32>;
@group(0) @binding(12) var<storage, read> backward_dy: array<f32>;
@group(0) @binding(13) var<storage, read_write> backward_dx: array<f32>;

// Largest stride the backward supports: a cell's gradients live in an array of
// MAX_STRIDE^2 registers. Keep equal to MAX_POOL_BACKWARD_STRIDE in pool.rs.
const MAX_STRIDE: u32 = 4u;

// Flat in-plane index (ih * in_w + iw) of the first maximum of window (oh, ow).
fn window_argmax(base: u32, oh: i32, ow: i32) -> i32 {
    let p = backward_params;
    let h0 = oh * i32(p.stride) - i32(p.pad);
    let w0 = ow * i32(p.stride) - i32(p.pad);
    let h_begin = max(h0, 0);
    let w_begin = max(w0, 0);
    var best_at = h_begin * i32(p.in_w) + w_begin;
    var best = backward_x[base + u32(best_at)];
    for (var ih = h_begin; ih < min(h0 + i32(p.kernel), i32(p.in_h)); ih++) {
        for (var iw = w_begin; iw < min(w0 + i32(p.kernel), i32(p.in_w)); iw++) {
            let at = ih * i32(p.in_w) + iw;
            let v = backward_x[base + u32(at)];
            // Strictly greater: a later equal value never displaces the first.
            if v > best {
                best = v;
                best_at = at;
            }
        }
    }
    return best_at;
}

@compute @workgroup_size(256)
fn max_pool_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let p = backward_params;
    let i = gid.x + gid.y * groups.x * 256u;
    let cells_h = (p.in_h + p.stride - 1u) / p.stride;
    let cells_w = (p.in_w + p.stride - 1u) / p.stride;
    let plane_cells = cells_h * cells_w;
    if i >= p.planes * plane_cells {
        return;
    }
    let plane = i / plane_cells;
    let stride = i32(p.stride);
    let in_w = i32(p.in_w);
    // The cell: input rows [h_begin, h_end), columns [w_begin, w_end).
    let h_begin = i32((i % plane_cells) / cells_w) * stride;
    let w_begin = i32(i % cells_w) * stride;
    let h_end = min(h_begin + stride, i32(p.in_h));
    let w_end = min(w_begin + stride, in_w);
    // Window oh spans rows [oh * stride - pad, oh * stride - pad + kernel); the
    // ones reaching the cell run from the first ending at or after h_begin to the
    // last starting before h_end.
    let pad = i32(p.pad);
    let oh_first = max(h_begin + pad - i32(p.kernel) + stride, 0) / stride;
    let ow_first = max(w_begin + pad - i32(p.kernel) + stride, 0) / stride;
    let oh_last = min((h_end - 1 + pad) / stride, i32(p.out_h) - 1);
    let ow_last = min((w_end - 1 + pad) / stride, i32(p.out_w) - 1);
    let base = plane * p.in_h * p.in_w;
    let dy_base = plane * p.out_h * p.out_w;
    // Zero-initialised; input (ih, iw) of the cell at (ih - h_begin) * stride + iw - w_begin.
    var cell_grads: array<f32, MAX_STRIDE * MAX_STRIDE>;
    for (var oh = oh_first; oh <= oh_last; oh++) {
        for (var ow = ow_first; ow <= ow_last; ow++) {
            let at = window_argmax(base, oh, ow);
            let ih = at / in_w;
            let iw = at % in_w;
            if ih >= h_begin && ih < h_end && iw >= w_begin && iw < w_end {
                let grad = backward_dy[dy_base + u32(oh) * p.out_w + u32(ow)];
                cell_grads[(ih - h_begin) * stride + iw - w_begin] += grad;
            }
        }
    }
    for (var ih = h_begin; ih < h_end; ih++) {
        for (var iw = w_begin; iw < w_end; iw++) {
            backward_dx[base + u32(ih * in_w + iw)] = cell_grads[(ih - h_begin) * stride + iw - w_begin];
        }
    }
}

struct AvgPoolParams {
    planes: u32, // batch * channels
    spatial: u32, // H * W
}

// global_avg_pool_forward: one invocation per (n, c) plane; y = mean of the plane.
@group(0) @binding(20) var<uniform> avg_forward_params: AvgPoolParams;
@group(0) @binding(21) var<storage, read> avg_forward_x: array<f32>;
@group(0) @binding(22) var<storage, read_write> avg_forward_y: array<f32>;

@compute @workgroup_size(256)
fn global_avg_pool_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let p = avg_forward_params;
    let plane = gid.x + gid.y * groups.x * 256u;
    if plane >= p.planes {
        return;
    }
    let base = plane * p.spatial;
    var sum = 0.0;
    for (var s = 0u; s < p.spatial; s++) {
        sum += avg_forward_x[base + s];
    }
    avg_forward_y[plane] = sum / f32(p.spatial);
}

// global_avg_pool_backward: one invocation per input element; dx = dy / (H * W).
@group(0) @binding(30) var<uniform> avg_backward_params: AvgPoolParams;
@group(0) @binding(31) var<storage, read> avg_backward_dy: array<f32>;
@group(0) @binding(32) var<storage, read_write> avg_backward_dx: array<f32>;

@compute @workgroup_size(256)
fn global_avg_pool_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let p = avg_backward_params;
    let i = gid.x + gid.y * groups.x * 256u;
    if i < p.planes * p.spatial {
        avg_backward_dx[i] = avg_backward_dy[i / p.spatial] / f32(p.spatial);
    }
}
