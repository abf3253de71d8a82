// Residual connections on NCHW f32 tensors: the element-wise sum of a block's
// output and its shortcut, and the parameter-free option-A shortcut (subsample
// rows and columns by the stride, zero-pad channels).
// Linear invocation index from a 2-D grid: gid.x + gid.y * num_workgroups.x * 256.

struct AddParams {
    len: u32,
}

// add_forward: y = a + b (also sums the gradients flowing into a fork).
@group(0) @binding(0) var<uniform> add_params: AddParams;
@group(0) @binding(1) var<storage, read> add_a: array<f32>;
@group(0) @binding(2) var<storage, read> add_b: array<f32>;
@group(0) @binding(3) var<storage, read_write> add_y: array<f32>;

@compute @workgroup_size(256)
fn add_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 256u;
    if i < add_params.len {
        add_y[i] = add_a[i] + add_b[i];
    }
}

// Shared by both shortcut passes. Output channel co holds input channel
// co - pad_before; the others are zero.
struct ShortcutParams {
    in_channels: u32,
    out_channels: u32,
    in_h: u32,
    in_w: u32,
    out_h: u32,
    out_w: u32,
    stride: u32,
    pad_before: u32,
    // Rows the pass writes, one per invocation: batch * out_channels * out_h
    // forward, batch * in_channels * in_h backward.
    rows: u32,
}

// shortcut_a_forward: y[n, co, oh, ow] = x[n, co - pad_before, oh * stride, ow * stride],
// zero outside the input's channels. One invocation per output row.
@group(0) @binding(10) var<uniform> forward_params: ShortcutParams;
@group(0) @binding(11) var<storage, read> forward_x: array<f32>;
@group(0) @binding(12) var<storage, read_write> forward_y: array<f32>;

@compute @workgroup_size(256)
fn shortcut_a_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let p = forward_params;
    let row = gid.x + gid.y * groups.x * 256u;
    if row >= p.rows {
        return;
    }
    let plane = row / p.out_h;
    let oh = row - plane * p.out_h;
    let image = plane / p.out_channels;
    let co = plane - image * p.out_channels;
    let y_start = row * p.out_w;
    // co < pad_before wraps around to a huge value, so one comparison tests both ends.
    let ci = co - p.pad_before;
    if ci < p.in_channels {
        let x_start = ((image * p.in_channels + ci) * p.in_h + oh * p.stride) * p.in_w;
        for (var ow = 0u; ow < p.out_w; ow++) {
            forward_y[y_start + ow] = forward_x[x_start + ow * p.stride];
        }
    } else {
        for (var ow = 0u; ow < p.out_w; ow++) {
            forward_y[y_start + ow] = 0.0;
        }
    }
}

// shortcut_a_backward: dx[n, ci, ih, iw] = dy[n, ci + pad_before, ih / stride, iw / stride]
// where stride divides ih and iw, zero elsewhere. One invocation per input row.
@group(0) @binding(20) var<uniform> backward_params: ShortcutParams;
@group(0) @binding(21) var<storage, read> backward_dy: array<f32>;
@group(0) @binding(22) var<storage, read_write> backward_dx: array<f32>;

@compute @workgroup_size(256)
fn shortcut_a_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let p = backward_params;
    let row = gid.x + gid.y * groups.x * 256u;
    if row >= p.rows {
        return;
    }
    let plane = row / p.in_h;
    let ih = row - plane * p.in_h;
    let image = plane / p.in_channels;
    let ci = plane - image * p.in_channels;
    let dx_start = row * p.in_w;
    for (var iw = 0u; iw < p.in_w; iw++) {
        backward_dx[dx_start + iw] = 0.0;
    }
    // Rows and columns that the forward pass skipped keep their zero gradient.
    if ih % p.stride == 0u {
        let dy_start = ((image * p.out_channels + ci + p.pad_before) * p.out_h + ih / p.stride) * p.out_w;
        for (var ow = 0u; ow < p.out_w; ow++) {
            backward_dx[dx_start + ow * p.stride] = backward_dy[dy_start + ow];
        }
    }
}
