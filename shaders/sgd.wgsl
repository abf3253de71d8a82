// SGD with momentum and weight decay, PyTorch semantics (dampening 0, no
// Nesterov), in place over one flat parameter tensor:
//   g = grad + weight_decay * p;  v = momentum * v + g;  p -= lr * v.
// Linear index from a 2-D grid: gid.x + gid.y * num_workgroups.x * 256.

struct SgdParams {
    lr: f32,
    momentum: f32,
    weight_decay: f32,
    len: u32,
}

@group(0) @binding(0) var<uniform> params: SgdParams;
@group(0) @binding(1) var<storage, read_write> weights: array<f32>;
@group(0) @binding(2) var<storage, read> grads: array<f32>;
@group(0) @binding(3) var<storage, read_write> velocity: array<f32>;

@compute @workgroup_size(256)
fn sgd_step(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 256u;
    if i >= params.len {
        return;
    }
    let p = weights[i];
    let v = params.momentum * velocity[i] + grads[i] + params.weight_decay * p;
    velocity[i] = v;
    weights[i] = p - params.lr * v;
}
