// Fully connected layer with bias, PyTorch layout: x [N, in], w [out, in],
// b [out], y [N, out]. One output element per invocation: the classifier is a
// tiny share of a ResNet's work (ResNet-18: 0.5 M of 1.8 G multiply-adds per
// image), so plain dot products are enough.
// Linear index from a 2-D grid: gid.x + gid.y * num_workgroups.x * 256.

struct Params {
    batch: u32,
    in_features: u32,
    out_features: u32,
}

// linear_forward: y[n, o] = b[o] + sum_i x[n, i] * w[o, i]
@group(0) @binding(0) var<uniform> forward_params: Params;
@group(0) @binding(1) var<storage, read> forward_x: array<f32>;
@group(0) @binding(2) var<storage, read> forward_w: array<f32>;
@group(0) @binding(3) var<storage, read> forward_b: array<f32>;
@group(0) @binding(4) var<storage, read_write> forward_y: array<f32>;

// The invocation's output element y[n, o] as (index in y, n, o); n is at
// least batch past the last.
fn forward_output(p: Params, gid: vec3<u32>, groups: vec3<u32>) -> vec3<u32> {
    let i = gid.x + gid.y * groups.x * 256u;
    return vec3<u32>(i, i / p.out_features, i % p.out_features);
}

@compute @workgroup_size(256)
fn linear_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let p = forward_params;
    let y = forward_output(p, gid, groups);
    if y.y >= p.batch {
        return;
    }
    let x_row = y.y * p.in_features;
    let w_row = y.z * p.in_features;
    var sum = forward_b[y.z];
    for (var k = 0u; k < p.in_features; k++) {
        sum += forward_x[x_row + k] * forward_w[w_row + k];
    }
    forward_y[y.x] = sum;
}

// linear_forward_vec4: linear_forward where in_features is a multiple of 4,
// binding x and w as vec4 arrays. CPU adapters gather loads lane by lane, so
// a vec4 load moves four values for the price of one: ResNet-18's
// classifier (512 x 1000, batch 1) took 0.43-0.46x the time on SwiftShader.
@group(0) @binding(1) var<storage, read> forward_x4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> forward_w4: array<vec4<f32>>;

@compute @workgroup_size(256)
fn linear_forward_vec4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let p = forward_params;
    let y = forward_output(p, gid, groups);
    if y.y >= p.batch {
        return;
    }
    let quads = p.in_features / 4u;
    let x_row = y.y * quads;
    let w_row = y.z * quads;
    var sum = vec4<f32>(0.0);
    for (var k = 0u; k < quads; k++) {
        sum += forward_x4[x_row + k] * forward_w4[w_row + k];
    }
    forward_y[y.x] = forward_b[y.z] + dot(sum, vec4<f32>(1.0));
}

// linear_backward_data: dx[n, i] = sum_o dy[n, o] * w[o, i]
@group(0) @binding(10) var<uniform> data_params: Params;
@group(0) @binding(11) var<storage, read> data_dy: array<f32>;
@group(0) @binding(12) var<storage, read> data_w: array<f32>;
@group(0) @binding(13) var<storage, read_write> data_dx: array<f32>;

@compute @workgroup_size(256)
fn linear_backward_data(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let p = data_params;
    let i = gid.x + gid.y * groups.x * 256u;
    if i >= p.batch * p.in_features {
        return;
    }
    let n = i / p.in_features;
    let k = i % p.in_features;
    let dy_row = n * p.out_features;
    var sum = 0.0;
    for (var o = 0u; o < p.out_features; o++) {
        sum += data_dy[dy_row + o] * data_w[o * p.in_features + k];
    }
    data_dx[i] = sum;
}

// linear_backward_weight: dw[o, i] = sum_n dy[n, o] * x[n, i]
@group(0) @binding(20) var<uniform> weight_params: Params;
@group(0) @binding(21) var<storage, read> weight_x: array<f32>;
@group(0) @binding(22) var<storage, read> weight_dy: array<f32>;
@group(0) @binding(23) var<storage, read_write> weight_dw: array<f32>;

@compute @workgroup_size(256)
fn linear_backward_weight(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let p = weight_params;
    let i = gid.x + gid.y * groups.x * 256u;
    if i >= p.out_features * p.in_features {
        return;
    }
    let o = i / p.in_features;
    let k = i % p.in_features;
    var sum = 0.0;
    for (var n = 0u; n < p.batch; n++) {
        sum += weight_dy[n * p.out_features + o] * weight_x[n * p.in_features + k];
    }
    weight_dw[i] = sum;
}

// linear_backward_bias: db[o] = sum_n dy[n, o]
@group(0) @binding(30) var<uniform> bias_params: Params;
@group(0) @binding(31) var<storage, read> bias_dy: array<f32>;
@group(0) @binding(32) var<storage, read_write> bias_db: array<f32>;

@compute @workgroup_size(256)
fn linear_backward_bias(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let p = bias_params;
    let o = gid.x + gid.y * groups.x * 256u;
    if o >= p.out_features {
        return;
    }
    var sum = 0.0;
    for (var n = 0u; n < p.batch; n++) {
        sum += bias_dy[n * p.out_features + o];
    }
    bias_db[o] = sum;
}
