// ReLU, forward and backward, element-wise over any shape.
// Linear index from a 2-D grid: gid.x + gid.y * num_workgroups.x * 256.

struct Params {
    len: u32,
}

// relu_forward: y = max(x, 0)
@group(0) @binding(0) var<uniform> forward_params: Params;
@group(0) @binding(1) var<storage, read> forward_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> forward_y: array<f32>;

@compute @workgroup_size(256)
fn relu_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 256u;
    if i < forward_params.len {
        forward_y[i] = max(forward_x[i], 0.0);
    }
}

// relu_backward: dx = dy where the forward output was positive, else 0.
// Taking y rather than x lets the forward output be the only tensor kept.
@group(0) @binding(10) var<uniform> backward_params: Params;
@group(0) @binding(11) var<storage, read> backward_y: array<f32>;
@group(0) @binding(12) var<storage, read> backward_dy: array<f32>;
@group(0) @binding(13) var<storage, read_write> backward_dx: array<f32>;

@compute @workgroup_size(256)
fn relu_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 256u;
    if i < backward_params.len {
        backward_dx[i] = select(0.0, backward_dy[i], backward_y[i] > 0.0);
    }
}
